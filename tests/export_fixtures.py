"""A short real training saved as timm train.py saves it, and its export: fixtures of test_export and test_push.

A pytest plugin: list this module in a test module's ``pytest_plugins`` for the ``run`` and ``exported`` fixtures
(made once a session), and import the constants and helpers. PYTEST_DONT_REWRITE: the tests import it before pytest
loads it as a plugin, too late to rewrite its asserts (they carry their own messages).

The checkpoint is written by timm's own CheckpointSaver (train.py's format: 'state_dict', 'state_dict_ema', 'args',
...) after a few steps of tm_resnet18_small on scikit-learn's handwritten digits, with train.py's summary.csv.
"""

import argparse
from pathlib import Path

import pytest
import timm
import torch
import torch.nn.functional as F

from timm_tm.export import main as export_main

__all__ = ['TAG', 'SIZE', 'digits', 'export_copy', 'run', 'exported']

TAG = 'tm_resnet18_small.mnist'  # the TM tag these digits weights are exported under (10 classes, default kwargs)
SIZE = 8  # digits are 8 x 8 px; tm_resnet18_small's output stride is 8


def digits(size: int = SIZE):
    """scikit-learn's digits as (N x 3 x size x size images normalized to [-1, 1], N labels)."""
    from timm_tm.data import load_digits_arrays

    x, y = load_digits_arrays()
    imgs = torch.from_numpy(x).float().div(255).unsqueeze(1).repeat(1, 3, 1, 1)
    if size != 8:
        imgs = F.interpolate(imgs, size=size, mode='bilinear', align_corners=False)
    return (imgs - 0.5) / 0.5, torch.from_numpy(y)


def export_copy(exported: Path, folder: Path) -> Path:
    """A copy of the export folder ``exported`` as ``folder`` (plain files), to alter in a test."""
    folder.mkdir()
    for p in exported.iterdir():
        (folder / p.name).write_bytes(p.read_bytes())
    return folder


@pytest.fixture(scope='session')
def run(tmp_path_factory):
    """A short real training, saved as timm train.py saves it: (output dir, val images, model, ema model)."""
    from timm.optim import create_optimizer_v2
    from timm.utils import CheckpointSaver, ModelEmaV3, accuracy, update_summary

    torch.manual_seed(0)
    out = tmp_path_factory.mktemp('train')
    images, labels = digits()
    x_train, y_train, x_val, y_val = images[:1500], labels[:1500], images[1500:], labels[1500:]
    data_dir = out / 'digits'
    for c in range(10):  # train.py's ImageFolder layout: class folders give the label names
        (data_dir / 'train' / f'digit_{c}').mkdir(parents=True)
    args = argparse.Namespace(
        model='tm_resnet18_small', num_classes=10, model_kwargs={}, in_chans=3, img_size=SIZE, input_size=None,
        mean=(0.5,) * 3, std=(0.5,) * 3, crop_pct=1.0, interpolation='bilinear', epochs=1, opt='adamw', lr=2e-3,
        weight_decay=0.05, sched='cosine', batch_size=32, model_ema=True, dataset='', data_dir=str(data_dir),
        train_split='train', val_split='validation', gp=None, bn_eps=None, class_map='',
    )  # fmt: skip
    model = timm.create_model(args.model, num_classes=10)
    ema = ModelEmaV3(model, decay=0.8)
    optimizer = create_optimizer_v2(model, 'adamw', lr=args.lr, weight_decay=args.weight_decay)
    saver = CheckpointSaver(model, optimizer, args=args, model_ema=ema, checkpoint_dir=str(out), recovery_dir=str(out))
    g = torch.Generator().manual_seed(0)
    model.train()
    for step in range(10):
        idx = torch.randint(0, len(x_train), (args.batch_size,), generator=g)
        loss = F.cross_entropy(model(x_train[idx]), y_train[idx])
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        ema.update(model, step=step)
    model.eval()
    ema.module.eval()
    with torch.no_grad():
        logits = ema.module(x_val)
    top1, top5 = accuracy(logits, y_val, topk=(1, 5))
    eval_metrics = {'loss': F.cross_entropy(logits, y_val).item(), 'top1': top1.item(), 'top5': top5.item()}
    update_summary(0, {'loss': loss.item()}, eval_metrics, filename=str(out / 'summary.csv'), write_header=True)
    saver.save_checkpoint(0, metric=top1.item())
    assert (out / 'model_best.pth.tar').is_file(), f'CheckpointSaver wrote no model_best.pth.tar in {out}'
    return out, x_val[:8], model, ema.module


@pytest.fixture(scope='session')
def exported(run, tmp_path_factory):
    """The run's EMA weights exported under TAG with its summary.csv and the class names of its train folders
    (read-only: tests alter copies)."""
    out_dir, _, _, _ = run
    out = tmp_path_factory.mktemp('exports') / TAG
    ckpt = out_dir / 'model_best.pth.tar'
    rc = export_main(
        [str(ckpt), '--out', str(out), '--name', TAG, '--use-ema', '--summary', str(out_dir / 'summary.csv'),
         '--run-label-names']
    )  # fmt: skip
    assert rc == 0, f'timm-tm export of {ckpt} exited with {rc}'
    return out
