"""The timm model API on tm_resnet: every argument and method a timm user (or timm's scripts) relies on.

Small models and inputs keep this fast. The TM blocks are made non-trivial (random embeddings, nonzero evidence
weights) wherever a fresh block, being the identity, would hide a bug.
"""

import copy
import warnings

import pytest
import timm
import torch
import torch.nn as nn
import torch.nn.functional as F
from conftest import randomize_tm_embeddings, tm_at_identity

from timm_tm import TemplateMatching, TemplateMatchingResNet

IMG = 64  # tm_resnet18: 2 x 2 features at stage 4, 4 x 4 at stage 3


def _nontrivial(model: nn.Module, std: float = 0.05) -> nn.Module:
    """Random TM embeddings, so the TM blocks change the features (a fresh block is the identity)."""
    randomize_tm_embeddings(model, std=std)
    for tm in model.modules():
        if isinstance(tm, TemplateMatching):
            tm.evidence_weight.data.fill_(0.7)
    return model


def _create(name: str = 'tm_resnet18', **kwargs) -> TemplateMatchingResNet:
    # the 'tied' embedding: the TM blocks change the features ('none' would hide a skipped block)
    kwargs.setdefault('embedding', 'tied')
    return _nontrivial(timm.create_model(name, **kwargs)).eval()


def _x(b: int = 2, c: int = 3, size: int = IMG) -> torch.Tensor:
    return torch.randn(b, c, size, size)


def _tm_outputs(model: nn.Module, x: torch.Tensor) -> dict:
    """Features after each TM block (forward hooks): proves the blocks ran."""
    outs = {}
    hooks = [
        m.register_forward_hook(lambda mod, inp, out, n=n: outs.__setitem__(n, out))
        for n, m in model.named_modules()
        if isinstance(m, TemplateMatching)
    ]
    try:
        model(x)
    finally:
        for h in hooks:
            h.remove()
    return outs


# --- constructor arguments ---------------------------------------------------------------------------------------


def test_num_classes_sizes_head_and_templates():
    model = _create(num_classes=7, templates_per_class=3)
    assert model(_x()).shape == (2, 7)
    assert model.get_classifier().out_features == 7
    for tm in model.tm_blocks().values():
        assert tm.num_classes == 7 and tm.templates.weight.shape[0] == 21
    assert set(model.tm_blocks()) == {'layer3.2', 'layer4.2'}


def test_num_classes_zero_keeps_and_runs_templates():
    """An embedding model: pooled features out, the TM blocks still match with the templates it was made with."""
    model = _create(num_classes=0, templates_per_class=2)
    x = _x()
    out = model(x)
    assert out.shape == (2, model.num_features)
    assert model.num_classes == 0
    for tm in model.tm_blocks().values():
        assert tm.num_classes == 1000  # the pretrained cfg's classes: timm's weights load into it
    # the TM blocks ran (hooks) and changed the features: zeroing their embeddings changes the output
    assert set(_tm_outputs(model, x)) == {'layer3.2', 'layer4.2'}
    identity = copy.deepcopy(model)
    for tm in identity.tm_blocks().values():
        tm.zero_init_last()
    with torch.no_grad():
        assert not torch.allclose(model(x), identity(x), atol=1e-4)
        torch.testing.assert_close(model(x), model.forward_features(x).mean(dim=(2, 3)))  # the pooled features
    # an explicit template class count
    assert (
        timm.create_model('tm_resnet18', num_classes=0, template_classes=10).tm_blocks()['layer4.2'].num_classes == 10
    )


def test_reset_classifier_zero_keeps_templates():
    model = _create(num_classes=10, templates_per_class=2)
    before = {n: tm.templates.weight.detach().clone() for n, tm in model.tm_blocks().items()}
    x = _x()
    with torch.no_grad():
        feats = model.forward_features(x)
    model.reset_classifier(0)
    assert model.num_classes == 0
    with torch.no_grad():
        out = model(x)
        torch.testing.assert_close(out, feats.mean(dim=(2, 3)))  # TM blocks still run with the same templates
    for n, tm in model.tm_blocks().items():
        assert torch.equal(tm.templates.weight, before[n])


@pytest.mark.parametrize('num_classes', [3, 12])
def test_reset_classifier_rebuilds_templates_with_head(num_classes):
    model = _create(num_classes=10, templates_per_class=2).train()
    model.reset_classifier(num_classes)
    assert model(_x()).shape == (2, num_classes)
    for tm in model.tm_blocks().values():
        assert tm.num_classes == num_classes
        assert tm.templates.weight.shape == (2 * num_classes, tm.channels, 1, 1)
        assert tm.embed_scale.shape == (tm.channels,)
        assert tm_at_identity(tm)  # fresh blocks are the identity again
        assert tm.training
    # the rebuilt TM blocks follow the model's dtype (the head is timm's: it does so from timm 1.0.31)
    model = model.to(torch.float64)
    model.reset_classifier(5)
    assert all(p.dtype == torch.float64 for tm in model.tm_blocks().values() for p in tm.parameters())


def test_in_chans():
    model = _create(in_chans=1)
    assert model.conv1.weight.shape[1] == 1
    assert model(_x(c=1)).shape == (2, 1000)
    small = _create('tm_resnet18_small', in_chans=5, num_classes=4)
    assert small(_x(c=5, size=32)).shape == (2, 4)


def test_drop_rate():
    model = _create(drop_rate=0.5, num_classes=10)
    assert model.drop_rate == 0.5
    x = _x()
    with torch.no_grad():
        torch.testing.assert_close(model(x), model(x))  # eval: no dropout
        model.train()
        feats, evidence = model.forward_features_with_evidence(x)
        model.eval()
        head_eval = model.forward_head(feats, pre_logits=True)
        model.train()
        head_train = model.forward_head(feats, pre_logits=True)
    # dropout on the pooled features: about half are zeroed, the rest scaled by 2
    zeroed = head_train == 0
    assert 0.3 < zeroed.float().mean() < 0.7
    torch.testing.assert_close(head_train[~zeroed], 2 * head_eval[~zeroed])


def test_drop_path_rate():
    # zero_init_last=False: with the default zero-initialized last BN of each block, a dropped path is a zero path
    model = _create(drop_path_rate=0.2, num_classes=10, zero_init_last=False)
    drop_paths = [m for m in model.modules() if type(m).__name__ == 'DropPath']
    assert drop_paths and max(m.drop_prob for m in drop_paths) > 0
    x = _x(b=8)
    with torch.no_grad():
        torch.testing.assert_close(model(x), model(x))  # eval: no drop path
        model.train()
        # train: the same batch twice gives other outputs (BN uses batch statistics either way: only paths drop)
        assert not torch.allclose(model(x), model(x))


@pytest.mark.parametrize('pool', ['avg', 'max', 'avgmax'])
def test_global_pool(pool):
    model = _create(global_pool=pool, num_classes=10)
    x = _x()
    with torch.no_grad():
        feats = model.forward_features(x)
        pooled = model.forward_head(feats, pre_logits=True)
    ref = {
        'avg': feats.mean(dim=(2, 3)),
        'max': feats.amax(dim=(2, 3)),
        'avgmax': 0.5 * (feats.mean(dim=(2, 3)) + feats.amax(dim=(2, 3))),
    }[pool]
    torch.testing.assert_close(pooled, ref)
    assert model(x).shape == (2, 10)


def test_global_pool_empty_gives_feature_maps():
    x = _x()
    model = _create(num_classes=0, global_pool='')
    with torch.no_grad():
        out = model(x)
        assert out.shape == (2, 512, 2, 2)
        torch.testing.assert_close(out, model.forward_features(x))
    model = _create(num_classes=10)
    model.reset_classifier(0, '')
    with torch.no_grad():
        torch.testing.assert_close(model(x), model.forward_features(x))


# --- features -----------------------------------------------------------------------------------------------------


def test_features_only_out_indices_and_feature_info():
    ref = _create(num_classes=10)
    feat = timm.create_model(
        'tm_resnet18', features_only=True, out_indices=(2, 3, 4), num_classes=10, embedding='tied'
    ).eval()
    missing, unexpected = feat.load_state_dict(ref.state_dict(), strict=False)
    assert not missing  # every feature-model key, the TM blocks' included, comes from the classifier model
    assert set(unexpected) == {'fc.weight', 'fc.bias'}
    assert feat.feature_info.channels() == [128, 256, 512]
    assert feat.feature_info.reduction() == [8, 16, 32]
    assert feat.feature_info.module_name() == ['layer2', 'layer3', 'layer4']
    x = _x()
    with torch.no_grad():
        outs = feat(x)
        _, intermediates = ref.forward_intermediates(x, indices=(2, 3, 4))
    assert [tuple(o.shape) for o in outs] == [(2, 128, 8, 8), (2, 256, 4, 4), (2, 512, 2, 2)]
    # the stage 3 and 4 features include their TM blocks
    for o, i in zip(outs, intermediates):
        torch.testing.assert_close(o, i)
    with torch.no_grad():
        torch.testing.assert_close(outs[-1], ref.forward_features(x))


def test_features_only_small_reductions():
    feat = timm.create_model('tm_resnet18_small', features_only=True)
    assert feat.feature_info.reduction() == [1, 1, 2, 4, 8]
    outs = feat(_x(size=32))
    assert [o.shape[-1] for o in outs] == [32, 32, 16, 8, 4]


@pytest.mark.parametrize('mode', ['gradient', 'logits'])
def test_forward_features_and_head(mode):
    model = _create(num_classes=10, evidence_mode=mode)
    x = _x()
    with torch.no_grad():
        feats = model.forward_features(x)
        assert feats.shape == (2, 512, 2, 2)
        pre = model.forward_head(feats, pre_logits=True)
        assert pre.shape == (2, model.head_hidden_size) == (2, 512)
        feats2, evidence = model.forward_features_with_evidence(x)
        torch.testing.assert_close(feats2, feats)
        assert evidence.shape == (2, 10)
        logits = model(x)
        # model(x) = linear head on the pooled features + the class evidence of the TM blocks
        torch.testing.assert_close(logits, model.forward_head(feats, class_evidence=evidence))
        torch.testing.assert_close(logits, model.fc(pre) + evidence)
        if mode == 'logits':
            assert not torch.allclose(model.forward_head(feats), logits, atol=1e-4)  # the evidence is not zero
        else:  # the evidence reaches the logits as gradient only: the predictions are the head's
            assert not evidence.any()
            torch.testing.assert_close(model.forward_head(feats), logits, rtol=0, atol=0)
        # the TM blocks run as modules inside model(x): forward hooks on them fire
        assert set(_tm_outputs(model, x)) == {'layer3.2', 'layer4.2'}


def test_forward_intermediates():
    model = _create(num_classes=10)
    x = _x()
    with torch.no_grad():
        final, intermediates = model.forward_intermediates(x)
        assert [tuple(t.shape[1:]) for t in intermediates] == [(64, 32, 32), (64, 16, 16), (128, 8, 8),
                                                                (256, 4, 4), (512, 2, 2)]  # fmt: skip
        torch.testing.assert_close(final, model.forward_features(x))
        torch.testing.assert_close(intermediates[-1], final)
        only = model.forward_intermediates(x, indices=2, intermediates_only=True)
        assert len(only) == 2
        torch.testing.assert_close(only[0], intermediates[3])
        early = model.forward_intermediates(x, indices=[3], stop_early=True, intermediates_only=True)
        torch.testing.assert_close(early[0], intermediates[3])


def test_prune_intermediate_layers():
    model = _create(num_classes=10)
    x = _x()
    with torch.no_grad():
        full = model.forward_intermediates(x, indices=(1, 2, 3), intermediates_only=True)
    kept = model.prune_intermediate_layers(indices=(1, 2, 3))
    assert kept == [1, 2, 3]
    assert list(model.tm_blocks()) == ['layer3.2']  # layer4 and its TM block are gone, stage 3's stays
    assert model.num_classes == 0
    with torch.no_grad():
        pruned = model.forward_intermediates(x, indices=(1, 2, 3), intermediates_only=True)
    assert len(pruned) == len(full) == 3
    for a, b in zip(pruned, full):
        torch.testing.assert_close(a, b)


# --- training utilities -------------------------------------------------------------------------------------------


@pytest.mark.parametrize('reentrant', [False, True])
def test_set_grad_checkpointing_same_outputs_and_grads(reentrant):
    """Checkpointed (timm's non-reentrant default, and the reentrant kind, which gives gradient to outputs only) and
    plain forward agree, the class evidence's gradient into the templates included."""
    from timm.layers import set_reentrant_ckpt, use_reentrant_ckpt

    model = _create('tm_resnet18_small', num_classes=10, templates_per_class=2).train()
    ckpt = copy.deepcopy(model)
    ckpt.set_grad_checkpointing(True)
    assert ckpt.grad_checkpointing
    x = _x(b=4, size=32)
    target = torch.tensor([0, 1, 2, 3])
    outs = []
    previous = use_reentrant_ckpt()
    set_reentrant_ckpt(reentrant)
    try:
        for m in (model, ckpt):
            out = m(x)
            F.cross_entropy(out, target).backward()
            outs.append(out.detach())
    finally:
        set_reentrant_ckpt(previous)
    torch.testing.assert_close(outs[1], outs[0], rtol=1e-5, atol=1e-5)
    grads = dict(model.named_parameters())
    for name, p in ckpt.named_parameters():
        assert p.grad is not None, name
        torch.testing.assert_close(p.grad, grads[name].grad, rtol=1e-4, atol=1e-5, msg=name)
    # the TM parameters got gradients through the checkpointed path
    for name in ('layer4.2.templates.weight', 'layer4.2.log_temperature', 'layer3.2.embed_scale'):
        assert grads[name].grad.abs().sum() > 0
    # forward_features and forward_intermediates under checkpointing (train mode: the recomputation in backward
    # updates BN running statistics a second time, as in any timm model, so eval outputs would differ)
    torch.testing.assert_close(ckpt.forward_features(x), model.forward_features(x), rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(
        ckpt.forward_intermediates(x)[0], model.forward_intermediates(x)[0], rtol=1e-5, atol=1e-5
    )


def test_group_matcher_layer_decay_puts_tm_blocks_with_their_stage():
    from timm.models import group_parameters
    from timm.optim import param_groups_layer_decay

    model = _create(num_classes=10)
    coarse = group_parameters(model, model.group_matcher(coarse=True), reverse=True)  # name -> group
    for stage in (3, 4):
        group = coarse[f'layer{stage}.2.templates.weight']
        assert group == coarse[f'layer{stage}.0.conv1.weight'] == coarse[f'layer{stage}.1.conv2.weight']
        assert group != coarse[f'layer{7 - stage}.0.conv1.weight']

    groups = param_groups_layer_decay(model, weight_decay=0.05, layer_decay=0.5)
    names = {id(p): n for n, p in model.named_parameters()}
    scale = {names[id(p)]: g['lr_scale'] for g in groups for p in g['params']}
    assert set(scale) == {n for n, _ in model.named_parameters()}
    # fine groups (one per block): each TM block sits after its stage's last residual block, before the next stage
    assert scale['layer3.1.conv1.weight'] < scale['layer3.2.templates.weight'] < scale['layer4.0.conv1.weight']
    assert scale['layer4.1.conv1.weight'] < scale['layer4.2.templates.weight'] <= scale['fc.weight']
    for part in ('templates.weight', 'embed_scale', 'log_temperature', 'evidence_weight'):
        assert scale[f'layer4.2.{part}'] == scale['layer4.2.templates.weight']
    # an optimizer built from them by timm's factory
    from timm.optim import create_optimizer_v2

    opt = create_optimizer_v2(model, 'adamw', lr=1e-3, weight_decay=0.05, layer_decay=0.75)
    assert sum(len(g['params']) for g in opt.param_groups) == len(list(model.parameters()))


# --- export and compilation ---------------------------------------------------------------------------------------


def test_torchscript_same_outputs():
    model = _create(num_classes=10, templates_per_class=2)
    scripted = torch.jit.script(model)
    x = _x()
    with torch.no_grad():
        torch.testing.assert_close(scripted(x), model(x), rtol=1e-5, atol=1e-5)
        torch.testing.assert_close(scripted.forward_features(x), model.forward_features(x), rtol=1e-5, atol=1e-5)
    model.reset_classifier(0)
    scripted = torch.jit.script(model)
    with torch.no_grad():
        torch.testing.assert_close(scripted(x), model(x), rtol=1e-5, atol=1e-5)


def test_fx_feature_extraction():
    from timm.models import FeatureGraphNet, create_feature_extractor, get_graph_node_names

    model = _create(num_classes=10)
    x = _x()
    _, eval_nodes = get_graph_node_names(model)
    assert any(n.startswith('layer4.2.') for n in eval_nodes)  # FX traces into the TM block
    extractor = create_feature_extractor(model, return_nodes={'layer3': 'stage3', 'layer4': 'stage4', 'fc': 'fc'})
    with torch.no_grad():
        out = extractor(x)
        _, intermediates = model.forward_intermediates(x)
    torch.testing.assert_close(out['stage3'], intermediates[3])
    torch.testing.assert_close(out['stage4'], intermediates[4])
    torch.testing.assert_close(out['fc'], model.fc(model.forward_head(intermediates[4], pre_logits=True)))

    graph_net = FeatureGraphNet(model, out_indices=(3, 4))
    with torch.no_grad():
        graph_outs = graph_net(x)
        assert len(graph_outs) == 2
        for a, b in zip(graph_outs, intermediates[3:]):
            torch.testing.assert_close(a, b)


@pytest.mark.parametrize('embedding', ['none', 'tied'])
def test_features_only_fx(embedding):
    """FX feature extraction returns each stage's features, also when its TM block returns its input unchanged."""
    ref = timm.create_model('tm_resnet18', num_classes=10, embedding=embedding).eval()
    if embedding != 'none':
        _nontrivial(ref)
    feat = timm.create_model(
        'tm_resnet18', features_only=True, feature_cls='fx', out_indices=(3, 4), num_classes=10, embedding=embedding
    )
    assert type(feat).__name__ == 'FeatureGraphNet'
    feat.load_state_dict({f'graph_module.{k}': v for k, v in ref.state_dict().items()}, strict=False)
    feat.eval()
    x = _x()
    with torch.no_grad():
        outs = feat(x)
        _, intermediates = ref.forward_intermediates(x, indices=(3, 4))
    assert feat.feature_info.channels() == [256, 512]
    assert len(outs) == len(intermediates) == 2
    for a, b in zip(outs, intermediates):
        torch.testing.assert_close(a, b)


def _compile_check(model: nn.Module, backend: str) -> None:
    torch._dynamo.reset()
    x = _x(size=32)
    compiled = torch.compile(model, backend=backend, fullgraph=True)
    with torch.no_grad():
        torch.testing.assert_close(compiled(x), model(x), rtol=1e-4, atol=1e-4)


def test_torch_compile_graph_capture():
    """Dynamo captures the whole model in one graph (fullgraph=True: no graph break); outputs and gradients match
    eager. (backend='aot_eager': dynamo and AOT autograd without inductor's C++ code generation, see below.)"""
    torch._dynamo.reset()
    model = _create('tm_resnet18_small', num_classes=10, templates_per_class=2, layers=(1, 1, 1, 1)).train()
    compiled = torch.compile(copy.deepcopy(model), backend='aot_eager', fullgraph=True)
    x, target = _x(b=4, size=32), torch.tensor([0, 1, 2, 3])
    out, out_compiled = model(x), compiled(x)
    torch.testing.assert_close(out_compiled, out, rtol=1e-4, atol=1e-4)
    F.cross_entropy(out, target).backward()
    F.cross_entropy(out_compiled, target).backward()
    ref = dict(model.named_parameters())
    for name, p in compiled.named_parameters():
        torch.testing.assert_close(p.grad, ref[name.replace('_orig_mod.', '')].grad, rtol=1e-4, atol=1e-5)


@pytest.mark.inductor
def test_torch_compile_inductor():
    model = _create('tm_resnet18_small', num_classes=10, templates_per_class=2, layers=(1, 1, 1, 1))
    try:
        _compile_check(model, 'inductor')
    except Exception as e:  # no C++ compiler / unsupported platform
        if 'compiler' in str(e).lower() or 'InductorError' in type(e).__name__:
            pytest.skip(f'inductor cannot run here: {e!r:.200}')
        raise


def test_channels_last_same_outputs():
    model = _create(num_classes=10, templates_per_class=2)
    x = _x()
    with torch.no_grad():
        ref = model(x)
        cl = copy.deepcopy(model).to(memory_format=torch.channels_last)
        out = cl(x.contiguous(memory_format=torch.channels_last))
    torch.testing.assert_close(out, ref, rtol=1e-4, atol=1e-4)


@pytest.mark.parametrize('dtype', [torch.bfloat16, torch.float16])
def test_autocast_close_to_fp32(dtype):
    model = _create('tm_resnet18_small', num_classes=10, templates_per_class=2)
    x = _x(b=4, size=32)
    with torch.no_grad():
        ref = model(x)
        with torch.autocast('cpu', dtype=dtype):
            out = model(x)
    assert torch.isfinite(out).all()
    err = (out.float() - ref).abs().max() / ref.abs().max()
    assert err < (0.05 if dtype == torch.bfloat16 else 0.01), f'{dtype}: relative error {err:.4f}'
    assert (out.float().argmax(1) == ref.argmax(1)).float().mean() >= 0.75
    # and a training step under autocast gives finite gradients everywhere
    model.train()
    with torch.autocast('cpu', dtype=dtype):
        loss = F.cross_entropy(model(x), torch.tensor([0, 1, 2, 3]))
    loss.backward()
    for name, p in model.named_parameters():
        assert torch.isfinite(p.grad).all(), name


def _onnx_check(model: nn.Module, path: str, dynamo: bool) -> None:
    ort = pytest.importorskip('onnxruntime')
    pytest.importorskip('onnx')
    x = _x(b=2, size=32)
    kwargs = dict(input_names=['x'], output_names=['logits'])
    if dynamo:
        pytest.importorskip('onnxscript')
        kwargs['dynamic_shapes'] = ({0: torch.export.Dim('batch')},)
    else:
        kwargs['dynamic_axes'] = {'x': {0: 'batch'}, 'logits': {0: 'batch'}}
    with warnings.catch_warnings():
        warnings.simplefilter('ignore')
        torch.onnx.export(model, (x,), path, dynamo=dynamo, **kwargs)
    session = ort.InferenceSession(path, providers=['CPUExecutionProvider'])
    x3 = _x(b=3, size=32)  # another batch size than the one exported with
    with torch.no_grad():
        ref = model(x3)
    out = torch.from_numpy(session.run(None, {'x': x3.numpy()})[0])
    torch.testing.assert_close(out, ref, rtol=1e-4, atol=1e-4)


def test_onnx_export_legacy(tmp_path):
    model = _create('tm_resnet18_small', num_classes=10, templates_per_class=2, layers=(1, 1, 1, 1))
    _onnx_check(model, str(tmp_path / 'model.onnx'), dynamo=False)


def test_onnx_export_dynamo(tmp_path):
    model = _create('tm_resnet18_small', num_classes=10, templates_per_class=2, layers=(1, 1, 1, 1))
    _onnx_check(model, str(tmp_path / 'model.onnx'), dynamo=True)


# --- bad input ----------------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    'kwargs, match',
    [
        (dict(tm_stages=(5,)), 'tm_stages'),
        (dict(tm_stages=(0,)), 'tm_stages'),
        (dict(tm_stages=(4, 4)), 'tm_stages'),
        (dict(templates_per_class=0), 'templates_per_class'),
        (dict(num_classes=-1), 'num_classes'),
        (dict(evidence_pool='mean'), 'evidence_pool'),
        (dict(num_classes=10, template_classes=5), 'template_classes'),
    ],
)
def test_bad_arguments(kwargs, match):
    with pytest.raises(ValueError, match=match):
        timm.create_model('tm_resnet18', **kwargs)


@pytest.mark.parametrize(
    'kwargs, error, match',
    [
        (dict(temperature_init=float('nan')), ValueError, 'temperature_init'),
        (dict(temperature_init=float('inf')), ValueError, 'temperature_init'),
        (dict(temperature_init=0.0), ValueError, 'temperature_init'),
        (dict(evidence_weight_init=float('nan')), ValueError, 'evidence_weight_init'),
        (dict(evidence_weight_init=float('-inf')), ValueError, 'evidence_weight_init'),
        (dict(evidence_weight_init='1'), TypeError, 'evidence_weight_init'),
        (dict(templates_per_class=2.5), TypeError, 'templates_per_class'),
        (dict(templates_per_class=True), TypeError, 'templates_per_class'),
        (dict(tm_stages=3), TypeError, 'tm_stages'),
        (dict(tm_stages='34'), TypeError, 'tm_stages'),
        (dict(tm_stages=(3.0, 4)), TypeError, 'tm_stages'),
        (dict(num_classes=10.0), TypeError, 'num_classes'),
        (dict(num_classes=0, template_classes=2.5), TypeError, 'template_classes'),
    ],
)
def test_non_finite_and_wrong_type_arguments_name_the_parameter(kwargs, error, match):
    """Refused when the model is built, in one line: a NaN init would give NaN outputs, a float count a crash."""
    with pytest.raises(error, match=match) as e:
        timm.create_model('tm_resnet18', **kwargs)
    assert '\n' not in str(e.value)


def test_bad_reset_classifier():
    model = timm.create_model('tm_resnet18', num_classes=10)
    with pytest.raises(ValueError, match='num_classes'):
        model.reset_classifier(-1)


@pytest.mark.parametrize('shape', [(2, 1, IMG, IMG), (2, 4, IMG, IMG), (3, IMG, IMG), (1, 2, 3, IMG, IMG)])
def test_bad_input_shape(shape):
    model = _create(num_classes=10)
    for fn in (model, model.forward_features, model.forward_features_with_evidence):
        with pytest.raises(ValueError, match=r'\(B, 3, H, W\).*in_chans'):
            fn(torch.randn(shape))


@pytest.mark.parametrize('train', [False, True])
def test_empty_batch(train):
    model = _create('tm_resnet18_small', num_classes=10).train(train)
    x = torch.randn(0, 3, 32, 32)
    if train:
        out = model(x)
        out.sum().backward()
    else:
        with torch.no_grad():
            out = model(x)
    assert out.shape == (0, 10)
    model.reset_classifier(0)
    assert model(x).shape == (0, 512)


def _load_paths(source: torch.nn.Module, tmp_path, **model_kwargs):
    """Every way a train.py run or a user loads weights into a tm model, each a function of no arguments that loads
    ``source``'s weights (saved as train.py saves them) into a model made with ``model_kwargs``."""
    import safetensors.torch
    from timm.models import load_checkpoint, resume_checkpoint

    path = tmp_path / 'checkpoint.pth.tar'
    state = source.state_dict()
    torch.save({'state_dict': state, 'state_dict_ema': state, 'epoch': 3, 'arch': 'tm_resnet18_small'}, path)
    weights = tmp_path / 'weights.safetensors'
    safetensors.torch.save_file(state, str(weights))
    models = []

    def model():
        models.append(timm.create_model('tm_resnet18_small', **model_kwargs))
        return models[-1]

    return models, {
        'load_state_dict': lambda: model().load_state_dict(state),
        'train.py --initial-checkpoint': lambda: load_checkpoint(model(), str(path)),
        'train.py --resume': lambda: resume_checkpoint(model(), str(path)),
        'the EMA weights': lambda: load_checkpoint(model(), str(path), use_ema=True),
        "timm's pretrained loader": lambda: timm.create_model(
            'tm_resnet18_small', pretrained=True, pretrained_cfg_overlay=dict(file=str(weights)), **model_kwargs
        ),
    }


@pytest.mark.parametrize(
    'source_kwargs, model_kwargs, needle',
    [
        # the same tensors with another meaning: they loaded, and the model predicted otherwise (issue 17)
        (dict(num_classes=10, evidence_mode='logits'), dict(num_classes=10), "evidence_mode='logits'"),
        (dict(num_classes=10, evidence_pool='max', templates_per_class=2),
         dict(num_classes=10, templates_per_class=2), "evidence_pool='max'"),
        # an embedding model of 10 classes x 1 template and one of 5 x 2 hold the same 10 templates per block
        (dict(num_classes=0, template_classes=10), dict(num_classes=0, template_classes=5, templates_per_class=2),
         'templates_per_class=1, num_classes=10'),
        # other keys: named as the option that made them, not as a list of keys
        (dict(num_classes=10, embedding='tied'), dict(num_classes=10, embedding='none'),
         "another embedding?): create the model with the TM options (e.g. embedding) that the checkpoint was made "
         "with; this model has embedding='none'"),
        (dict(num_classes=10, tm_stages=(4,)), dict(num_classes=10), 'create the model with tm_stages=(4,)'),
    ],
)  # fmt: skip
def test_checkpoint_of_other_tm_options_is_refused_on_every_load_path(tmp_path, source_kwargs, model_kwargs, needle):
    source = timm.create_model('tm_resnet18_small', **source_kwargs)
    models, paths = _load_paths(source, tmp_path, **model_kwargs)
    for how, load in paths.items():
        with pytest.raises(RuntimeError) as e:
            load()
        message = str(e.value)
        assert needle in message and 'nothing was loaded' in message and '\n' not in message, (how, message)
    # the models it was loading into are untouched, the backbone (loaded before the TM blocks) included
    assert len(models) == 4 and all(not torch.equal(m.conv1.weight, source.conv1.weight) for m in models)
    timm.create_model('tm_resnet18_small', **source_kwargs).load_state_dict(source.state_dict())  # its own load


def test_checkpoint_saved_before_the_configuration_record_loads_as_before(tmp_path):
    source = timm.create_model('tm_resnet18_small', num_classes=10)
    older = {k: v for k, v in source.state_dict().items() if not k.endswith('.tm_config')}
    model = timm.create_model('tm_resnet18_small', num_classes=10)
    model.load_state_dict(older)  # strict: the record is optional
    assert all(torch.equal(model.state_dict()[k], v) for k, v in older.items())


def test_import_survives_a_timm_without_one_of_the_resnet_tags():
    """A timm that drops a ResNet weights tag (here resnet26.bt_in1k) costs that tm_* tag only, with a warning."""
    import subprocess
    import sys

    code = (
        'import warnings, timm.models\n'
        'found = timm.models.get_pretrained_cfg\n'
        "timm.models.get_pretrained_cfg = lambda name, *a, **k: None if name == 'resnet26.bt_in1k' else found(name)\n"
        'with warnings.catch_warnings(record=True) as caught:\n'
        "    warnings.simplefilter('always')\n"
        '    import timm_tm, timm\n'
        'print([str(w.message) for w in caught if "has no" in str(w.message)])\n'
        "print(timm.list_pretrained('tm_resnet26*'), 'tm_resnet18.a1_in1k' in timm.list_pretrained('tm_*'))\n"
        "print(type(timm.create_model('tm_resnet26', num_classes=3)).__name__)\n"
    )
    result = subprocess.run([sys.executable, '-c', code], capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr
    lines = result.stdout.splitlines()
    assert 'resnet26.bt_in1k weights: tm_resnet26.bt_in1k is left out' in lines[0]
    assert lines[1] == '[] True'
    assert lines[2] == 'TemplateMatchingResNet'
