"""timm-tm: the template-matching ResNets of arXiv:2210.00992 for timm.

``import timm_tm`` registers the ``tm_*`` models with timm: ``timm.create_model('tm_resnet50')``.
"""

from timm_tm.layers import TemplateMatching
from timm_tm.models import TemplateMatchingResNet, convert_resnet_state_dict

__version__ = '0.1.0'

__all__ = ['TemplateMatching', 'TemplateMatchingResNet', 'convert_resnet_state_dict', '__version__']
