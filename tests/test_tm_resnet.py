"""The tm_resnet family table (timm_tm/models/tm_resnet.py): every tm_X is timm's X plus TM blocks placed by the cost
rule, with X's pretrained tags, and weights of another member of the family are refused in one line.

Architectures are compared and counted on the meta device (no weights allocated), so the whole family is cheap;
tests/test_exactness.py runs each model against its base with real (random) weights.
"""

import copy
import logging

import pytest
import safetensors.torch
import timm
import torch
from timm.models import get_pretrained_cfg
from torch.utils.flop_counter import FlopCounterMode

from timm_tm import convert_resnet_state_dict
from timm_tm.models.tm_resnet import (
    RESNET_TAGS,
    TM_ARCHS,
    TM_MACS_BUDGET,
    choose_tm_stages,
    tm_baseline,
    tm_block_macs,
    tm_stage_macs,
)

# the variants issue 18 asks for, each with its base in timm
VARIANTS = (
    'tm_resnet18d',
    'tm_resnet34d',
    'tm_resnet50d',
    'tm_resnet101d',
    'tm_resnext50_32x4d',
    'tm_seresnext50_32x4d',
    'tm_ecaresnet50d',
    'tm_wide_resnet50_2',
)
FAMILY = [name for name in TM_ARCHS if not tm_baseline(name)[1]]  # every tm_X whose base is timm's X


def _macs(model: torch.nn.Module, img_size: int = 224) -> float:
    """Multiply-adds of one forward pass at batch 1 (torch's FLOP counter: 2 per multiply-add), meta tensors."""
    counter = FlopCounterMode(display=False)
    with counter, torch.no_grad():
        model.eval()(torch.empty(1, 3, img_size, img_size, device='meta'))
    return counter.get_total_flops() / 2


def _meta(name: str, **kwargs) -> torch.nn.Module:
    return timm.create_model(name, device='meta', **kwargs)


def test_the_variants_and_their_tags_are_registered():
    names = set(timm.list_models('tm_*'))
    pretrained = set(timm.list_models('tm_*', pretrained=True))
    for name in VARIANTS:
        assert name in names
        tags = RESNET_TAGS[name]
        assert tags and {f'{name}.{tag}' for tag in tags} <= pretrained
        assert timm.create_model(name, device='meta').pretrained_cfg['tag'] == tags[0]  # the first is the default


@pytest.mark.parametrize('name', FAMILY)
def test_every_tag_is_its_base_weights_with_the_base_preprocessing(name):
    base = tm_baseline(name)[0]
    for tag in RESNET_TAGS[name]:
        ours, theirs = get_pretrained_cfg(f'{name}.{tag}'), get_pretrained_cfg(f'{base}.{tag}')
        assert ours.hf_hub_id == theirs.hf_hub_id == f'timm/{base}.{tag}'
        fields = ('input_size', 'test_input_size', 'pool_size', 'crop_pct', 'test_crop_pct', 'interpolation')
        for field in (*fields, 'mean', 'std', 'first_conv', 'license', 'num_classes'):
            assert getattr(ours, field) == getattr(theirs, field), (name, tag, field)
        assert f'timm {base}.{tag} weights' in ours.notes[0]


@pytest.mark.parametrize('name', FAMILY)
def test_the_backbone_is_the_base_architecture(name):
    """tm_X holds exactly X's modules and parameters (meta device), plus its TM blocks where the table says."""
    base, _ = tm_baseline(name)
    tm, ref = _meta(name), _meta(base)
    blocks = tuple(tm.tm_blocks())
    tm_prefixes = tuple(f'{n}.' for n in blocks)
    assert tm.tm_stages == TM_ARCHS[name]['tm_stages']
    assert sorted(tm.tm_blocks()) == [f'layer{s}.{TM_ARCHS[name]["layers"][s - 1]}' for s in tm.tm_stages]
    backbone = {k: v.shape for k, v in tm.state_dict().items() if not k.startswith(tm_prefixes)}
    assert backbone == {k: v.shape for k, v in ref.state_dict().items()}
    containers = ('', 'layer1', 'layer2', 'layer3', 'layer4')  # the model and its stages are TM's own classes
    tm_modules = {
        n: type(m) for n, m in tm.named_modules() if n not in containers + blocks and not n.startswith(tm_prefixes)
    }
    ref_modules = {n: type(m) for n, m in ref.named_modules() if n not in containers}
    assert tm_modules == ref_modules  # the same layers, parameter-free ones too (average-pool downsampling)


@pytest.mark.parametrize('name', FAMILY)
def test_placement_follows_the_cost_rule(name):
    """The TM stages of each model are what the rule gives for its base: the blocks with an embedding (match + embed)
    at 1000 classes and the base's input size within TM_MACS_BUDGET of the base's MACs, stages 3 and 4 where that
    holds."""
    base = _meta(tm_baseline(name)[0])
    img_size = base.pretrained_cfg['input_size'][-1]
    stage_macs = tm_stage_macs(base.feature_info, img_size=img_size, num_templates=1000, embedding=True)
    base_macs = _macs(base, img_size)
    stages = choose_tm_stages(base_macs, stage_macs)
    assert TM_ARCHS[name]['tm_stages'] == stages, f'{name}: the rule gives tm_stages={stages}'
    assert sum(stage_macs[s] for s in stages) <= TM_MACS_BUDGET * base_macs


def test_tm_block_macs_are_what_the_blocks_cost():
    """The rule's cost model against a count of the model itself: the match alone (the default block) and the match
    plus the 'tied' embedding are within 2% of C * K * H * W and twice that (the rest: elementwise work)."""
    base_macs = _macs(_meta('resnet50d'))
    for embedding, factor in (('none', 1), ('tied', 2)):
        tm = _meta('tm_resnet50d', tm_stages=(3, 4), embedding=embedding)
        expected = 1024 * 1000 * 14 * 14 * factor + 2048 * 1000 * 7 * 7 * factor
        assert sum(tm_stage_macs(tm.feature_info, 224, 1000, embedding != 'none')[s] for s in (3, 4)) == expected
        assert _macs(tm) - base_macs == pytest.approx(expected, rel=0.02)


def test_choose_tm_stages_prefers_stages_3_and_4_within_the_budget():
    stage_macs = {1: 0, 2: 0, 3: tm_block_macs(1024, 14, 14, 1000), 4: tm_block_macs(2048, 7, 7, 1000)}
    both = stage_macs[3] + stage_macs[4]
    assert choose_tm_stages(both / TM_MACS_BUDGET, stage_macs) == (3, 4)
    assert choose_tm_stages(both / TM_MACS_BUDGET - 1, stage_macs) == (4,)
    assert choose_tm_stages(1.0, stage_macs) == (4,)  # none fits: the cheapest


def test_tm_baseline():
    assert tm_baseline('tm_resnet50d') == ('resnet50d', {})
    assert tm_baseline('tm_seresnext50_32x4d.racm_in1k') == ('seresnext50_32x4d', {})
    assert tm_baseline('tm_resnet18_small') == ('tm_resnet18_small', {'tm_stages': ()})
    with pytest.raises(ValueError, match="'resnet50' is not a tm_resnet model"):
        tm_baseline('resnet50')


def test_every_family_member_has_its_own_backbone():
    """The refusal below tells architectures apart by their backbone's shapes: no two members may share them."""
    shapes = [tuple((k, v.shape) for k, v in _meta(tm_baseline(n)[0]).state_dict().items()) for n in FAMILY]
    assert len(set(shapes)) == len(shapes)


# --- weights of another member of the family ------------------------------------------------------------------------


@pytest.mark.parametrize(
    'source, target, differs',
    [
        ('resnet50', 'tm_resnet50d', "stem_width 64 vs 32, stem_type '' vs 'deep', avg_down False vs True"),
        ('tm_resnet50', 'tm_resnet50d', "stem_width 64 vs 32, stem_type '' vs 'deep', avg_down False vs True"),
        ('resnet50d', 'tm_ecaresnet50d', "block_args None vs {'attn_layer': 'eca'}"),
        ('tm_resnext50_32x4d', 'tm_seresnext50_32x4d', "block_args None vs {'attn_layer': 'se'}"),
        ('resnet50', 'tm_wide_resnet50_2', 'base_width 64 vs 128'),
        ('tm_resnet101d', 'tm_resnet50d', 'layers (3, 4, 23, 3) vs (3, 4, 6, 3)'),
    ],
)
def test_another_members_weights_are_refused_in_one_line_naming_what_differs(source, target, differs):
    state_dict = _meta(source).state_dict()  # refused on shapes alone, before any tensor is read
    their_arch = source if source.startswith('tm_') else f'tm_{source}'
    model = _meta(target)
    for load in (model.load_state_dict, lambda sd: convert_resnet_state_dict(sd, model)):
        with pytest.raises(RuntimeError) as info:
            load(state_dict)
        message = str(info.value)
        assert len(message.splitlines()) == 1, message
        base = their_arch[len('tm_') :]
        assert f"its backbone is {base}'s" in message and f'({target})' in message, message
        assert f'{differs} (checkpoint vs model); create {their_arch} to load it' in message, message
        assert ('(a tm_' in message) == source.startswith('tm_'), message


def test_another_members_weights_are_refused_by_every_loader(tmp_path):
    """timm's pretrained loader (a tag, pretrained_cfg_overlay file=...) and train.py's --initial-checkpoint
    (timm's load_checkpoint) refuse resnet18's weights for tm_resnet18d too, and nothing is loaded."""
    path = tmp_path / 'resnet18.safetensors'
    safetensors.torch.save_file(timm.create_model('resnet18').state_dict(), str(path))
    with pytest.raises(RuntimeError, match="its backbone is resnet18's, this model's is resnet18d's"):
        timm.create_model('tm_resnet18d', pretrained=True, pretrained_cfg_overlay=dict(file=str(path)))
    model = timm.create_model('tm_resnet18d')
    before = copy.deepcopy(model.state_dict())
    with pytest.raises(RuntimeError, match='create tm_resnet18 to load it'):
        timm.models.load_checkpoint(model, str(path))
    assert all(torch.equal(v, before[k]) for k, v in model.state_dict().items())


def test_weights_of_the_same_member_still_load():
    """The check passes the model's own architecture: the base's weights and a tm checkpoint (another class count
    too) load, with the TM blocks at identity for the base's."""
    model = timm.create_model('tm_resnet18d', num_classes=10, embedding='tied')
    model.load_state_dict(timm.create_model('resnet18d', num_classes=10).state_dict())
    model.load_state_dict(timm.create_model('tm_resnet18d', num_classes=10, embedding='tied').state_dict())
    other_classes = timm.create_model('tm_resnet18d', num_classes=3, embedding='tied').state_dict()
    model.load_state_dict(convert_resnet_state_dict(other_classes, model, new_head=True))


def test_tm_weights_without_their_config_record_are_converted_with_a_warning(caplog):
    # older TM checkpoints lack the tm_config record: the conversion (timm's pretrained loader, train.py
    # --pretrained-path) keeps them without one, so the block says what it assumes instead of taking the model's
    source = timm.create_model('tm_resnet18_small', num_classes=10, evidence_mode='logits').state_dict()
    older = {k: v for k, v in source.items() if not k.endswith('tm_config')}
    model = timm.create_model('tm_resnet18_small', num_classes=10)
    with caplog.at_level(logging.WARNING, logger='timm_tm.layers'):
        model.load_state_dict(convert_resnet_state_dict(older, model))
    assert caplog.text.count('no tm_config record') == len(model.tm_blocks())
    caplog.clear()
    with caplog.at_level(logging.WARNING, logger='timm_tm.layers'):  # a ResNet's weights get the model's record
        plain = timm.create_model('tm_resnet18_small', num_classes=10, tm_stages=()).state_dict()
        model.load_state_dict(convert_resnet_state_dict(plain, model))
    assert 'tm_config' not in caplog.text
