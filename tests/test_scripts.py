"""timm's scripts on tm_* models: ``timm-tm run SCRIPT.py`` (timm_tm/scripts.py), ``train.py --device-modules timm_tm``.

The end-to-end tests (marker ``train_script``) need timm's ``train.py``, which is not in timm's wheel:
``pytest --train-py=PATH`` (or TIMM_TRAIN_PY; validate.py and benchmark.py are taken from the same folder). Without
it they skip; the ``timm-tm run`` tests always run.
"""

import csv
import json
import math
import os
import re
import subprocess
import sys

import numpy as np
import pytest
import timm
import torch

from timm_tm.checkpoints import read_checkpoint
from timm_tm.scripts import main as run_main

# --- timm-tm run: always on --------------------------------------------------------------------------------------

SCRIPT = """
import json
import sys

import timm

import helper  # a module beside the script: the script's folder is on sys.path, as `python script.py` has it

if __name__ == '__main__':
    model = timm.create_model('tm_resnet18_small', num_classes=3)
    with open(sys.argv[1], 'w') as f:
        json.dump(dict(argv=sys.argv, helper=helper.VALUE, tm_blocks=sorted(model.tm_blocks())), f)
    sys.exit(int(sys.argv[2]))
"""


@pytest.fixture
def timm_script(tmp_path):
    folder = tmp_path / 'scripts'
    folder.mkdir()
    (folder / 'helper.py').write_text('VALUE = 42\n')
    script = folder / 'my_timm_script.py'
    script.write_text(SCRIPT)
    return script


def test_run_executes_a_timm_script_as_main_with_tm_models(timm_script, tmp_path):
    out = tmp_path / 'out.json'
    argv_before, path_before = list(sys.argv), list(sys.path)
    assert run_main([str(timm_script), str(out), '0']) == 0
    result = json.loads(out.read_text())
    assert result == dict(argv=[str(timm_script), str(out), '0'], helper=42, tm_blocks=['layer3.2', 'layer4.2'])
    assert sys.argv == argv_before and sys.path == path_before  # restored
    assert run_main([str(timm_script), str(out), '3']) == 3  # the script's exit status is the command's


def test_run_through_the_cli(timm_script, tmp_path):
    out = tmp_path / 'out.json'
    proc = subprocess.run(
        [sys.executable, '-m', 'timm_tm', 'run', str(timm_script), str(out), '0'], capture_output=True, text=True
    )
    assert proc.returncode == 0, proc.stderr
    assert json.loads(out.read_text())['tm_blocks'] == ['layer3.2', 'layer4.2']


@pytest.mark.parametrize(
    'content, expected',
    [
        (None, 'script not found'),
        ('print("hello")\n', 'is not a timm script (it does not import timm)'),
        ('# import timm\n"""from timm import create_model"""\n', 'is not a timm script'),
        ('model:\n  name: resnet50\n  lr: [0.1\n', 'is not a Python script'),
    ],
    ids=['missing', 'no_timm_import', 'timm_only_in_comments', 'not_python'],
)
def test_run_refuses_what_is_not_a_timm_script(tmp_path, capsys, content, expected):
    script = tmp_path / 'script.py'
    if content is not None:
        script.write_text(content)
    assert run_main([str(script), '--help']) == 2
    err = capsys.readouterr().err.strip()
    assert expected in err and str(script) in err and err.startswith('timm-tm run: error: ')
    assert len(err.splitlines()) == 1


def test_run_without_a_script_prints_usage(capsys):
    assert run_main([]) == 2
    assert 'usage: timm-tm run SCRIPT.py' in capsys.readouterr().err
    assert run_main(['--help']) == 0


# --- the real train.py, validate.py, benchmark.py: --train-py --------------------------------------------------------


@pytest.fixture(scope='module')
def mnist_folder(mnist_arrays, tmp_path_factory):
    """Real MNIST digits as an ImageNet-layout folder: 200 train / 100 validation PNGs at 32 px."""
    from timm_tm.data import write_image_folder

    images, labels = mnist_arrays
    idx = np.random.default_rng(0).permutation(len(labels))  # the archive is sorted by class
    train, val = idx[:200], idx[200:300]
    root = tmp_path_factory.mktemp('mnist32')
    splits = {'train': (images[train], labels[train]), 'validation': (images[val], labels[val])}
    return write_image_folder(str(root), splits, size=32)


def _run(cmd, cwd) -> str:
    env = dict(os.environ, OMP_NUM_THREADS='1', HF_HUB_OFFLINE='1')
    proc = subprocess.run(cmd, cwd=cwd, capture_output=True, text=True, env=env, timeout=900)
    output = proc.stdout + proc.stderr
    assert proc.returncode == 0, f'{" ".join(map(str, cmd))} failed:\n{output[-4000:]}'
    return output


@pytest.fixture(scope='module')
def trained(train_py, mnist_folder, tmp_path_factory):
    """Three short epochs of train.py on tm_resnet18_small: (experiment folder, its output)."""
    out = tmp_path_factory.mktemp('train_out')
    # a recipe for small grey digits: AdamW, mild crops, no flips, per-step logging to read the loss curve
    cmd = [
        sys.executable, str(train_py), str(mnist_folder), '--device-modules', 'timm_tm', '--model', 'tm_resnet18_small',
        '--num-classes', '10', '--input-size', '3', '32', '32', '--device', 'cpu', '--epochs', '3', '-b', '10',
        '--opt', 'adamw', '--lr', '2e-3', '--warmup-epochs', '0', '--scale', '0.7', '1.0', '--hflip', '0',
        '--workers', '0', '--val-split', 'validation', '--log-interval', '1', '--output', str(out),
        '--experiment', 'e2e', '--seed', '0',
    ]  # fmt: skip
    return out / 'e2e', _run(cmd, cwd=out)


@pytest.mark.train_script
def test_train_py_trains_tm_resnet_to_a_falling_loss(trained):
    folder, output = trained
    losses = [float(v) for v in re.findall(r'Train: 0 \[\s*\d+/\d+ .*?Loss:\s*([0-9.eE+-]+)', output)]
    assert len(losses) == 20, output[-3000:]  # every step of the first epoch logged
    assert all(math.isfinite(v) for v in losses)
    with open(folder / 'summary.csv') as f:
        rows = list(csv.DictReader(f))
    assert len(rows) == 3
    assert all(math.isfinite(float(r['train_loss'])) and math.isfinite(float(r['eval_loss'])) for r in rows)
    # the default block changes no prediction, so the loss falls as a ResNet's does: over epochs, not 20 steps
    first, last = float(rows[0]['train_loss']), float(rows[-1]['train_loss'])
    assert last < first - 0.1, f'train loss did not fall: {[r["train_loss"] for r in rows]}'
    assert float(rows[-1]['eval_top1']) > 10.0  # above chance after 60 steps
    assert (folder / 'last.pth.tar').is_file() and (folder / 'model_best.pth.tar').is_file()


@pytest.mark.train_script
def test_validate_py_through_timm_tm_run_reproduces_train_py_eval(train_py, trained, mnist_folder, tmp_path):
    folder, _ = trained
    validate_py = train_py.with_name('validate.py')
    results = tmp_path / 'validate.csv'
    cmd = [
        sys.executable, '-m', 'timm_tm', 'run', str(validate_py), str(mnist_folder), '--split', 'validation',
        '--model', 'tm_resnet18_small', '--num-classes', '10', '--input-size', '3', '32', '32',
        '--checkpoint', str(folder / 'last.pth.tar'), '--device', 'cpu', '--workers', '0', '-b', '50',
        '--results-file', str(results),
    ]  # fmt: skip
    _run(cmd, cwd=tmp_path)
    with open(results) as f:
        validated = next(csv.DictReader(f))
    with open(folder / 'summary.csv') as f:
        summary = list(csv.DictReader(f))[-1]
    # the same weights on the same images: validate.py's top-1 is train.py's last eval
    assert float(validated['top1']) == pytest.approx(float(summary['eval_top1']), abs=1e-3)


@pytest.mark.train_script
def test_benchmark_py_through_timm_tm_run(train_py, tmp_path):
    benchmark_py = train_py.with_name('benchmark.py')
    results = tmp_path / 'bench.csv'
    cmd = [
        sys.executable, '-m', 'timm_tm', 'run', str(benchmark_py), '--model', 'tm_resnet18_small',
        '--num-classes', '10', '--input-size', '3', '32', '32', '--device', 'cpu', '--bench', 'both', '-b', '4',
        '--num-warm-iter', '1', '--num-bench-iter', '5', '--no-retry', '--results-file', str(results),
    ]  # fmt: skip
    _run(cmd, cwd=tmp_path)
    with open(results) as f:
        row = next(csv.DictReader(f))
    assert row['model'] == 'tm_resnet18_small'
    assert float(row['infer_samples_per_sec']) > 0 and float(row['train_samples_per_sec']) > 0


# the other timm CNNs, one mechanism (timm_tm/models/tm_attach.py)
OTHER_FAMILIES = ['tm_convnext_tiny', 'tm_regnety_016', 'tm_efficientnet_b0']


def _train_from(train_py, name, mnist_folder, tmp_path, initial, *model_kwargs) -> dict:
    """One epoch of train.py with mixup, cutmix and an EMA, from the weights in ``initial`` (TM blocks without an
    embedding, and ``model_kwargs``): the model's and the EMA's weights of its last checkpoint."""
    out = tmp_path / 'out'
    cmd = [
        sys.executable, str(train_py), str(mnist_folder), '--device-modules', 'timm_tm', '--model', name,
        '--num-classes', '10', '--input-size', '3', '32', '32', '--device', 'cpu', '--epochs', '1', '-b', '20',
        '--opt', 'adamw', '--lr', '1e-3', '--weight-decay', '0', '--warmup-epochs', '0', '--mixup', '0.8',
        '--cutmix', '1.0', '--model-ema', '--model-ema-decay', '0.9', '--initial-checkpoint', str(initial),
        '--scale', '0.7', '1.0', '--hflip', '0', '--workers', '0', '--val-split', 'validation', '--output', str(out),
        '--experiment', 'e', '--seed', '0', '--model-kwargs', 'embedding=none', *model_kwargs,
    ]  # fmt: skip
    _run(cmd, cwd=tmp_path)
    last = out / 'e' / 'last.pth.tar'  # read as export reads it (its args are an argparse.Namespace)
    return {'state_dict': read_checkpoint(last)[0], 'state_dict_ema': read_checkpoint(last, use_ema=True)[0]}


@pytest.mark.train_script
@pytest.mark.parametrize('name', OTHER_FAMILIES)
def test_train_py_with_mixup_and_ema_moves_the_templates_of_other_families(name, train_py, mnist_folder, tmp_path):
    """No weight decay: the templates move only through the labels' gradient (AdamW leaves a parameter with zero
    gradient where it is), and no embedding (whatever the block's default): the labels are the templates' only way to
    change. The control, with the evidence weight at 0, is the same run without that path."""
    initial = tmp_path / 'initial.pth'
    start = timm.create_model(name, num_classes=10, embedding='none').state_dict()
    torch.save(start, initial)
    checkpoint = _train_from(train_py, name, mnist_folder, tmp_path, initial)
    templates = [k for k in start if k.endswith('.templates.weight')]
    assert templates
    for key in ('state_dict', 'state_dict_ema'):
        for k in templates:
            moved = (checkpoint[key][k] - start[k]).abs().max().item()
            assert moved > 1e-4, f'{key} {k}: the templates did not move ({moved})'
    if name != 'tm_efficientnet_b0':  # the control once, on the cheapest model
        return
    control_start = timm.create_model(name, num_classes=10, embedding='none', evidence_weight_init=0.0).state_dict()
    torch.save(control_start, initial)
    (tmp_path / 'control').mkdir()
    control = _train_from(train_py, name, mnist_folder, tmp_path / 'control', initial, 'evidence_weight_init=0.0')
    for k in templates:
        assert torch.equal(control['state_dict'][k], control_start[k]), f'{k} moved without the labels'


# Two variants stand for the new members of the family: the label path into the templates (the blocks' class
# evidence in the logits) is the family's one forward path, TemplateMatchingStage, whatever timm blocks run before it;
# tm_resnet18d (deep stem, average-pool downsampling, TM after stages 3 and 4) and tm_seresnext50_32x4d (grouped SE
# bottlenecks, TM after stage 4 alone) cover both placements, both block kinds and the ResNet-D, ResNeXt and SE kwargs.
@pytest.mark.train_script
@pytest.mark.parametrize('name', ['tm_resnet18d', 'tm_seresnext50_32x4d'])
def test_train_py_trains_a_variants_templates_with_mixup_and_ema(train_py, mnist_folder, tmp_path, name):
    """A real train.py run with mixup and EMA moves the templates of the model and of its EMA.

    No weight decay and no embedding: the labels' gradient through the class evidence is then the templates' only
    way to change, so this fails when the labels stop reaching them.
    """
    start = timm.create_model(name, num_classes=10, embedding='none')
    initial = tmp_path / 'initial.pth.tar'  # the known start: train.py --initial-checkpoint
    torch.save({'state_dict': start.state_dict()}, initial)
    templates = {f'{n}.templates.weight': b.templates.weight.detach().clone() for n, b in start.tm_blocks().items()}
    cmd = [
        sys.executable, str(train_py), str(mnist_folder), '--device-modules', 'timm_tm', '--model', name,
        '--model-kwargs', 'embedding=none', '--initial-checkpoint', str(initial), '--num-classes', '10',
        '--input-size', '3', '32', '32', '--device', 'cpu', '--epochs', '1', '-b', '10', '--opt', 'adamw',
        '--lr', '2e-3', '--weight-decay', '0', '--warmup-epochs', '0', '--mixup', '0.4', '--cutmix', '0.4',
        '--model-ema', '--model-ema-decay', '0.9', '--hflip', '0', '--workers', '0', '--val-split', 'validation',
        '--output', str(tmp_path), '--experiment', 'run', '--seed', '0',
    ]  # fmt: skip
    _run(cmd, cwd=tmp_path)
    recorded = (tmp_path / 'run' / 'args.yaml').read_text()
    assert 'mixup: 0.4' in recorded and 'cutmix: 0.4' in recorded and 'model_ema: true' in recorded
    for use_ema in (False, True):
        state_dict, _ = read_checkpoint(tmp_path / 'run' / 'last.pth.tar', use_ema=use_ema)
        assert sorted(templates) == sorted(k for k in state_dict if k.endswith('.templates.weight'))
        for key, before in templates.items():
            moved = (state_dict[key] - before).abs().max().item()
            which = 'EMA' if use_ema else 'model'
            assert moved > 1e-3, f'{which} {key} did not move ({moved:.2e}): the labels do not reach the templates'
