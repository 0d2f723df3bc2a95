from timm_tm.models.tm_resnet import *  # noqa: F403  (registers the tm_* models with timm)
from timm_tm.models.tm_resnet import TemplateMatchingResNet, checkpoint_filter_fn, convert_resnet_state_dict

__all__ = ['TemplateMatchingResNet', 'checkpoint_filter_fn', 'convert_resnet_state_dict']
