"""``timm-tm export``: a short real training's checkpoint, exported, loaded back three ways.

The run and its export come from ``export_fixtures``. Loading back goes through timm's unmocked loader:
``local-dir:``, ``hf-hub:`` and the pretrained tag, the last two from an offline Hugging Face cache laid out as a
download leaves it (``offline_hub.populate_hf_cache``).
"""

import argparse
import csv
import io
import json
import os
import re
import shutil
import signal
import subprocess
import sys
from pathlib import Path

import pytest
import timm
import torch
import yaml
from export_fixtures import SIZE, TAG
from offline_hub import corrupt_file, populate_hf_cache

from timm_tm import model_card
from timm_tm.checkpoints import read_checkpoint
from timm_tm.cli import main as timm_tm_main
from timm_tm.export import main as export_main
from timm_tm.layers import EMBEDDINGS, EVIDENCE_MODES
from timm_tm.pretrained import WeightsFileError, tm_hub_id

pytest_plugins = ('export_fixtures', 'offline_hub')  # the run, exported and hf_cache fixtures


def _logits(model, x):
    with torch.no_grad():
        return model.eval()(x)


def test_checkpoint_is_read_weights_only_with_its_ema_and_args(run):
    out_dir, _, model, ema = run
    sd, meta = read_checkpoint(out_dir / 'model_best.pth.tar', use_ema=True)
    assert meta['key'] == 'state_dict_ema' and meta['args']['model'] == 'tm_resnet18_small' and meta['epoch'] == 0
    assert all(torch.equal(sd[k], v) for k, v in ema.state_dict().items())
    sd, meta = read_checkpoint(out_dir / 'model_best.pth.tar')
    assert meta['key'] == 'state_dict' and all(torch.equal(sd[k], v) for k, v in model.state_dict().items())


def test_export_writes_a_hub_folder(exported, run):
    out_dir = run[0]
    assert sorted(p.name for p in exported.iterdir()) == ['README.md', 'config.json', 'model.safetensors']
    assert not [p for p in exported.parent.iterdir() if p.name.startswith('.')]  # no temporary folder left
    config = json.loads((exported / 'config.json').read_text())
    assert config['architecture'] == 'tm_resnet18_small' and config['num_classes'] == 10
    assert config['label_names'] == [f'digit_{c}' for c in range(10)]  # from the run's class folders
    assert config['pretrained_cfg']['input_size'] == [3, SIZE, SIZE]
    assert config['pretrained_cfg']['mean'] == [0.5] * 3
    assert len(config['weights_sha256']['model.safetensors']) == 64

    card = (exported / 'README.md').read_text()
    front = yaml.safe_load(card.split('---')[1])
    assert {'image-classification', 'timm'} <= set(front['tags'])
    assert front['library_name'] == 'timm' and front['license'] == 'apache-2.0' and front['datasets'] == ['mnist']
    for section in ('## Model Details', '## Model Usage', '### Image Classification', '### Feature Map Extraction',
                    '### Image Embeddings', '## Citation'):  # fmt: skip
        assert section in card
    assert 'Feature Embedding by Template Matching as a ResNet Block' in card and 'Gorgun' in card
    assert '@inproceedings' in card and '2210.00992' in card
    assert f'hf-hub:{tm_hub_id(TAG)}' in card
    assert '${' not in card
    # the card describes the block that was exported (the default one here), in words and in its details line
    default = next(iter(timm.create_model('tm_resnet18_small', num_classes=10).tm_blocks().values()))
    assert model_card._EMBEDDING_TEXT[default.embedding] in card and f'embedding {default.embedding!r}' in card
    assert (
        'class evidence reaches the logits as gradient only' in card and model_card._EVIDENCE_TEXT['gradient'] in card
    )
    # numbers are measured, not typed: params of the model, top-1 / top-5 of summary.csv
    params = sum(p.numel() for p in timm.create_model('tm_resnet18_small', num_classes=10).parameters()) / 1e6
    assert f'Params (M): {params:.2f}' in card
    row = next(csv.DictReader(open(out_dir / 'summary.csv')))
    assert f'| {float(row["eval_top1"]):.2f} | {float(row["eval_top5"]):.2f} |' in card
    assert f'Image size: {SIZE} x {SIZE}' in card


def test_loads_back_through_local_dir_hub_id_and_tag(exported, run, hf_cache):
    _, x, _, ema = run
    expected = _logits(ema, x)
    local = timm.create_model(f'local-dir:{exported}', pretrained=True)
    assert torch.equal(_logits(local, x), expected)
    assert local.pretrained_cfg['label_names'][3] == 'digit_3'

    populate_hf_cache(hf_cache, 'some-org/digits-tm', exported)
    hub = timm.create_model('hf-hub:some-org/digits-tm', pretrained=True)
    assert torch.equal(_logits(hub, x), expected)

    populate_hf_cache(hf_cache, tm_hub_id(TAG), exported)
    tagged = timm.create_model(TAG, pretrained=True)
    assert torch.equal(_logits(tagged, x), expected)

    # every entry round-trips, the TM templates and temperatures included (they change no logit in 'gradient' mode)
    for loaded in (local, hub, tagged):
        loaded_sd = loaded.state_dict()
        assert loaded_sd.keys() == ema.state_dict().keys()
        assert all(torch.equal(loaded_sd[k], v) for k, v in ema.state_dict().items())

    embed = timm.create_model(f'local-dir:{exported}', pretrained=True, num_classes=0).eval()
    with torch.no_grad():
        assert torch.equal(embed(x), ema.forward_head(ema.forward_features(x), pre_logits=True))


def test_card_snippets_run(exported, run, hf_cache, monkeypatch, capsys):
    """Each Python snippet of the card runs as written, offline: the Hub from the cache, the image URL served
    from memory (a real digit)."""
    import urllib.request

    from PIL import Image

    populate_hf_cache(hf_cache, tm_hub_id(TAG), exported)
    digit = ((run[1][0].permute(1, 2, 0) * 0.5 + 0.5) * 255).byte().numpy()
    png = io.BytesIO()
    Image.fromarray(digit).resize((64, 64)).save(png, format='PNG')
    monkeypatch.setattr(urllib.request, 'urlopen', lambda url: io.BytesIO(png.getvalue()))
    snippets = re.findall(r'```python\n(.*?)```', (exported / 'README.md').read_text(), flags=re.S)
    assert len(snippets) == 3
    for code in snippets:
        exec(compile(code, 'README.md', 'exec'), {})
    printed = capsys.readouterr().out
    assert 'digit_' in printed  # classification printed label names
    assert 'torch.Size([1, 512])' in printed  # embeddings


def test_export_plain_weights_and_model_kwargs_from_a_bare_state_dict(tmp_path):
    model = timm.create_model('tm_resnet18_small', num_classes=4, templates_per_class=2).eval()
    torch.save(model.state_dict(), tmp_path / 'weights.pth')
    out = tmp_path / 'out'
    rc = export_main(
        [str(tmp_path / 'weights.pth'), '--model', 'tm_resnet18_small', '--out', str(out),
         '--model-kwargs', 'templates_per_class=2']
    )  # fmt: skip
    assert rc == 0
    config = json.loads((out / 'config.json').read_text())
    assert config['model_args']['templates_per_class'] == 2 and config['num_classes'] == 4
    card = (out / 'README.md').read_text()
    assert 'no accuracy is claimed' in card
    assert 'A `tm_resnet18_small`: a timm CNN (the base model below) with template-matching' in card  # the default card
    assert '**Base model:** `tm_resnet18_small` with `tm_stages=()`' in card
    x = torch.randn(2, 3, 32, 32)
    loaded = timm.create_model(f'local-dir:{out}', pretrained=True)
    assert torch.equal(_logits(loaded, x), _logits(model, x))
    assert all(torch.equal(loaded.state_dict()[k], v) for k, v in model.state_dict().items())


def test_export_of_another_timm_cnn_names_its_base_model_and_weights(tmp_path):
    """A train.py checkpoint of tm_efficientnet_b0 fine-tuned from timm's efficientnet_b0.ra_in1k: the card names the
    base model and the weights the training started from, and the folder reloads to the same logits."""
    import argparse

    model = timm.create_model('tm_efficientnet_b0', num_classes=5).eval()
    args = argparse.Namespace(
        model='tm_efficientnet_b0.ra_in1k', pretrained=True, num_classes=5, model_kwargs={}, input_size=None,
        in_chans=None, mean=None, std=None, crop_pct=None, data_dir=None, dataset='', class_map='',
    )  # fmt: skip
    torch.save({'epoch': 3, 'state_dict': model.state_dict(), 'args': args}, tmp_path / 'last.pth.tar')
    out = tmp_path / 'out'
    assert export_main([str(tmp_path / 'last.pth.tar'), '--model', 'tm_efficientnet_b0', '--out', str(out)]) == 0
    card = (out / 'README.md').read_text()
    assert "**Base model:** timm's `efficientnet_b0` (the same network without the TM blocks)" in card
    assert "**Initial weights:** `timm/efficientnet_b0.ra_in1k`, timm's own weights of the base" in card
    assert yaml.safe_load(card.split('---')[1])['base_model'] == 'timm/efficientnet_b0.ra_in1k'
    assert 'blocks after blocks.6.1' in card
    x = torch.randn(2, 3, 64, 64)
    assert torch.equal(_logits(timm.create_model(f'local-dir:{out}', pretrained=True), x), _logits(model, x))


def test_force_replaces_only_a_previous_export(run, tmp_path, capsys):
    ckpt = str(run[0] / 'model_best.pth.tar')
    out = tmp_path / 'out'
    out.mkdir()
    (out / 'old.txt').write_text('old')
    for force in ([], ['--force']):  # a folder with a file an export does not write is no previous export
        assert export_main([ckpt, '--out', str(out), *force]) == 1
        err = capsys.readouterr().err
        assert 'old.txt' in err and '--force only replaces' in err and (out / 'old.txt').read_text() == 'old'
    (out / 'old.txt').unlink()
    (out / 'README.md').write_text('my notes')  # a file of the same name, but no export beside it
    assert export_main([ckpt, '--out', str(out), '--force']) == 1
    assert 'not written by timm-tm export' in capsys.readouterr().err
    assert (out / 'README.md').read_text() == 'my notes'
    (out / 'README.md').unlink()
    out.rmdir()
    assert export_main([ckpt, '--out', str(out)]) == 0
    assert export_main([ckpt, '--out', str(out)]) == 1
    assert '--force' in capsys.readouterr().err
    assert export_main([ckpt, '--out', str(out), '--force']) == 0
    assert sorted(p.name for p in out.iterdir()) == ['README.md', 'config.json', 'model.safetensors']
    assert [p.name for p in tmp_path.iterdir()] == ['out']


def test_force_never_replaces_the_exports_own_inputs(run, exported, tmp_path, capsys):
    # a copy of the training run: `--out RUN --force` used to delete it, checkpoints and summary.csv included
    train = tmp_path / 'train'
    shutil.copytree(run[0], train)
    before = sorted(p.relative_to(train) for p in train.rglob('*'))
    for extra in ([], ['--summary', str(train / 'summary.csv')]):
        assert export_main([str(train / 'model_best.pth.tar'), '--out', str(train), '--force', *extra]) == 1
        assert 'Traceback' not in capsys.readouterr().err
    assert sorted(p.relative_to(train) for p in train.rglob('*')) == before

    # a previous export is replaceable, but not by an export that reads from it (its weights or its card)
    previous = tmp_path / 'previous'
    shutil.copytree(exported, previous)
    files = {p.name: p.read_bytes() for p in previous.iterdir()}
    weights = str(previous / 'model.safetensors')
    cases = [
        [weights, '--model', 'tm_resnet18_small', '--out', str(previous), '--force'],
        [str(run[0] / 'model_best.pth.tar'), '--out', str(previous), '--force', '--card', str(previous / 'README.md')],
    ]
    for argv in cases:
        assert export_main(argv) == 1
        err = capsys.readouterr().err
        assert err.count('\n') == 1 and "holds the export's own input" in err and str(previous) in err
    assert {p.name: p.read_bytes() for p in previous.iterdir()} == files
    assert sorted(p.name for p in tmp_path.iterdir()) == ['previous', 'train']


@pytest.mark.parametrize('out', ['.', '..'])
def test_out_dot_or_dotdot_is_refused_and_leaves_nothing(run, tmp_path, monkeypatch, capsys, out):
    work = tmp_path / 'a' / 'b'
    work.mkdir(parents=True)
    shutil.copytree(run[0], work / 'run')
    monkeypatch.chdir(work)
    before = sorted(tmp_path.rglob('*'))
    assert export_main([str(work / 'run' / 'model_best.pth.tar'), '--out', out, '--force']) == 1
    assert 'export to a new folder' in capsys.readouterr().err
    assert sorted(tmp_path.rglob('*')) == before  # no hidden ..*.old or *.partial folder either


def _killed_export(ckpt: Path, out: Path, sig: str) -> int:
    """Run an export in a fresh process that receives ``sig`` while it writes the model card."""
    code = (
        'import os, signal, sys\n'
        'import timm_tm.model_card\n'
        f'timm_tm.model_card.render_card = lambda *a, **k: os.kill(os.getpid(), signal.{sig})\n'
        'from timm_tm.export import main as export_main\n'
        f'sys.exit(export_main([{str(ckpt)!r}, "--out", {str(out)!r}]))\n'
    )
    env = dict(os.environ, OMP_NUM_THREADS='1')
    done = subprocess.run([sys.executable, '-c', code], env=env, timeout=600, capture_output=True, text=True)
    assert done.returncode in (128 + signal.SIGTERM, -signal.SIGKILL), done.stderr[-3000:]
    return done.returncode


def test_terminated_export_leaves_nothing_and_a_killed_ones_leftover_goes_next_time(run, tmp_path, capsys):
    ckpt = run[0] / 'model_best.pth.tar'
    out = tmp_path / 'exports' / 'out'
    assert _killed_export(ckpt, out, 'SIGTERM') == 128 + signal.SIGTERM
    assert list(out.parent.iterdir()) == []  # SIGTERM unwinds: the partial folder is removed

    assert _killed_export(ckpt, out, 'SIGKILL') == -signal.SIGKILL
    (partial,) = out.parent.iterdir()  # SIGKILL runs no code: a hidden folder that loads with local-dir: is left
    assert partial.name.startswith('.out.') and partial.name.endswith('.partial')
    assert (partial / 'config.json').is_file() and (partial / 'model.safetensors').is_file()
    # a live process's partial folder (another export of the same --out, running now) is not touched
    live = partial.with_name(re.sub(r'\.\d+\.(\w+)\.partial$', rf'.{os.getpid()}.\1.partial', partial.name))
    shutil.copytree(partial, live)
    assert export_main([str(ckpt), '--out', str(out)]) == 0
    assert 'killed' in capsys.readouterr().out
    assert sorted(p.name for p in out.parent.iterdir()) == sorted([live.name, 'out'])


def test_interrupted_export_leaves_no_folder(run, exported, tmp_path, monkeypatch):
    import timm_tm.model_card

    def interrupted(*args, **kwargs):
        raise KeyboardInterrupt

    monkeypatch.setattr(timm_tm.model_card, 'render_card', interrupted)
    ckpt = str(run[0] / 'model_best.pth.tar')
    with pytest.raises(KeyboardInterrupt):
        export_main([ckpt, '--out', str(tmp_path / 'new')])
    assert list(tmp_path.iterdir()) == []
    shutil.copytree(exported, tmp_path / 'kept')
    with pytest.raises(KeyboardInterrupt):
        export_main([ckpt, '--out', str(tmp_path / 'kept'), '--force'])
    assert [p.name for p in tmp_path.iterdir()] == ['kept']
    assert {p.name: p.read_bytes() for p in (tmp_path / 'kept').iterdir()} == {
        p.name: p.read_bytes() for p in exported.iterdir()
    }


def test_export_errors_name_the_file(run, exported, tmp_path, capsys):
    ckpt = run[0] / 'model_best.pth.tar'
    truncated = tmp_path / 'truncated.pth.tar'
    truncated.write_bytes(ckpt.read_bytes()[:5000])
    assert export_main([str(truncated), '--out', str(tmp_path / 'a')]) == 1
    err = capsys.readouterr().err
    assert str(truncated) in err and 'weights_only=True' in err and 'Traceback' not in err

    weights = tmp_path / 'model.safetensors'
    weights.write_bytes((exported / 'model.safetensors').read_bytes())
    corrupt_file(weights, 'truncated')
    assert export_main([str(weights), '--model', 'tm_resnet18_small', '--out', str(tmp_path / 'b')]) == 1
    err = capsys.readouterr().err
    assert str(weights) in err and 'not a valid safetensors file' in err

    bare = tmp_path / 'bare.pth'
    torch.save(read_checkpoint(ckpt)[0], bare)
    assert export_main([str(bare), '--model', 'tm_resnet18_small', '--use-ema', '--out', str(tmp_path / 'c')]) == 1
    assert 'no EMA weights' in capsys.readouterr().err
    assert not [p for p in tmp_path.iterdir() if p.is_dir()]


def test_export_input_errors_are_one_line_naming_the_flag_or_file(run, tmp_path, capsys):
    ckpt = run[0] / 'model_best.pth.tar'
    bad_json = tmp_path / 'names.json'
    bad_json.write_text('["digit_0", "digit_1",')
    bad_csv = tmp_path / 'summary.csv'
    bad_csv.write_text('epoch,train_loss,eval_loss,eval_top1,eval_top5\n0,1.0,0.9,abc,99\n')
    sd = timm.create_model('tm_resnet18_small', num_classes=10).state_dict()
    bad_args = tmp_path / 'bad_args.pth.tar'
    torch.save({'state_dict': sd, 'args': 5, 'epoch': 0}, bad_args)
    cases = [
        ([str(ckpt), '--model-kwargs', 'bogus=1'], ['--model-kwargs', 'bogus']),
        ([str(ckpt), '--label-names', str(bad_json)], ['--label-names', str(bad_json), 'JSON']),
        ([str(ckpt), '--summary', str(bad_csv)], ['--summary', str(bad_csv), "'abc'"]),
        ([str(bad_args), '--model', 'tm_resnet18_small'], [str(bad_args), "'args' has type int"]),
    ]
    for i, (argv, needles) in enumerate(cases):
        assert export_main([*argv, '--out', str(tmp_path / f'out{i}')]) == 1, argv
        err = capsys.readouterr().err
        assert err.count('\n') == 1 and err.startswith('timm-tm export: error: '), err
        assert all(n in err for n in needles), (needles, err)
        assert not (tmp_path / f'out{i}').exists()


@pytest.mark.parametrize(
    'flag, value',
    [
        ('--name', "tm_resnet18_small.x', pretrained=True); import os; os.system('id'); ('"),
        ('--name', 'tm_resnet18_small.a b'),
        ('--name', 'tm_resnet18_small.x\n---'),
        ('--name', 'tm_resnet18_small..x'),
        ('--repo', "me/x', pretrained=True); import os; ('"),
        ('--repo', 'me/x y'),
        ('--repo', '../evil'),
        ('--repo', 'a/b/c'),
    ],
)
def test_export_refuses_names_the_hub_would_not_take(run, tmp_path, capsys, flag, value):
    """--name and --repo are pasted into the card's code snippets and config.json: only Hub names pass."""
    out = tmp_path / 'out'
    assert timm_tm_main(['export', str(run[0] / 'model_best.pth.tar'), '--out', str(out), flag, value]) == 2
    line = _usage_error(capsys)
    assert line.startswith(f'timm-tm export: error: {flag} ') and 'Hub' in line
    assert not out.exists()


def _usage_error(capsys) -> str:
    """The error line of argparse's answer to wrong arguments (usage, then one error line), checked for form."""
    err = capsys.readouterr().err
    assert err.startswith('usage: timm-tm export ') and 'Traceback' not in err, err
    last = err.rstrip('\n').splitlines()[-1]
    assert last.startswith('timm-tm export: error: '), err
    return last


def test_wrong_arguments_are_refused_before_any_file_is_read(tmp_path, capsys):
    """``timm-tm export`` exits with status 2 (argparse's usage and error line) for values wrong in themselves, even
    with a checkpoint that does not exist: the arguments are checked first."""
    missing = str(tmp_path / 'missing.pth.tar')
    cases = [
        (['--num-classes', '0'], '--num-classes 0: must be >= 1'),
        (['--dataset', ' '], "--dataset ' ': must be a non-empty name on one line"),
        (['--model-kwargs', 'templates_per_class'], '--model-kwargs: expected key=value with a Python name as key'),
        (['--name', 'a b'], "--name 'a b': not a valid Hugging Face Hub name"),
    ]
    for argv, message in cases:
        assert timm_tm_main(['export', missing, '--out', str(tmp_path / 'out'), *argv]) == 2, argv
        assert message in _usage_error(capsys)
    assert timm_tm_main(['export', missing, '--out', str(tmp_path / 'out')]) == 1  # the same, with right arguments
    assert 'checkpoint not found' in capsys.readouterr().err
    assert list(tmp_path.iterdir()) == []


def test_local_dir_weights_sha256_that_is_not_a_mapping_is_refused(exported, tmp_path):
    """A config.json whose weights_sha256 is a string, a list or lacks the weights file would switch the integrity
    check off: the weights (here altered) are refused instead."""
    for i, recorded in enumerate(['0' * 64, ['x'], {}, {'model.safetensors': 5}, {'other.safetensors': '0' * 64}]):
        folder = tmp_path / f'f{i}'
        shutil.copytree(exported, folder)
        config = json.loads((folder / 'config.json').read_text())
        config['weights_sha256'] = recorded
        (folder / 'config.json').write_text(json.dumps(config))
        corrupt_file(folder / 'model.safetensors', 'altered')
        with pytest.raises(WeightsFileError, match='weights_sha256') as e:
            timm.create_model(f'local-dir:{folder}', pretrained=True)
        assert str(folder / 'config.json') in str(e.value)


def test_wrong_model_checkpoint_error_names_keys(tmp_path, capsys):
    resnet50 = timm.create_model('resnet50')
    torch.save({'state_dict': resnet50.state_dict(), 'arch': 'resnet50', 'epoch': 3}, tmp_path / 'r50.pth.tar')
    rc = export_main([str(tmp_path / 'r50.pth.tar'), '--model', 'tm_resnet18', '--out', str(tmp_path / 'out')])
    assert rc == 1
    err = capsys.readouterr().err
    # another architecture of the family: named, with what differs (the keys, for any other: test_training)
    assert str(tmp_path / 'r50.pth.tar') in err and "its backbone is resnet50's" in err
    assert 'block Bottleneck vs BasicBlock' in err and 'create tm_resnet50 to load it' in err
    assert err.count('\n') == 1 and err.startswith('timm-tm export: error: ')  # it was three lines (issue 17)
    assert not (tmp_path / 'out').exists()


def _plain_resnet_checkpoint(path: Path) -> Path:
    """A train.py checkpoint of a model without TM blocks (tm_resnet18_small with tm_stages=(): a ResNet's keys)."""
    resnet = timm.create_model('tm_resnet18_small', num_classes=10, tm_stages=())
    torch.save({'state_dict': resnet.state_dict(), 'arch': 'tm_resnet18_small', 'epoch': 3}, path)
    return path


def test_a_checkpoint_without_tm_weights_is_exported_only_when_asked(tmp_path, capsys):
    """It exported random templates under a card saying the labels trained them (issue 17)."""
    ckpt = _plain_resnet_checkpoint(tmp_path / 'resnet.pth.tar')
    argv = [str(ckpt), '--model', 'tm_resnet18_small', '--dataset', 'digits']
    assert export_main([*argv, '--out', str(tmp_path / 'a')]) == 1
    err = capsys.readouterr().err
    assert err.count('\n') == 1 and 'has no weights for the TM blocks' in err and '--untrained-templates' in err
    assert not (tmp_path / 'a').exists()

    assert export_main([*argv, '--out', str(tmp_path / 'b'), '--untrained-templates']) == 0
    card = (tmp_path / 'b' / 'README.md').read_text()
    assert card.count('The TM blocks are untrained') == 2  # the opening paragraph and the model details

    trained = tmp_path / 'tm.pth'
    torch.save(timm.create_model('tm_resnet18_small', num_classes=10).state_dict(), trained)
    assert export_main([str(trained), '--model', 'tm_resnet18_small', '--out', str(tmp_path / 'c'),
                        '--untrained-templates']) == 1  # fmt: skip
    assert 'holds trained TM blocks' in capsys.readouterr().err


def test_a_checkpoint_of_other_tm_options_than_its_args_say_is_refused(tmp_path, capsys):
    """Weights trained with evidence_mode='logits' exported as a default model agreed with it on 0% of top-1."""
    model = timm.create_model('tm_resnet18_small', num_classes=10, evidence_mode='logits')
    args = argparse.Namespace(model='tm_resnet18_small', num_classes=10, model_kwargs={})  # the option not recorded
    ckpt = tmp_path / 'logits.pth.tar'
    torch.save({'state_dict': model.state_dict(), 'args': args, 'epoch': 0}, ckpt)
    assert export_main([str(ckpt), '--out', str(tmp_path / 'out')]) == 1
    err = capsys.readouterr().err
    assert err.count('\n') == 1 and "evidence_mode='logits'" in err and str(ckpt) in err, err
    assert export_main([str(ckpt), '--out', str(tmp_path / 'out'), '--model-kwargs', 'evidence_mode=logits']) == 0


def test_class_names_come_only_from_files_the_user_names(run, tmp_path, capsys):
    """A checkpoint's args may name any text file as the run's class map: its lines went into config.json, which
    push uploads (issue 17). They are read only with --run-label-names, which prints the path."""
    secret = tmp_path / 'secret.txt'
    secret.write_text('\n'.join(f'password-{i}' for i in range(10)) + '\n')
    saved = torch.load(run[0] / 'model_best.pth.tar', weights_only=False)
    saved['args'].class_map = str(secret)
    ckpt = tmp_path / 'model_best.pth.tar'
    torch.save(saved, ckpt)
    assert export_main([str(ckpt), '--out', str(tmp_path / 'a')]) == 0
    out = capsys.readouterr().out
    assert 'no class names exported' in out and str(secret) in out and '--run-label-names' in out
    assert 'label_names' not in json.loads((tmp_path / 'a' / 'config.json').read_text())
    assert not any('password' in p.read_text(errors='replace') for p in (tmp_path / 'a').iterdir())

    assert export_main([str(ckpt), '--out', str(tmp_path / 'b'), '--run-label-names']) == 0
    assert f'label names from {secret}' in capsys.readouterr().out
    assert json.loads((tmp_path / 'b' / 'config.json').read_text())['label_names'][3] == 'password-3'


@pytest.mark.parametrize(
    'names, problem',
    [
        ({'0': 'a', '2': 'b'}, 'index 1 is missing'),
        ({'a': 0, 'b': 0}, 'index 0 is given twice'),
        ({'a': 1, 'b': 2}, 'index 0 is missing'),
        ({'0': 'a', 'x': 'b'}, "found index 'a'"),  # neither all indices nor all names
    ],
)
def test_label_names_json_with_gaps_or_repeated_indices_is_refused(tmp_path, capsys, names, problem):
    from timm_tm.checkpoints import CheckpointError, read_label_names_file

    path = tmp_path / 'names.json'
    path.write_text(json.dumps(names))
    with pytest.raises(CheckpointError, match=problem):
        read_label_names_file(path)
    path.write_text(json.dumps({'1': 'b', '0': 'a'}))
    assert read_label_names_file(path) == ['a', 'b']


def test_a_variant_fine_tuned_from_a_tag_exports_naming_its_base_and_weights(tmp_path, capsys):
    """A run of train.py --model tm_resnet18d.ra2_in1k --pretrained: exported as tm_resnet18d (its own weights, not
    the tag's), the card naming the base (timm's resnet18d) and the weights it started from, in its front matter too."""
    import argparse

    model = timm.create_model('tm_resnet18d', num_classes=5).eval()
    args = argparse.Namespace(
        model='tm_resnet18d.ra2_in1k', pretrained=True, num_classes=5, epochs=3, data_dir='/d/pets'
    )
    torch.save({'state_dict': model.state_dict(), 'args': args, 'epoch': 2}, tmp_path / 'last.pth.tar')
    out = tmp_path / 'out'
    assert export_main([str(tmp_path / 'last.pth.tar'), '--out', str(out)]) == 0, capsys.readouterr().err
    assert json.loads((out / 'config.json').read_text())['architecture'] == 'tm_resnet18d'
    card = (out / 'README.md').read_text()
    assert yaml.safe_load(card.split('---')[1])['base_model'] == 'timm/resnet18d.ra2_in1k'
    assert "**Base model:** timm's `resnet18d` (the same network without the TM blocks)" in card
    assert "**Initial weights:** `timm/resnet18d.ra2_in1k`, timm's own weights of the base" in card
    x = torch.randn(2, 3, 64, 64)
    assert torch.equal(_logits(timm.create_model(f'local-dir:{out}', pretrained=True), x), _logits(model, x))


@pytest.mark.parametrize(
    'args, text, hub',
    [
        ({}, 'not recorded in the checkpoint', None),
        ({'model': 'tm_resnet50d', 'pretrained': False}, 'none: trained from random initialization', None),
        ({'model': 'tm_resnet50d', 'pretrained': True}, '`timm/resnet50d.ra2_in1k`', 'timm/resnet50d.ra2_in1k'),
        ({'model': 'tm_seresnext50_32x4d', 'pretrained': True}, 'tag `tm_seresnext50_32x4d.racm_in1k`', 'timm/'),
        ({'model': 'tm_resnet50.tm_in1k', 'pretrained': True}, 'the pretrained tag `tm_resnet50.tm_in1k`', None),
        (
            {'model': 'x', 'initial_checkpoint': '/r/resnet50d.pth'},
            '`resnet50d.pth` (train.py --initial-checkpoint)',
            None,
        ),
        ({'model': 'x', 'pretrained': True, 'pretrained_path': '/w/a.safetensors'}, '`a.safetensors` (train.py', None),
        # a tag this timm does not know (timm raises): named as recorded, no traceback
        ({'model': 'tm_convnext_tiny.no_such_tag', 'pretrained': True}, 'of `tm_convnext_tiny.no_such_tag`', None),
        ({'model': 'tm_convnext_tiny.fb_in1k', 'pretrained': True}, '`timm/convnext_tiny.fb_in1k`', 'timm/'),
    ],
)
def test_card_names_the_weights_a_run_started_from(args, text, hub):
    from timm_tm.model_card import base_model_text, initial_weights

    sentence, repo = initial_weights(args)
    assert text in sentence and (repo or '').startswith(hub or '') and (repo is None) == (hub is None)
    assert base_model_text('tm_ecaresnet50d') == "timm's `ecaresnet50d` (the same network without the TM blocks)"
    assert base_model_text('tm_resnet18_small').startswith('`tm_resnet18_small` with `tm_stages=()`')
    assert base_model_text('tm_convnext_tiny') == "timm's `convnext_tiny` (the same network without the TM blocks)"
    assert base_model_text('tm_no_such_model') == 'not known to this timm-tm'


def test_tampered_local_dir_weights_are_refused(exported, tmp_path):
    for how in ('truncated', 'altered'):
        folder = tmp_path / how
        folder.mkdir()
        for p in exported.iterdir():
            (folder / p.name).write_bytes(p.read_bytes())
        corrupt_file(folder / 'model.safetensors', how)
        with pytest.raises(WeightsFileError) as e:
            timm.create_model(f'local-dir:{folder}', pretrained=True)
        assert str(folder / 'model.safetensors') in str(e.value)
    # without the recorded hash, a truncated file still fails on its header, naming the file
    config = json.loads((folder / 'config.json').read_text())
    del config['weights_sha256']
    (folder / 'config.json').write_text(json.dumps(config))
    corrupt_file(folder / 'model.safetensors', 'truncated')
    with pytest.raises(WeightsFileError, match='not a valid safetensors file'):
        timm.create_model(f'local-dir:{folder}', pretrained=True)


def test_local_dir_with_another_models_weights_names_the_keys(exported, tmp_path):
    import safetensors.torch

    folder = tmp_path / 'wrong'
    folder.mkdir()
    (folder / 'config.json').write_text((exported / 'config.json').read_text().replace('"weights_sha256"', '"_x"'))
    safetensors.torch.save_file(
        timm.create_model('resnet34', num_classes=10).state_dict(), folder / 'model.safetensors'
    )
    with pytest.raises(RuntimeError) as e:
        timm.create_model(f'local-dir:{folder}', pretrained=True)
    assert 'nothing was loaded' in str(e.value)
    # another architecture of the family: one line naming both and what differs
    assert "its backbone is resnet34's, this model's is tm_resnet18_small's" in str(e.value)
    assert 'layers (3, 4, 6, 3) vs (2, 2, 2, 2), small_stem False vs True' in str(e.value)


# ---------------------------------------------------------------------------------------------------- model cards


def test_every_publishable_model_has_a_card_template_that_renders():
    from timm_tm.model_card import CARD_FIELDS, find_card_template, render_card
    from timm_tm.pretrained import TM_WEIGHTS

    fields = {k: f'<{k}>' for k in CARD_FIELDS if k not in ('usage', 'citation')}
    fields.update(datasets_yaml='- imagenet-1k', license='apache-2.0', repo_id='org/name')
    fields.update(base_model_yaml='base_model: "timm/resnet50.a1_in1k"')
    for name in TM_WEIGHTS:
        path = find_card_template(name)
        assert path is not None and path.parent.name == 'model_cards', name
        card = render_card(fields, path.read_text(), source=str(path))
        front = yaml.safe_load(card.split('---')[1])
        assert {'image-classification', 'timm'} <= set(front['tags']) and front['library_name'] == 'timm'
        assert front['license'] == 'apache-2.0' and front['datasets'] == ['imagenet-1k']
        assert front['base_model'] == 'timm/resnet50.a1_in1k'
        for section in ('## Model Details', '## Model Usage', '## Citation', 'hf-hub:org/name', '<params_m>'):
            assert section in card, (name, section)
        assert '**Base model:** <base_model>' in card and '**Initial weights:** <initial_weights>' in card
    with pytest.raises(ValueError, match=r'x\.md: no value for placeholder\(s\) \$\{typo\}'):
        render_card(fields, 'a ${typo} b', source='x.md')


def test_card_refuses_names_that_would_break_out_of_its_snippets():
    """Whoever calls render_card, a repo id or name with a quote cannot turn the card's example into other code."""
    from timm_tm.model_card import CARD_FIELDS, render_card

    fields = {k: 'x' for k in CARD_FIELDS if k not in ('usage', 'citation')}
    fields.update(repo_id='org/name', model_name='tm_resnet18_small.x')
    assert "timm.create_model('hf-hub:org/name', pretrained=True)" in render_card(fields)
    for key, value in [
        ('repo_id', "org/x', pretrained=True); __import__('os').system('id'); ('"),
        ('repo_id', 'org/x\n```\n'),
        ('model_name', 'tm_resnet18_small.x" onload="'),
    ]:
        with pytest.raises(ValueError, match=f'card.md: {key} .* cannot go into the code snippets'):
            render_card({**fields, key: value}, source='card.md')


@pytest.mark.parametrize('embedding', EMBEDDINGS)
@pytest.mark.parametrize('evidence_mode', EVIDENCE_MODES)
def test_the_card_sentence_is_written_from_the_blocks(embedding, evidence_mode):
    net = timm.create_model('tm_resnet18_small', num_classes=3, embedding=embedding, evidence_mode=evidence_mode)
    text = model_card.tm_block_text(net)
    assert model_card._EMBEDDING_TEXT[embedding] in text and model_card._EVIDENCE_TEXT[evidence_mode] in text
    others = [t for e, t in model_card._EMBEDDING_TEXT.items() if e != embedding]
    assert not any(t in text for t in others)  # one block, one description
    assert 'no TM block' in model_card.tm_block_text(timm.create_model('tm_resnet18_small', tm_stages=()))
