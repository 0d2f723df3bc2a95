"""Every train.py feature a user reaches for, on CPU, through the timm components train.py itself uses.

``create_dataset`` / ``create_loader`` (with the prefetcher and FastCollateMixup, as train.py's defaults),
``ClassificationTask``, ``create_optimizer_v2``, ``NativeScaler`` and autocast drive a small tm_resnet on a real
image folder; each test covers one flag: --amp (bf16, fp16 + GradScaler), --channels-last, --model-ema,
--grad-checkpointing, --sync-bn, --torchcompile, --resume, --initial-checkpoint, --pretrained-path.
DDP through torchrun is in test_ddp.py; the real train.py in test_scripts.py.
"""

import argparse
import copy
from contextlib import suppress
from functools import partial

import numpy as np
import pytest
import timm
import torch
import torch.nn.functional as F
from conftest import tm_at_identity
from timm.data import FastCollateMixup, create_dataset, create_loader
from timm.layers import convert_sync_batchnorm
from timm.loss import LabelSmoothingCrossEntropy, SoftTargetCrossEntropy
from timm.optim import create_optimizer_v2
from timm.task import ClassificationTask, load_task_ema_checkpoint, resume_task_checkpoint
from timm.utils import CheckpointSaver, NativeScaler

from timm_tm.data import load_digits_arrays, write_image_folder

NUM_CLASSES = 10
SIZE = 16
# a narrow tm_resnet18_small keeps these CPU tests fast; the code paths are the full model's
SMALL = dict(channels=(16, 32, 64, 128), stem_width=16)


pytestmark = pytest.mark.usefixtures('one_thread')


@pytest.fixture(scope='module')
def image_folder(tmp_path_factory):
    """Real handwritten digits (scikit-learn) as an ImageNet-layout folder: 100 train / 40 validation PNGs."""
    images, labels = load_digits_arrays()
    idx = np.random.default_rng(0).permutation(len(labels))
    train, val = idx[:100], idx[100:140]
    root = tmp_path_factory.mktemp('digits')
    write_image_folder(
        str(root), {'train': (images[train], labels[train]), 'validation': (images[val], labels[val])}, size=SIZE
    )
    return root


def _model(**kwargs) -> torch.nn.Module:
    return timm.create_model('tm_resnet18_small', **{'num_classes': NUM_CLASSES, **SMALL, **kwargs})


def _loader(root, mixup: bool = False, batch_size: int = 16):
    """train.py's training loader: prefetcher on, FastCollateMixup for --mixup / --cutmix."""
    dataset = create_dataset('', root=str(root), split='train', is_training=True, batch_size=batch_size)
    collate_fn = None
    if mixup:
        collate_fn = FastCollateMixup(mixup_alpha=0.2, cutmix_alpha=1.0, label_smoothing=0.1, num_classes=NUM_CLASSES)
    return create_loader(
        dataset,
        input_size=(3, SIZE, SIZE),
        batch_size=batch_size,
        is_training=True,
        use_prefetcher=True,
        collate_fn=collate_fn,
        num_workers=0,
        device=torch.device('cpu'),
        scale=(0.5, 1.0),
        hflip=0.0,
    )


def _batches(root, n: int, mixup: bool = False):
    batches = []
    for x, y in _loader(root, mixup=mixup):
        batches.append((x, y))
        if len(batches) == n:
            return batches
    raise AssertionError(f'loader gave {len(batches)} batches, {n} wanted')


def _step(task, optimizer, x, y, autocast=suppress, loss_scaler=None, channels_last=False, num_updates=1):
    """One update exactly as train.py's train_one_epoch makes it; returns (logits, loss)."""
    task.get_trainable_module().train()
    if channels_last:
        x = x.contiguous(memory_format=torch.channels_last)
    with autocast():
        result = task(x, y)
    loss = result['loss']
    if loss_scaler is not None:
        loss_scaler(loss, optimizer)
    else:
        loss.backward()
        optimizer.step()
    optimizer.zero_grad()
    task.update_ema(step=num_updates)
    return result['output'].detach(), loss.detach()


def _tm_state(model) -> dict:
    return {k: v.detach().clone() for k, v in model.state_dict().items() if '.templates.' in k or 'evidence' in k}


def _assert_state_equal(a: dict, b: dict):
    assert a.keys() == b.keys()
    for k in a:
        assert torch.equal(a[k], b[k]), k


# --amp / --amp-dtype; on CPU train.py passes no loss scaler, on GPU fp16 gets NativeScaler: both are exercised
@pytest.mark.parametrize('amp', ['fp32', 'bf16', 'fp16_grad_scaler'])
def test_amp_step_with_mixup_cutmix_loader(image_folder, amp):
    if amp == 'fp16_grad_scaler' and not torch.amp.is_autocast_available('cpu'):
        pytest.skip('this torch has no CPU autocast')
    model = _model()
    task = ClassificationTask(model, criterion=SoftTargetCrossEntropy(), verbose=False)
    optimizer = create_optimizer_v2(model, opt='adamw', lr=1e-3, weight_decay=0.05)
    amp_dtype = {'fp32': None, 'bf16': torch.bfloat16, 'fp16_grad_scaler': torch.float16}[amp]
    autocast = suppress if amp_dtype is None else partial(torch.autocast, device_type='cpu', dtype=amp_dtype)
    loss_scaler = NativeScaler(device='cpu') if amp == 'fp16_grad_scaler' else None
    before = _tm_state(model)
    for x, y in _batches(image_folder, 4, mixup=True):
        assert y.shape == (x.shape[0], NUM_CLASSES)  # mixed soft targets
        output, loss = _step(task, optimizer, x, y, autocast, loss_scaler)
        assert output.dtype == (amp_dtype or torch.float32)  # the logits were computed under autocast
        assert torch.isfinite(loss) and torch.isfinite(output).all()
    after = _tm_state(model)
    for k in before:
        assert after[k].dtype == torch.float32, k  # AMP keeps fp32 master weights
        if k.endswith('evidence_weight'):  # a fixed gain of the labels' gradient in the default 'gradient' mode
            assert torch.equal(before[k], after[k]), f'{k} changed'
        else:
            assert not torch.equal(before[k], after[k]), f'{k} did not train'
    if loss_scaler is not None:  # the scaler took part in every step: it counted them, or backed off on an overflow
        state = loss_scaler.state_dict()
        assert state['_growth_tracker'] == 4 or state['scale'] < 2.0**16, state


def test_channels_last_matches_contiguous(image_folder):
    model = _model().eval()
    cl_model = copy.deepcopy(model).to(memory_format=torch.channels_last)
    x, _ = _batches(image_folder, 1)[0]
    with torch.no_grad():
        expected = model(x)
        actual = cl_model(x.contiguous(memory_format=torch.channels_last))
    torch.testing.assert_close(actual, expected, rtol=1e-4, atol=1e-4)
    # and trains like that, label smoothing as train.py's default loss
    task = ClassificationTask(cl_model, criterion=LabelSmoothingCrossEntropy(0.1), verbose=False)
    optimizer = create_optimizer_v2(cl_model, opt='sgd', lr=0.05, momentum=0.9)
    x, y = _batches(image_folder, 1)[0]
    _, loss = _step(task, optimizer, x, y, channels_last=True)
    assert torch.isfinite(loss)


def test_model_ema_averages_the_tm_blocks(image_folder):
    """--model-ema: timm's ModelEmaV3 averages the TM parameters and the TM BatchNorm buffers like any other."""
    # the 'templates' embedding has a BatchNorm, 'logits' evidence a learnable weight: every kind of TM state
    model = _model(embedding='templates', evidence_mode='logits')
    task = ClassificationTask(model, criterion=torch.nn.CrossEntropyLoss(), verbose=False)
    optimizer = create_optimizer_v2(model, opt='sgd', lr=0.1, momentum=0.9)
    ema = task.setup_ema(decay=0.5)
    initial = copy.deepcopy(model.state_dict())
    x, y = _batches(image_folder, 1)[0]
    # one update; update 2 is the first that ModelEmaV3 averages (update 1 copies): ema = 0.5 initial + 0.5 trained
    _step(task, optimizer, x, y, num_updates=2)
    trained = model.state_dict()
    ema_state = ema.module.state_dict()
    for block in model.tm_blocks():
        for leaf in ('templates.weight', 'evidence_weight', 'log_temperature', 'norm.running_mean', 'embed.weight'):
            k = f'{block}.{leaf}'
            assert not torch.equal(initial[k], trained[k]), f'{k} did not change in the step'
            torch.testing.assert_close(ema_state[k], 0.5 * initial[k] + 0.5 * trained[k], msg=k)
    ema.module.eval()
    with torch.no_grad():
        assert torch.isfinite(ema.module(x)).all()


def test_grad_checkpointing_gives_the_same_gradients(image_folder):
    model = _model()
    checkpointed = copy.deepcopy(model)
    checkpointed.set_grad_checkpointing(True)
    x, y = _batches(image_folder, 1)[0]
    grads = []
    for m in (model, checkpointed):
        m.train()
        F.cross_entropy(m(x), y).backward()
        grads.append({n: p.grad.clone() for n, p in m.named_parameters()})
    for n in grads[0]:
        torch.testing.assert_close(grads[1][n], grads[0][n], rtol=1e-4, atol=1e-6, msg=n)
    assert any(grads[0][f'{b}.templates.weight'].any() for b in model.tm_blocks())


@pytest.mark.parametrize('convert', ['timm', 'torch'])
def test_sync_bn_converts_the_tm_batchnorm(image_folder, convert):
    model = _model(embedding='templates').eval()  # the embedding with a BatchNorm over the scores
    if convert == 'timm':
        synced = convert_sync_batchnorm(copy.deepcopy(model))  # what train.py --sync-bn calls
    else:
        synced = torch.nn.SyncBatchNorm.convert_sync_batchnorm(copy.deepcopy(model))
    assert synced.tm_blocks().keys() == model.tm_blocks().keys() and len(model.tm_blocks()) > 0
    for name, tm in synced.tm_blocks().items():
        assert isinstance(tm.norm, torch.nn.SyncBatchNorm), f'{name}.norm was not converted'
    assert not any(type(m) is torch.nn.BatchNorm2d for m in synced.modules())
    assert synced.state_dict().keys() == model.state_dict().keys()  # checkpoints stay interchangeable
    x, _ = _batches(image_folder, 1)[0]
    with torch.no_grad():
        torch.testing.assert_close(synced.eval()(x), model(x))


@pytest.mark.parametrize('backend', ['aot_eager', pytest.param('inductor', marks=pytest.mark.inductor)])
def test_torch_compile_trains_like_eager(image_folder, backend):
    """--torchcompile: the compiled model (one graph, no breaks) gives eager's logits and gradients."""
    if not hasattr(torch, 'compile') or not torch._dynamo.is_dynamo_supported():
        pytest.skip('torch.compile is not supported on this platform')
    torch._dynamo.reset()
    model = _model().train()
    compiled_model = copy.deepcopy(model)
    compiled = torch.compile(compiled_model, backend=backend, fullgraph=True)
    x, y = _batches(image_folder, 1)[0]
    expected = model(x)
    F.cross_entropy(expected, y).backward()
    actual = compiled(x)
    F.cross_entropy(actual, y).backward()
    torch.testing.assert_close(actual, expected, rtol=1e-4, atol=1e-4)
    for (n, p), (_, q) in zip(model.named_parameters(), compiled_model.named_parameters()):
        torch.testing.assert_close(q.grad, p.grad, rtol=1e-3, atol=1e-5, msg=n)


def _training_state(task, optimizer):
    model = task.get_trainable_module()
    ema = task.get_trainable_module(ema=True)
    return (
        copy.deepcopy(model.state_dict()),
        copy.deepcopy(optimizer.state_dict()),
        copy.deepcopy(ema.module.state_dict()) if ema is not None else None,
    )


def _assert_nested_equal(a, b, path='state'):
    if isinstance(a, torch.Tensor):
        assert isinstance(b, torch.Tensor) and torch.equal(a, b), path
    elif isinstance(a, dict):
        assert a.keys() == b.keys(), path
        for k in a:
            _assert_nested_equal(a[k], b[k], f'{path}[{k!r}]')
    elif isinstance(a, (list, tuple)):
        assert len(a) == len(b), path
        for i, (u, v) in enumerate(zip(a, b)):
            _assert_nested_equal(u, v, f'{path}[{i}]')
    else:
        assert a == b, path


def _new_run(seed: int):
    torch.manual_seed(seed)
    model = _model()
    task = ClassificationTask(model, criterion=torch.nn.CrossEntropyLoss(), verbose=False)
    optimizer = create_optimizer_v2(model, opt='adamw', lr=1e-3, weight_decay=0.05)
    task.setup_ema(decay=0.9)
    return task, optimizer, NativeScaler(device='cpu')


def test_resume_restores_model_optimizer_and_ema(image_folder, tmp_path):
    """--resume: train.py's CheckpointSaver writes, resume_task_checkpoint + load_task_ema_checkpoint read back."""
    task, optimizer, scaler = _new_run(seed=0)
    batches = _batches(image_folder, 3)
    for num_updates, (x, y) in enumerate(batches[:2], start=1):
        _step(task, optimizer, x, y, num_updates=num_updates)
    saver = CheckpointSaver(
        model=task.get_trainable_module(),
        optimizer=optimizer,
        args=argparse.Namespace(model='tm_resnet18_small'),
        amp_scaler=scaler,
        checkpoint_dir=str(tmp_path),
        recovery_dir=str(tmp_path),
        task=task,
    )
    saver.save_checkpoint(epoch=4, metric=50.0)
    saved = _training_state(task, optimizer)
    assert not torch.equal(saved[2]['layer4.2.templates.weight'], saved[0]['layer4.2.templates.weight'])  # a real EMA

    resumed, resumed_optimizer, resumed_scaler = _new_run(seed=1)  # different initial weights
    checkpoint = str(tmp_path / 'last.pth.tar')
    epoch = resume_task_checkpoint(resumed, checkpoint, optimizer=resumed_optimizer, loss_scaler=resumed_scaler)
    load_task_ema_checkpoint(resumed, checkpoint)
    assert epoch == 5
    _assert_nested_equal(_training_state(resumed, resumed_optimizer), saved)
    _assert_nested_equal(resumed_scaler.state_dict(), scaler.state_dict())
    # nothing lost: the next update (Adam moments, step counts, EMA) is identical
    x, y = batches[2]
    _step(task, optimizer, x, y, num_updates=3)
    _step(resumed, resumed_optimizer, x, y, num_updates=3)
    _assert_nested_equal(_training_state(resumed, resumed_optimizer), _training_state(task, optimizer))


def _digits_batch(size: int) -> torch.Tensor:
    images, _ = load_digits_arrays()
    x = torch.from_numpy(images[:8]).float().div(255).unsqueeze(1)
    x = F.interpolate(x, size=(size, size), mode='bilinear', align_corners=False)
    return x.sub(0.3).div(0.3).expand(-1, 3, -1, -1).contiguous()


@pytest.mark.parametrize('key', ['state_dict', 'state_dict_ema'])
def test_initial_checkpoint_from_a_timm_resnet(tmp_path, key):
    """--initial-checkpoint resnet18's train.py checkpoint: tm_resnet18 starts exactly where resnet18 was."""
    resnet = timm.create_model('resnet18', num_classes=NUM_CLASSES, zero_init_last=False)  # every branch counts
    with torch.no_grad():  # trained-looking BN statistics, so that the comparison means something
        for m in resnet.modules():
            if isinstance(m, torch.nn.BatchNorm2d):
                m.running_mean.uniform_(-0.5, 0.5)
                m.running_var.uniform_(0.5, 1.5)
    path = tmp_path / 'checkpoint.pth.tar'
    torch.save({'epoch': 9, 'arch': 'resnet18', key: resnet.state_dict()}, path)
    model = timm.create_model(
        'tm_resnet18', num_classes=NUM_CLASSES, embedding='tied', evidence_mode='logits', checkpoint_path=str(path)
    )  # train.py's call
    x = _digits_batch(64)
    with torch.no_grad():
        torch.testing.assert_close(model.eval()(x), resnet.eval()(x), rtol=1e-5, atol=1e-5)
    assert tm_at_identity(model)


def _assert_error_and_untouched(model, load, *needles):
    before = copy.deepcopy(model.state_dict())
    with pytest.raises(RuntimeError) as info:
        load()
    message = str(info.value)
    for needle in needles:
        assert needle in message, f'{needle!r} not in:\n{message}'
    _assert_state_equal(model.state_dict(), before)  # nothing was half-loaded
    return message


def test_resume_from_a_checkpoint_for_other_classes_names_the_keys(tmp_path):
    other = _model(num_classes=20)
    path = tmp_path / 'last.pth.tar'
    torch.save({'epoch': 1, 'state_dict': other.state_dict()}, path)
    task, optimizer, _ = _new_run(seed=0)
    model = task.get_trainable_module()
    message = _assert_error_and_untouched(
        model,
        lambda: resume_task_checkpoint(task, str(path), optimizer=optimizer),
        'nothing was loaded',
        'size mismatch for TM key layer4.2.templates.weight',
        'size mismatch for fc.weight',
        'num_classes',
    )
    assert 'size mismatch for TM key fc.weight' not in message


def test_checkpoint_with_other_tm_stages_names_the_stages_to_create(tmp_path):
    path = tmp_path / 'model.pth.tar'
    torch.save({'state_dict': _model(tm_stages=(2, 4)).state_dict()}, path)
    model = _model()  # tm_stages (3, 4)
    message = _assert_error_and_untouched(
        model,
        lambda: timm.models.load_checkpoint(model, str(path)),
        'nothing was loaded',
        "its TM blocks are layer2.2, layer4.2, this model's layer3.2, layer4.2",
        'create the model with tm_stages=(2, 4)',
    )
    assert 'key(s)' not in message  # the backbone matches: the blocks' places say it, not a list of keys


def test_initial_checkpoint_from_another_resnet_names_the_keys(tmp_path):
    # another member of the family: one line naming both architectures and what differs
    path = tmp_path / 'resnet34.pth.tar'
    torch.save({'state_dict': timm.create_model('resnet34', num_classes=NUM_CLASSES).state_dict()}, path)
    model = timm.create_model('tm_resnet18', num_classes=NUM_CLASSES)
    message = _assert_error_and_untouched(
        model,
        lambda: timm.models.load_checkpoint(model, str(path)),
        "its backbone is resnet34's, this model's is resnet18's (tm_resnet18)",
        'layers (3, 4, 6, 3) vs (2, 2, 2, 2)',
        'create tm_resnet34 to load it',
    )
    assert len(message.splitlines()) == 1
    # a ResNet outside the family (resnet14t: a tiered deep stem): the keys are named
    path = tmp_path / 'resnet14t.pth.tar'
    torch.save({'state_dict': timm.create_model('resnet14t', num_classes=NUM_CLASSES).state_dict()}, path)
    _assert_error_and_untouched(
        model,
        lambda: timm.models.load_checkpoint(model, str(path)),
        'read as a timm ResNet state_dict',
        'Unexpected key(s) in state_dict: "conv1.0.weight"',
    )
    # a shape mismatch fails before anything is copied even when strict=False (torch would copy the rest first)
    bad = dict(_model().state_dict())
    bad['conv1.weight'] = torch.zeros(1)
    small = _model()
    _assert_error_and_untouched(small, lambda: small.load_state_dict(bad, strict=False), 'size mismatch for conv1')


def test_weights_of_other_widths_name_the_first_mismatches_and_count_the_rest():
    # every conv and BN mis-shaped: the error names the first 12 and counts the others, so it stays readable
    # (timm-tm export puts it on one line)
    wide = _model(channels=(32, 64, 128, 256), stem_width=32).state_dict()
    model = _model()
    message = _assert_error_and_untouched(
        model, lambda: model.load_state_dict(wide), 'size mismatch for layer1.0.conv1.weight', 'more size mismatch(es)'
    )
    mismatched = sum(tuple(v.shape) != tuple(model.state_dict()[k].shape) for k, v in wide.items())
    assert message.count('size mismatch for ') == 12
    assert f'... and {mismatched - 12} more size mismatch(es).' in message
    assert 'tied to the classes' not in message  # the class count is the same: no advice to change it


def test_pretrained_path_fine_tunes_a_tm_checkpoint_to_new_classes(tmp_path):
    """--pretrained-path (train.py: pretrained_cfg_overlay file=..., num_classes=-1) re-initializes class parts."""
    source = _model()
    path = tmp_path / 'model.pth.tar'
    torch.save(source.state_dict(), path)
    model = timm.create_model(
        'tm_resnet18_small',
        pretrained=True,
        num_classes=4,
        pretrained_cfg_overlay=dict(file=str(path), num_classes=-1),
        **SMALL,
    )
    assert model.num_classes == 4
    assert model.tm_blocks()['layer4.2'].templates.weight.shape[0] == 4
    torch.testing.assert_close(model.conv1.weight, source.conv1.weight)
    torch.testing.assert_close(model.layer4[1].conv2.weight, source.layer4[1].conv2.weight)
