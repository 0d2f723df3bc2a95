"""timm-tm: the template-matching ResNets of arXiv:2210.00992 for timm.

``import timm_tm`` registers the ``tm_*`` models with timm: ``timm.create_model('tm_resnet50')``.

Where each concern lives:

* ``layers``: the TemplateMatching block (knows nothing of ResNet).
* ``models.tm_resnet``: the tm_resnet family, its one forward path, ResNet weight conversion, cfgs and entry points.
* ``models.tm_attach``: TM blocks after the feature_info stages of any other timm CNN (``with_template_matching``,
  ``register_tm_model``), its weight conversion, and the tm_convnext_tiny / tm_regnety_016 / tm_efficientnet_b0 entry
  points.
* ``pretrained``: TM-trained weight tags (``TM_WEIGHTS``) and the checks before timm loads a weights file.
* ``checkpoints``: reading timm train.py checkpoints (shared by export and visualize).
* ``export``, ``push``, ``model_card``: ``timm-tm export`` / ``timm-tm push`` and the card they write.
* ``compare``, ``bench``, ``visualize`` (with ``class_maps``), ``scripts``: the other ``timm-tm`` subcommands.
* ``cli``: the ``timm-tm`` entry point and what every subcommand shares; ``files``: atomic writes.
* ``data``, ``profiling``: packaged datasets; params / GMACs counts.
"""

from timm_tm.layers import TemplateMatching
from timm_tm.models import (
    TemplateMatchingModel,
    TemplateMatchingResNet,
    convert_resnet_state_dict,
    register_tm_model,
    with_template_matching,
)

__version__ = '0.1.0'

__all__ = [
    'TemplateMatching',
    'TemplateMatchingResNet',
    'convert_resnet_state_dict',
    'TemplateMatchingModel',
    'with_template_matching',
    'register_tm_model',
    '__version__',
]
