"""Distributed data parallel through torchrun: 2 CPU processes, gloo, the timm components train.py uses.

Each rank trains a tm_resnet on its own shard of real digits through ``ClassificationTask.prepare_distributed``
(DDP), as ``torchrun --nproc_per_node N train.py`` does; the ranks must end with identical weights, TM blocks
included. ``--sync-bn`` is not exercised here: torch's DDP refuses SyncBatchNorm on CPU ("SyncBatchNorm layers
only work with GPU modules"); test_training.py checks that the conversion reaches the TM BatchNorm.
"""

import json
import math
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

WORKER = r"""
import argparse
import json
import sys

import torch
import torch.distributed as dist
import torch.nn.functional as F
import timm
from timm.optim import create_optimizer_v2
from timm.task import ClassificationTask
from timm.utils import init_distributed_device, unwrap_model

import timm_tm
from timm_tm.data import load_digits_arrays

out_path = sys.argv[1]
torch.set_num_threads(1)
args = argparse.Namespace(device='cpu')
init_distributed_device(args)  # train.py's set-up: gloo for CPU, env:// from torchrun
assert args.distributed
rank, world_size = args.rank, args.world_size
torch.manual_seed(rank)  # different initial weights per rank: DDP must broadcast rank 0's
# the embedding with a BatchNorm and evidence with a learnable weight: every kind of TM state is synchronized
model = timm.create_model(
    'tm_resnet18_small', num_classes=10, channels=(16, 32, 64, 128), stem_width=16, embedding='templates',
    evidence_mode='logits',
)
task = ClassificationTask(model, criterion=torch.nn.CrossEntropyLoss(), verbose=False)
task.prepare_distributed(device_ids=None)  # CPU modules take no device_ids
ddp = task.get_trainable_module()
optimizer = create_optimizer_v2(ddp, opt='sgd', lr=0.05, momentum=0.9)
initial = {k: v.clone() for k, v in unwrap_model(ddp).state_dict().items()}

images, labels = load_digits_arrays()
x = torch.from_numpy(images).float().div(255).unsqueeze(1)
x = F.interpolate(x, size=(16, 16), mode='bilinear', align_corners=False).sub(0.3).div(0.3).expand(-1, 3, -1, -1)
y = torch.from_numpy(labels)
shard = torch.arange(rank, len(y), world_size)  # a distributed sampler's split: different images per rank
losses = []
ddp.train()
for step in range(3):
    idx = shard[step * 16:(step + 1) * 16]
    loss = task(x[idx].contiguous(), y[idx])['loss']
    optimizer.zero_grad()
    loss.backward()
    optimizer.step()
    losses.append(loss.item())

state = unwrap_model(ddp).state_dict()
param_names = {n for n, _ in unwrap_model(ddp).named_parameters()}


def rank_difference(names):
    flat = torch.cat([state[k].float().flatten() for k in sorted(names)])
    gathered = [torch.empty_like(flat) for _ in range(world_size)]
    dist.all_gather(gathered, flat)
    return max((g - gathered[0]).abs().max().item() for g in gathered)


param_difference = rank_difference(param_names)
tm = unwrap_model(ddp).tm_blocks()['layer4.2']
if rank == 0:
    result = dict(
        world_size=world_size,
        losses=losses,
        param_difference=param_difference,
        templates_changed=not torch.equal(state['layer4.2.templates.weight'], initial['layer4.2.templates.weight']),
        evidence_weight_changed=not torch.equal(state['layer4.2.evidence_weight'], initial['layer4.2.evidence_weight']),
        tm_norm=type(tm.norm).__name__,
    )
    with open(out_path, 'w') as f:
        json.dump(result, f)
dist.destroy_process_group()
"""


def _torchrun() -> list:
    exe = shutil.which('torchrun')
    if exe is None:
        candidate = Path(sys.executable).with_name('torchrun')
        exe = str(candidate) if candidate.exists() else None
    if exe is None:
        pytest.skip('torchrun not found (it installs with torch)')
    return [exe]


def test_torchrun_two_cpu_processes_train_in_lockstep(tmp_path):
    script = tmp_path / 'worker.py'
    script.write_text(WORKER)
    out = tmp_path / 'result.json'
    env = dict(os.environ, OMP_NUM_THREADS='1')
    # --standalone: a local rendezvous on a free port, so parallel test runs do not collide
    cmd = _torchrun() + ['--standalone', '--nproc_per_node', '2', str(script), str(out)]
    proc = subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=600)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    result = json.loads(out.read_text())
    assert result['world_size'] == 2
    assert all(math.isfinite(v) for v in result['losses']), result['losses']
    # the ranks started from different weights, saw different images, and ended identical: DDP broadcast rank 0's
    # initial weights and averaged every gradient, the TM blocks' included
    assert result['param_difference'] == 0.0
    assert result['templates_changed'] and result['evidence_weight_changed']
    assert result['tm_norm'] == 'BatchNorm2d'
