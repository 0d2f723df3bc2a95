"""The tm_* model families; importing this registers them with timm."""

from timm_tm.models.tm_resnet import TemplateMatchingResNet, TemplateMatchingStage, convert_resnet_state_dict

__all__ = ['TemplateMatchingResNet', 'TemplateMatchingStage', 'convert_resnet_state_dict']
