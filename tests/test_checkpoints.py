"""timm_tm.checkpoints: the one reader of train.py checkpoints that ``timm-tm export`` and ``visualize`` share."""

import argparse
import json
import pickle

import pytest
import timm
import torch

import timm_tm.export
import timm_tm.visualize
from timm_tm.checkpoints import (
    CheckpointError,
    check_label_names,
    data_args_from_args,
    label_names_from_args,
    model_kwargs_from_args,
    read_checkpoint,
    read_label_names_file,
)


@pytest.fixture(scope='module')
def weights():
    model = timm.create_model('tm_resnet18_small', num_classes=3, channels=(8, 16, 32, 64))
    return model.state_dict()


def _ema(sd):
    return {k: v + 1 if v.is_floating_point() else v for k, v in sd.items()}


def test_export_and_visualize_read_checkpoints_with_this_module():
    assert timm_tm.export.read_checkpoint is read_checkpoint
    assert timm_tm.visualize.read_checkpoint is read_checkpoint


def test_ema_is_taken_only_when_asked_and_never_replaced_by_the_model_weights(weights, tmp_path):
    args = argparse.Namespace(model='tm_resnet18_small', num_classes=3, model_ema=True)
    path = tmp_path / 'ckpt.pth.tar'
    torch.save({'state_dict': weights, 'state_dict_ema': _ema(weights), 'args': args, 'epoch': 4}, path)
    sd, meta = read_checkpoint(path, use_ema=True)
    assert meta['key'] == 'state_dict_ema' and meta['epoch'] == 4 and meta['args']['model'] == 'tm_resnet18_small'
    assert all(torch.equal(sd[k], v) for k, v in _ema(weights).items())
    sd, meta = read_checkpoint(path)
    assert meta['key'] == 'state_dict' and all(torch.equal(sd[k], v) for k, v in weights.items())

    torch.save({'state_dict': weights, 'args': args}, path)
    with pytest.raises(CheckpointError, match='--use-ema: the checkpoint has no EMA weights') as e:
        read_checkpoint(path, use_ema=True)
    assert str(path) in str(e.value)
    torch.save(weights, path)
    with pytest.raises(CheckpointError, match='bare state_dict has no EMA'):
        read_checkpoint(path, use_ema=True)


@pytest.mark.parametrize(
    'entry, message',
    [
        (dict(args=5), "'args' has type int"),
        (dict(args=['--lr', '0.1']), "'args' has type list"),
        (dict(arch=3), "'arch' has type int"),
        (dict(label_names=5), 'label_names has type int'),
        (dict(label_names=[None, 'a', 'b']), 'label_names holds None'),
    ],
)
def test_malformed_metadata_is_refused_naming_the_file(weights, tmp_path, entry, message):
    path = tmp_path / 'ckpt.pth.tar'
    torch.save({'state_dict': weights, **entry}, path)
    with pytest.raises(CheckpointError, match=message) as e:
        read_checkpoint(path)
    assert str(e.value).startswith(str(path)) and '\n' not in str(e.value)


def test_weights_are_checked_before_use(weights, tmp_path):
    import safetensors.torch

    nan = dict(weights)
    nan['fc.weight'] = torch.full_like(weights['fc.weight'], float('nan'))
    torch.save({'state_dict': nan}, tmp_path / 'nan.pth.tar')
    with pytest.raises(CheckpointError, match=r"non-finite values \(NaN / inf\) in \['fc.weight'\]"):
        read_checkpoint(tmp_path / 'nan.pth.tar')

    torch.save({'state_dict': {'a': torch.zeros(1), 'b': 'text'}}, tmp_path / 'text.pth.tar')
    with pytest.raises(CheckpointError, match='not tensors'):
        read_checkpoint(tmp_path / 'text.pth.tar')

    safe = tmp_path / 'w.safetensors'
    safetensors.torch.save_file(weights, str(safe))
    sd, meta = read_checkpoint(safe)
    assert meta['key'] is None and all(torch.equal(sd[k], v) for k, v in weights.items())
    safe.write_bytes(safe.read_bytes()[:-100])
    with pytest.raises(CheckpointError, match='not a valid safetensors file') as e:
        read_checkpoint(safe)
    assert str(safe) in str(e.value)
    garbage = tmp_path / 'g.safetensors'
    garbage.write_bytes(b'\xff' * 64)
    with pytest.raises(CheckpointError) as e:
        read_checkpoint(garbage)
    assert str(garbage) in str(e.value)


def test_pickled_code_is_not_run(tmp_path):
    marker = tmp_path / 'ran'

    class Payload:
        def __reduce__(self):
            return (open, (str(marker), 'w'))

    path = tmp_path / 'evil.pth'
    path.write_bytes(pickle.dumps({'state_dict': {'a': Payload()}}, protocol=2))
    with pytest.raises(CheckpointError, match='weights_only=True'):
        read_checkpoint(path)
    assert not marker.exists()


def test_model_and_data_args_follow_the_run_and_are_type_checked():
    args = {
        'model_kwargs': {'templates_per_class': 2, 'num_classes': 9},
        'in_chans': 1,
        'gp': 'max',
        'bn_eps': 1e-3,
        'input_size': [1, 28, 28],
        'mean': [0.5],
        'std': [0.25],
        'crop_pct': 1.0,
        'interpolation': 'bilinear',
        'img_size': None,
    }
    kwargs = model_kwargs_from_args(args, 'ckpt')
    assert kwargs == {'templates_per_class': 2, 'in_chans': 1, 'global_pool': 'max', 'bn_eps': 1e-3}
    data = data_args_from_args(args, 'ckpt')
    assert data == {
        'input_size': (1, 28, 28),
        'in_chans': 1,
        'mean': (0.5,),
        'std': (0.25,),
        'crop_pct': 1.0,
        'interpolation': 'bilinear',
    }
    for bad, needle in [
        ({'model_kwargs': ['templates_per_class=2']}, "'model_kwargs' has type list"),
        ({'in_chans': '3'}, "'in_chans' is '3'"),
        ({'bn_eps': float('nan')}, "'bn_eps' is nan"),
    ]:
        with pytest.raises(CheckpointError, match=needle):
            model_kwargs_from_args(bad, 'ckpt')
    for bad, needle in [
        ({'input_size': (3, 28)}, "'input_size' is \\(3, 28\\)"),
        ({'std': (0.5, 0, 0.5)}, "'std'"),
        ({'crop_pct': 'full'}, "'crop_pct'"),
    ]:
        with pytest.raises(CheckpointError, match=needle):
            data_args_from_args(bad, 'ckpt')


def test_label_names_from_files_and_the_run(tmp_path):
    (tmp_path / 'names.txt').write_text('cat\ndog\n\n')  # trailing blank lines end the file
    (tmp_path / 'list.json').write_text(json.dumps(['cat', 'dog']))
    (tmp_path / 'index.json').write_text(json.dumps({'1': 'dog', '0': 'cat'}))
    (tmp_path / 'to_index.json').write_text(json.dumps({'dog': 1, 'cat': 0}))
    for name in ('names.txt', 'list.json', 'index.json', 'to_index.json'):
        assert read_label_names_file(tmp_path / name) == ['cat', 'dog'], name
    # a blank line between names was dropped, shifting every later class by one (issue 17's probes)
    (tmp_path / 'gap.txt').write_text('cat\n\ndog\n')
    with pytest.raises(CheckpointError, match='gap.txt line 2 is blank: one class name per line'):
        read_label_names_file(tmp_path / 'gap.txt')
    (tmp_path / 'bad.json').write_text('["cat", ')
    with pytest.raises(CheckpointError, match='--label-names: .*bad.json is not valid JSON'):
        read_label_names_file(tmp_path / 'bad.json')
    (tmp_path / 'five.json').write_text('5')
    with pytest.raises(CheckpointError, match='five.json: label_names has type int'):
        read_label_names_file(tmp_path / 'five.json')
    with pytest.raises(CheckpointError, match='--label-names: cannot read'):
        read_label_names_file(tmp_path / 'missing.txt')
    assert check_label_names(('a', 1), 'x') == ['a', '1']
    with pytest.raises(CheckpointError, match='cfg: label_names has type str'):
        check_label_names('abc', 'cfg')

    # train.py's order: its class map, else its train folders by timm's natural key; a .pkl map is never unpickled
    for name in ('c10', 'c2', 'c1'):
        (tmp_path / 'data' / 'train' / name).mkdir(parents=True)
    args = {'data_dir': str(tmp_path / 'data'), 'dataset': '', 'train_split': 'train'}
    assert label_names_from_args(args) == (['c1', 'c2', 'c10'], str(tmp_path / 'data' / 'train'))
    assert label_names_from_args({**args, 'class_map': str(tmp_path / 'names.txt')})[0] == ['cat', 'dog']
    (tmp_path / 'map.pkl').write_bytes(pickle.dumps({'x': 0}))
    assert label_names_from_args({**args, 'class_map': str(tmp_path / 'map.pkl')})[0] == ['c1', 'c2', 'c10']
    assert label_names_from_args({**args, 'dataset': 'torch/cifar10'}) is None
    assert label_names_from_args({'data_dir': 5}) is None
    # line i of the run's class map is class i (train.py's): a blank line between names would shift every later
    # class, and falling back to the folders would give another order than the run's
    (tmp_path / 'gap.txt').write_text('cat\n\ndog\n')
    with pytest.raises(CheckpointError, match="the run's --class-map: .*gap.txt line 2 is blank"):
        label_names_from_args({**args, 'class_map': str(tmp_path / 'gap.txt')})
    (tmp_path / 'empty.txt').write_text('\n')
    with pytest.raises(CheckpointError, match='empty.txt names no classes'):
        label_names_from_args({**args, 'class_map': str(tmp_path / 'empty.txt')})
