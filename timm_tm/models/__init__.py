"""The tm_* model families; importing this registers them with timm."""

from timm_tm.models.tm_attach import (
    TemplateMatchingModel,
    base_model_name,
    convert_state_dict,
    register_tm_model,
    with_template_matching,
)
from timm_tm.models.tm_resnet import TemplateMatchingResNet, TemplateMatchingStage, convert_resnet_state_dict

__all__ = [
    'TemplateMatchingResNet',
    'TemplateMatchingStage',
    'convert_resnet_state_dict',
    'TemplateMatchingModel',
    'with_template_matching',
    'register_tm_model',
    'convert_state_dict',
    'base_model_name',
]
