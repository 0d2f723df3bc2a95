"""The core promises, quickly: the family registers, runs, and starts as timm's ResNet."""

import timm
import torch

from timm_tm import convert_resnet_state_dict


def test_family_is_registered():
    names = timm.list_models('tm_*')
    for depth in (18, 26, 34, 50, 101, 152):
        assert f'tm_resnet{depth}' in names


def test_tm_resnet18_equals_resnet18_with_its_weights():
    # zero_init_last=False: a fresh ResNet's residual branches end in a zero BN, which would hide their weights
    resnet = timm.create_model('resnet18', zero_init_last=False).eval()
    tm = timm.create_model('tm_resnet18', embedding='tied', evidence_mode='logits').eval()
    tm.load_state_dict(convert_resnet_state_dict(resnet.state_dict(), tm))
    x = torch.randn(2, 3, 96, 96)
    with torch.no_grad():
        torch.testing.assert_close(tm(x), resnet(x), rtol=1e-5, atol=1e-5)
