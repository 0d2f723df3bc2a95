"""Class maps (timm_tm.class_maps) and their pictures (timm-tm visualize)."""

import argparse
import json
import os
import sys

import numpy as np
import pytest
import timm
import torch
import torch.nn.functional as F

from timm_tm import TemplateMatching
from timm_tm.class_maps import compute_class_maps, compute_class_maps_and_output, find_tm_blocks
from timm_tm.files import process_umask

# a narrow, shallow tm_resnet18_small (TM blocks after stages 3 and 4) that learns MNIST in seconds on one thread
SMALL_KWARGS = dict(layers=(1, 1, 1, 1), channels=(16, 32, 64, 128))
IMAGENET_MEAN = torch.tensor([0.485, 0.456, 0.406]).view(1, 3, 1, 1)
IMAGENET_STD = torch.tensor([0.229, 0.224, 0.225]).view(1, 3, 1, 1)


def _small_model(num_classes: int = 10, **kwargs) -> torch.nn.Module:
    return timm.create_model('tm_resnet18_small', num_classes=num_classes, **SMALL_KWARGS, **kwargs)


def _to_input(digits: np.ndarray) -> torch.Tensor:
    """N x 28 x 28 uint8 -> N x 3 x 28 x 28, as timm's eval transform prepares the digits' RGB PNGs."""
    x = torch.from_numpy(digits).float().div(255).unsqueeze(1).expand(-1, 3, -1, -1)
    return (x - IMAGENET_MEAN) / IMAGENET_STD


@pytest.fixture(scope='module')
def trained(mnist_arrays, tmp_path_factory):
    """The small model trained for one pass over 3000 real MNIST digits, its train.py-format checkpoint, and
    500 held-out digits."""
    x, y = mnist_arrays
    perm = np.random.default_rng(0).permutation(len(y))  # the archive is sorted by class
    x, y = x[perm], y[perm]
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        torch.manual_seed(0)
        model = _small_model()
        xt, yt = _to_input(x[:3000]), torch.from_numpy(y[:3000])
        batch, steps = 32, 3000 // 32
        opt = torch.optim.AdamW(model.parameters(), lr=5e-3, weight_decay=0.01)
        sched = torch.optim.lr_scheduler.OneCycleLR(opt, 5e-3, total_steps=steps, pct_start=0.2)
        model.train()
        for i in range(steps):
            loss = F.cross_entropy(model(xt[i * batch : (i + 1) * batch]), yt[i * batch : (i + 1) * batch])
            opt.zero_grad()
            loss.backward()
            opt.step()
            sched.step()
    finally:
        torch.set_num_threads(threads)
    model.eval()
    # as timm's train.py CheckpointSaver writes it (args as an argparse.Namespace)
    args = argparse.Namespace(
        model='tm_resnet18_small', num_classes=10, model_kwargs=dict(SMALL_KWARGS), input_size=(3, 28, 28),
        in_chans=None, mean=None, std=None, crop_pct=None, data_dir=None, dataset='', class_map='',
    )  # fmt: skip
    ckpt = tmp_path_factory.mktemp('ckpt') / 'model_best.pth.tar'
    torch.save({'epoch': 0, 'arch': 'tm_resnet18_small', 'state_dict': model.state_dict(), 'args': args}, ckpt)
    return model, ckpt, (x[-500:], y[-500:])


def _write_digits(folder, digits, labels):
    from PIL import Image

    paths = []
    for i, (img, label) in enumerate(zip(digits, labels)):
        path = folder / f'digit{i}_label{label}.png'
        Image.fromarray(img).convert('RGB').save(path)
        paths.append(path)
    return paths


# ---------------------------------------------------------------------------------------------------------------
# API


@pytest.mark.parametrize('mode', ['gradient', 'logits'])
def test_class_maps_shapes_and_model_output_unchanged(mode):
    model = _small_model(num_classes=7, evidence_mode=mode)
    x = torch.randn(2, 3, 32, 32)
    model.train()
    model.layer2.eval()  # a mixed mode must come back as it was
    output, maps = compute_class_maps_and_output(model, x)
    assert model.training and not model.layer2.training and model.layer3.training
    assert list(maps) == ['layer3.1', 'layer4.1']
    assert [list(m.class_map.shape) for m in maps.values()] == [[2, 7, 8, 8], [2, 7, 4, 4]]
    model.eval()
    with torch.no_grad():
        expected = model(x)
        features, evidence = model.forward_features_with_evidence(x)
        head = model.forward_head(features)
    torch.testing.assert_close(output, expected)
    # the logits are the head plus the blocks' weighted evidence
    torch.testing.assert_close(head + sum(m.weighted_evidence for m in maps.values()), expected)
    for name, m in maps.items():
        assert m.best_class.shape == (2, *m.class_map.shape[-2:]) and m.best_class.dtype == torch.int64
        assert torch.equal(m.best_class, m.class_map.argmax(dim=1))
        torch.testing.assert_close(m.class_evidence, m.class_map.mean(dim=(2, 3)))
        assert not m.class_map.requires_grad
        assert 'match' not in find_tm_blocks(model)[name].__dict__  # the recording wrapper is gone
    assert maps['layer4.1'][1].class_map.shape == (1, 7, 4, 4)


def test_class_maps_of_any_timm_model_with_a_tm_block_keep_grad_when_asked():
    model = timm.create_model('resnet18', num_classes=5, channels=(16, 32, 64, 128))
    model.layer4.append(TemplateMatching(128, 5))
    maps = compute_class_maps(model, torch.randn(1, 3, 64, 64), no_grad=False)
    assert list(maps) == ['layer4.2'] and maps['layer4.2'].class_map.shape == (1, 5, 2, 2)
    maps['layer4.2'].class_map.sum().backward()
    assert model.layer4[2].templates.weight.grad is not None


@pytest.mark.parametrize('name', ['tm_convnext_tiny', 'tm_efficientnet_b0'])
def test_class_maps_and_pictures_of_other_timm_cnns(name, tmp_path, capsys):
    """The other timm CNNs' blocks (tm_attach: a stage's own forward then the block; a Sequential's next child)
    give class maps, the same logits, and timm-tm visualize pictures from a bare state_dict (the classes read from
    the model's own head, not ResNet's fc)."""
    from PIL import Image

    model = timm.create_model(name, num_classes=7, evidence_mode='logits').eval()
    x = torch.randn(2, 3, 64, 64)
    output, maps = compute_class_maps_and_output(model, x)
    assert list(maps) == list(model.tm_blocks())
    with torch.no_grad():
        features = model.forward_features(x)
        torch.testing.assert_close(output, model(x))
        torch.testing.assert_close(
            model.forward_head(features) + sum(m.weighted_evidence for m in maps.values()), output
        )
    for m in maps.values():
        assert m.class_map.shape[:2] == (2, 7) and m.best_class.shape == (2, *m.class_map.shape[-2:])
    weights = tmp_path / 'weights.pth'  # the default TM options: the recorded tm_config must fit --model's
    torch.save(timm.create_model(name, num_classes=7).state_dict(), weights)
    image = tmp_path / 'image.png'
    Image.fromarray(np.random.default_rng(0).integers(0, 255, (80, 80, 3), dtype=np.uint8)).save(image)
    rc, err = _run_main(capsys, image, '--model', name, '--checkpoint', weights, '--out', tmp_path / 'maps.png')
    assert rc == 0, err
    with Image.open(tmp_path / 'maps.png') as im:
        assert im.size[0] > 100


def test_model_without_tm_blocks_is_a_clear_error():
    model = timm.create_model('resnet18', num_classes=5, channels=(16, 32, 64, 128))
    with pytest.raises(ValueError, match='no TemplateMatching blocks'):
        compute_class_maps(model, torch.randn(1, 3, 32, 32))


def test_briefly_trained_model_matches_the_true_class(trained):
    model, _, (digits, labels) = trained
    maps = compute_class_maps(model, _to_input(digits))
    labels = torch.from_numpy(labels)
    last = maps['layer4.1']
    evidence_top = (last.class_evidence.argmax(dim=1) == labels).float().mean().item()
    most_frequent = (last.best_class.flatten(1).mode(dim=1).values == labels).float().mean().item()
    print(f'layer4.1, 500 held-out digits: top evidence {evidence_top:.3f}, most frequent best {most_frequent:.3f}')
    # measured 0.79 and 0.73 after one pass over 3000 digits; chance is 0.1
    assert evidence_top > 0.5
    assert most_frequent > 0.45


# ---------------------------------------------------------------------------------------------------------------
# pictures


def _run_main(capsys, *argv):
    """(exit status, stderr lines) of ``timm-tm visualize ARGV``: main's return value, or argparse's exit."""
    from timm_tm.visualize import main

    try:
        rc = main([str(a) for a in argv])
    except SystemExit as e:  # only argparse exits (wrong arguments, --help)
        rc = e.code
    captured = capsys.readouterr()
    assert 'Traceback' not in captured.err
    return rc, captured.err.strip().splitlines()


def _failed_work(capsys, *argv) -> str:
    """The error line of a run that failed (status 1): exactly one line, ``timm-tm visualize: error: ...``."""
    rc, err = _run_main(capsys, *argv)
    assert rc == 1 and len(err) == 1 and err[0].startswith('timm-tm visualize: error: '), (rc, err)
    return err[0]


def _wrong_arguments(capsys, *argv) -> str:
    """The error line of a run refused for its arguments: argparse's usage then one error line, status 2."""
    from timm_tm.visualize import main

    with pytest.raises(SystemExit) as exit_info:
        main([str(a) for a in argv])
    err = capsys.readouterr().err.strip().splitlines()
    assert exit_info.value.code == 2 and err[0].startswith('usage: timm-tm visualize '), err
    assert err[-1].startswith('timm-tm visualize: error: ') and not any('error' in line for line in err[:-1]), err
    return err[-1]


def test_picture_size_and_best_class_panel_agree_with_the_api(trained, tmp_path, capsys):
    from PIL import Image
    from timm.data import create_transform, resolve_data_config

    from timm_tm.visualize import figure_size, render_image

    model, ckpt, (digits, labels) = trained
    images = _write_digits(tmp_path, digits[:3], labels[:3])
    bad = tmp_path / 'notes.png'
    bad.write_text('not an image')
    out = tmp_path / 'out' / 'maps.png'
    # one image fails, the others are drawn
    err = _failed_work(capsys, images[0], bad, *images[1:], '--checkpoint', ckpt, '--out', out)
    assert 'notes.png' in err and 'cannot read image' in err
    assert not (tmp_path / 'out' / 'maps_notes.png').exists()

    data_config = resolve_data_config(args={'input_size': (3, 28, 28)}, model=model)
    transform = create_transform(**data_config, is_training=False)
    width, height = figure_size(num_blocks=2, top_k=3)
    for path in images:
        png = tmp_path / 'out' / f'maps_{path.stem}.png'
        assert png.is_file()
        with Image.open(png) as im:
            assert im.size == (round(width * 100), round(height * 100))
            pixels = np.asarray(im.convert('RGB'), dtype=np.float32) / 255
        with Image.open(path) as im:
            x = transform(im.convert('RGB')).unsqueeze(0)
        api = compute_class_maps(model, x)
        # where each block's best-class map sits in the picture (same layout as the PNG main wrote)
        fig, _, panels = render_image(model, transform, str(path), [str(i) for i in range(10)], data_config)
        fig.draw_without_rendering()  # places the axes as saving does (imshow's equal aspect shrinks them)
        assert set(panels) == set(api) == {'layer3.1', 'layer4.1'}
        for name, panel in panels.items():
            best = api[name].best_class[0].numpy()
            h, w = best.shape
            box = panel.axes.get_window_extent()
            palette = np.array(list(panel.palette.values()))
            classes = np.array(list(panel.palette.keys()))
            drawn = np.empty_like(best)
            for i in range(h):
                for j in range(w):
                    # near a region's top-left corner: its centre may carry the class name
                    px = int(box.x0 + (j + 0.15) / w * box.width)
                    py = int(pixels.shape[0] - (box.y1 - (i + 0.15) / h * box.height))
                    drawn[i, j] = classes[np.abs(palette - pixels[py, px]).sum(axis=1).argmin()]
            np.testing.assert_array_equal(drawn, best, err_msg=f'{png.name} {name}')


def test_bad_inputs_give_one_line_errors(trained, tmp_path, capsys, monkeypatch):
    _, ckpt, (digits, labels) = trained
    (image,) = _write_digits(tmp_path, digits[:1], labels[:1])
    out = tmp_path / 'o.png'

    err = _failed_work(capsys, image, '--out', out, '--model', 'resnet18', '--num-classes', '10')
    assert "'resnet18' has no TemplateMatching blocks" in err

    err = _failed_work(capsys, image, '--out', out, '--model', 'tm_resnet18', '--checkpoint', ckpt)
    assert "does not fit model 'tm_resnet18' (it was saved from 'tm_resnet18_small')" in err and 'conv1' in err

    other = tmp_path / 'resnet.pth'
    torch.save(timm.create_model('resnet18', num_classes=10, channels=(16, 32, 64, 128)).state_dict(), other)
    err = _failed_work(capsys, image, '--out', out, '--model', 'tm_resnet18_small', '--checkpoint', other)
    assert 'missing keys' in err

    garbage = tmp_path / 'garbage.pth'
    garbage.write_bytes(b'\x00not a checkpoint')
    assert 'not a readable PyTorch checkpoint' in _failed_work(capsys, image, '--out', out, '--checkpoint', garbage)

    err = _wrong_arguments(capsys, image, '--out', out, '--checkpoint', ckpt, '--classes', '0')
    assert err == 'timm-tm visualize: error: --classes must be >= 1, got 0'

    monkeypatch.setitem(sys.modules, 'matplotlib', None)
    assert 'matplotlib' in _failed_work(capsys, image, '--out', out, '--checkpoint', ckpt)
    assert not out.exists()


def test_label_names_from_the_training_folder_and_output_names(tmp_path):
    from timm_tm.visualize import VisualizeError, output_paths, resolve_label_names

    model = _small_model(num_classes=3)
    for name in ('class10', 'class2', 'class1'):
        (tmp_path / 'data' / 'train' / name).mkdir(parents=True)
    meta = {'args': {'data_dir': str(tmp_path / 'data'), 'dataset': '', 'train_split': 'train'}}
    # timm's ImageFolder orders class folders by natural key: class1, class2, class10
    assert resolve_label_names(model, 3, meta) == ['class1', 'class2', 'class10']
    assert resolve_label_names(model, 3, {'label_names': ['a', 'b', 'c'], **meta}) == ['a', 'b', 'c']
    assert resolve_label_names(model, 3, {}) == ['0', '1', '2']
    # a broken source after the one that fits is never read: the run's class map with a blank line between names
    # refuses nothing the user or the checkpoint names, and is an error where it would be used
    (tmp_path / 'gap.txt').write_text('a\n\nb\n')
    (tmp_path / 'good.txt').write_text('x\ny\nz\n')
    broken = {'args': {**meta['args'], 'class_map': str(tmp_path / 'gap.txt')}}
    assert resolve_label_names(model, 3, broken, label_names_file=str(tmp_path / 'good.txt')) == ['x', 'y', 'z']
    assert resolve_label_names(model, 3, {'label_names': ['a', 'b', 'c'], **broken}) == ['a', 'b', 'c']
    with pytest.raises(VisualizeError, match='gap.txt line 2 is blank'):
        resolve_label_names(model, 3, broken)

    assert output_paths('x/maps.png', ['a/cat.jpg']) == [tmp_path.__class__('x/maps.png')]
    paths = output_paths('x/maps.png', ['a/cat.jpg', 'b/cat.jpg', 'dog.png'])
    assert [str(p) for p in paths] == ['x/maps_cat.png', 'x/maps_cat_2.png', 'x/maps_dog.png']
    assert [str(p) for p in output_paths('pics/', ['a/cat.jpg', 'dog.png'])] == ['pics/cat.png', 'pics/dog.png']


# ---------------------------------------------------------------------------------------------------------------
# inputs are never lost, bad inputs are one line (issue 11)


def test_an_output_is_never_an_input(trained, tmp_path, capsys):
    _, ckpt, (digits, labels) = trained
    victim, a, maps_a = (tmp_path / n for n in ('victim.png', 'a.png', 'maps_a.png'))
    for path, digit in zip((victim, a, maps_a), digits[:3]):
        _write_digits(tmp_path, [digit], [0])[0].rename(path)
    before = {p.name: p.read_bytes() for p in tmp_path.iterdir()}
    (tmp_path / 'link.png').symlink_to(ckpt)
    os.link(victim, tmp_path / 'hard.png')
    cases = [
        [victim, '--out', victim],  # the plot written over its own input
        [a, maps_a, '--out', tmp_path / 'maps.png'],  # a.png's picture is maps_a.png, the second input
        [victim, '--out', tmp_path / 'link.png'],  # a link to the checkpoint
        [victim, '--out', tmp_path / 'hard.png'],  # a hard link to the image
        [victim, '--out', tmp_path / 'sub' / '..' / 'victim.png'],
    ]
    for argv in cases:
        err = _wrong_arguments(capsys, *argv, '--checkpoint', ckpt)
        assert err.startswith('timm-tm visualize: error: --out: '), (argv, err)
    assert {p.name: p.read_bytes() for p in tmp_path.iterdir() if p.name in before} == before
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted([*before, 'link.png', 'hard.png'])
    assert torch.load(ckpt, weights_only=False)['arch'] == 'tm_resnet18_small'


def test_an_existing_file_is_never_replaced_unless_force_and_a_picture_of_ours(trained, tmp_path, capsys):
    """`--out notes.txt` used to write a PNG over the notes, and `--out p/` p/cat.png over a picture of the user's
    when drawing p/cat.jpg (issue 17): an existing output is refused, and --force replaces only this command's."""
    from PIL import Image

    _, ckpt, (digits, labels) = trained
    pics = tmp_path / 'p'
    pics.mkdir()
    cat = pics / 'cat.jpg'
    Image.fromarray(digits[0]).convert('RGB').save(cat)
    Image.fromarray(digits[1]).convert('RGB').save(pics / 'cat.png')  # the user's own picture
    notes = tmp_path / 'notes.txt'
    notes.write_text('keep\n')
    before = {p: p.read_bytes() for p in (notes, pics / 'cat.png', cat)}
    for out in (notes, f'{pics}/'):
        err = _wrong_arguments(capsys, cat, '--checkpoint', ckpt, '--out', out)
        assert err.startswith('timm-tm visualize: error: --out: ') and 'exists' in err and '--force' in err, err
        err = _wrong_arguments(capsys, cat, '--checkpoint', ckpt, '--out', out, '--force')
        assert 'is not a picture timm-tm visualize wrote' in err, err
    assert {p: p.read_bytes() for p in before} == before
    assert sorted(p.name for p in pics.iterdir()) == ['cat.jpg', 'cat.png']

    out = tmp_path / 'maps.png'  # a picture of ours: replaced with --force only
    assert _run_main(capsys, cat, '--checkpoint', ckpt, '--out', out) == (0, [])
    first = out.read_bytes()
    assert 'exists' in _wrong_arguments(capsys, cat, '--checkpoint', ckpt, '--out', out)
    assert out.read_bytes() == first
    assert _run_main(capsys, cat, '--checkpoint', ckpt, '--out', out, '--force') == (0, [])


def test_a_picture_too_large_to_draw_is_refused_in_one_line(tmp_path, capsys):
    """`--classes 1000 --dpi 600` on a 1000-class model asked for a ~19 GB image buffer (issue 17)."""
    from PIL import Image

    from timm_tm.visualize import MAX_DPI, picture_size_problem

    assert picture_size_problem(2, 3, MAX_DPI) is None and picture_size_problem(4, 3, MAX_DPI) is None  # defaults
    problem = picture_size_problem(2, 1000, 600)
    assert '--classes 1000 --dpi 600' in problem and 'megapixels' in problem and 'GB' in problem
    image = tmp_path / 'a.png'
    Image.new('RGB', (32, 32)).save(image)
    for dpi in ('100', '600'):  # 220,799 x 590 pixels at 100 dpi (130 megapixels), 19 GB to draw at 600
        err = _wrong_arguments(
            capsys, image, '--model', 'tm_resnet18_small', '--num-classes', '1000', '--classes', '1000', '--dpi', dpi,
            '--out', tmp_path / 'o.png',
        )  # fmt: skip
        assert f'--classes 1000 --dpi {dpi}' in err and 'lower --classes or --dpi' in err, err
    assert not (tmp_path / 'o.png').exists()


def test_a_checkpoint_made_with_other_tm_options_is_a_one_line_error(tmp_path, capsys):
    """Weights trained with evidence_mode='logits' loaded into the default model and drew its maps (issue 17)."""
    from PIL import Image

    image = tmp_path / 'a.png'
    Image.new('RGB', (32, 32)).save(image)
    weights = tmp_path / 'logits.pth.tar'
    model = timm.create_model('tm_resnet18_small', num_classes=10, evidence_mode='logits', **SMALL_KWARGS)
    # the run's args do not say evidence_mode (e.g. a bare state_dict, or args edited by hand)
    args = argparse.Namespace(model='tm_resnet18_small', num_classes=10, model_kwargs=dict(SMALL_KWARGS))
    torch.save({'state_dict': model.state_dict(), 'arch': 'tm_resnet18_small', 'args': args}, weights)
    err = _failed_work(capsys, image, '--checkpoint', weights, '--out', tmp_path / 'o.png')
    assert "evidence_mode='logits'" in err and "evidence_mode='gradient'" in err and str(weights) in err, err
    assert not (tmp_path / 'o.png').exists()


def test_weights_are_checked_as_export_checks_them(trained, tmp_path, capsys):
    """--use-ema without EMA weights, NaN weights, args that are not a dict: refused, as by `timm-tm export`."""
    model, ckpt, (digits, labels) = trained
    (image,) = _write_digits(tmp_path, digits[:1], labels[:1])
    out = tmp_path / 'o.png'
    err = _failed_work(capsys, image, '--checkpoint', ckpt, '--use-ema', '--out', out)
    assert 'no EMA weights' in err and str(ckpt) in err

    saved = torch.load(ckpt, weights_only=False)
    nan = tmp_path / 'nan.pth.tar'
    sd = dict(saved['state_dict'])
    sd['fc.bias'] = torch.full_like(sd['fc.bias'], float('nan'))
    torch.save({**saved, 'state_dict': sd}, nan)
    err = _failed_work(capsys, image, '--checkpoint', nan, '--out', out)
    assert 'non-finite' in err and 'fc.bias' in err

    bad_args = tmp_path / 'bad_args.pth.tar'
    torch.save({**saved, 'args': 5}, bad_args)
    err = _failed_work(capsys, image, '--checkpoint', bad_args, '--out', out)
    assert str(bad_args) in err and "'args' has type int" in err
    assert not out.exists()


@pytest.fixture(scope='module')
def exported_default(tmp_path_factory):
    """`timm-tm export` of a default-kwargs tm_resnet18_small (10 classes): model.safetensors + config.json."""
    from timm_tm.cli import main as timm_tm_main

    tmp = tmp_path_factory.mktemp('exported')
    torch.save(timm.create_model('tm_resnet18_small', num_classes=10).state_dict(), tmp / 'w.pth')
    folder = tmp / 'export'
    assert timm_tm_main(['export', str(tmp / 'w.pth'), '--model', 'tm_resnet18_small', '--out', str(folder)]) == 0
    return folder


def test_bad_safetensors_and_configs_are_one_line_errors(trained, exported_default, tmp_path, capsys):
    import shutil

    from offline_hub import corrupt_file

    _, _, (digits, labels) = trained
    (image,) = _write_digits(tmp_path, digits[:1], labels[:1])
    out = tmp_path / 'o.png'
    plain = tmp_path / 'plain.safetensors'  # no config.json beside it: no recorded SHA-256, the header is checked
    plain.write_bytes((exported_default / 'model.safetensors').read_bytes())
    corrupt_file(plain, 'truncated')
    cases = [
        ('altered', 'altered or truncated'),
        ('truncated', 'altered or truncated'),
        (None, 'not a valid safetensors'),
    ]
    for how, needle in cases:
        weights = plain
        if how:
            shutil.copytree(exported_default, tmp_path / how)
            weights = tmp_path / how / 'model.safetensors'
            corrupt_file(weights, how)
        err = _failed_work(capsys, image, '--model', 'tm_resnet18_small', '--checkpoint', weights, '--out', out)
        assert needle in err and str(weights) in err, err

    folder = tmp_path / 'five'
    shutil.copytree(exported_default, folder)
    config = json.loads((folder / 'config.json').read_text())
    config['label_names'] = 5
    (folder / 'config.json').write_text(json.dumps(config))
    err = _failed_work(capsys, image, '--model', f'local-dir:{folder}', '--pretrained', '--out', out)
    assert str(folder / 'config.json') in err and 'label_names' in err, err
    assert not out.exists()


@pytest.mark.parametrize(
    'argv, status, needle',
    [
        (['--dpi', '0'], 2, '--dpi must be between 1 and 600, got 0'),
        (['--dpi', '100000'], 2, '--dpi must be between 1 and 600, got 100000'),
        (['--num-classes', '0'], 2, '--num-classes must be >= 1, got 0'),
        (['--pretrained', '--model', 'tm_resnet18_small', '--use-ema'], 2, '--use-ema'),
        (['--device', 'bogus'], 2, '--device bogus'),  # a device is tried on this machine before any work
        (['--device', 'cuda:99'], 2, '--device cuda:99'),
    ],
)
def test_bad_options_are_one_line_errors(trained, tmp_path, capsys, argv, status, needle):
    _, ckpt, (digits, labels) = trained
    (image,) = _write_digits(tmp_path, digits[:1], labels[:1])
    if '--pretrained' not in argv:
        argv = [*argv, '--checkpoint', str(ckpt)]
    argv = [image, '--out', tmp_path / 'o.png', *argv]
    err = _wrong_arguments(capsys, *argv) if status == 2 else _failed_work(capsys, *argv)
    assert needle in err, err
    assert not (tmp_path / 'o.png').exists()


@pytest.mark.skipif(torch.cuda.is_available(), reason='checks the message on a machine without a GPU')
def test_cuda_without_a_gpu_is_a_one_line_error(trained, tmp_path, capsys):
    _, ckpt, (digits, labels) = trained
    (image,) = _write_digits(tmp_path, digits[:1], labels[:1])
    assert '--device cuda' in _wrong_arguments(
        capsys, image, '--checkpoint', ckpt, '--device', 'cuda', '--out', tmp_path / 'o.png'
    )


def _png_header(path, width: int, height: int) -> None:
    """A PNG that declares width x height 8-bit gray pixels (no pixel data): PIL checks the size when opening."""
    import struct
    import zlib

    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack('>I', len(data)) + kind + data + struct.pack('>I', zlib.crc32(kind + data))

    ihdr = struct.pack('>IIBBBBB', width, height, 8, 0, 0, 0, 0)
    path.write_bytes(b'\x89PNG\r\n\x1a\n' + chunk(b'IHDR', ihdr) + chunk(b'IEND', b''))


def test_a_decompression_bomb_is_reported_and_the_other_images_drawn(trained, tmp_path, capsys):
    _, ckpt, (digits, labels) = trained
    bomb = tmp_path / 'bomb.png'
    _png_header(bomb, 15000, 15000)
    first, last = _write_digits(tmp_path, digits[:2], labels[:2])
    out = tmp_path / 'out'
    err = _failed_work(capsys, first, bomb, last, '--checkpoint', ckpt, '--out', f'{out}/')
    assert str(bomb) in err and 'DecompressionBomb' in err, err
    # no temporary file left beside the pictures, which are as readable as any file the user makes
    assert sorted(p.name for p in out.iterdir()) == sorted([f'{first.stem}.png', f'{last.stem}.png'])
    assert all((p.stat().st_mode & 0o777) == 0o666 & ~process_umask() for p in out.iterdir())

    rc, err = _run_main(capsys, first, '--checkpoint', ckpt, '--out', out / 'again.png')
    assert rc == 0 and err == [] and (out / 'again.png').is_file()


def test_16_bit_and_float_images_are_seen_as_their_8_bit_version(trained, tmp_path):
    from PIL import Image
    from timm.data import create_transform, resolve_data_config

    from timm_tm.visualize import render_image

    model, _, (digits, labels) = trained
    data_config = resolve_data_config(args={'input_size': (3, 28, 28)}, model=model)
    transform = create_transform(**data_config, is_training=False)
    names = [str(i) for i in range(10)]
    for i, digit in enumerate(digits[:3]):
        eight, sixteen, floats = tmp_path / f'{i}.png', tmp_path / f'{i}_16.png', tmp_path / f'{i}_f.tif'
        Image.fromarray(digit).save(eight)
        Image.fromarray(digit.astype(np.uint16) * 257).save(sixteen)
        Image.fromarray(digit.astype(np.float32) / 255).save(floats)
        with Image.open(sixteen) as im16, Image.open(floats) as imf:
            assert im16.mode == 'I;16' and imf.mode == 'F'
        _, expected, _ = render_image(model, transform, str(eight), names, data_config)
        for path in (sixteen, floats):
            _, maps, _ = render_image(model, transform, str(path), names, data_config)
            for name, m in maps.items():
                torch.testing.assert_close(m.class_map, expected[name].class_map, msg=f'{path.name} {name}')
