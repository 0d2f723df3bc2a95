"""timm-tm: the template-matching ResNets of arXiv:2210.00992 for timm.

``import timm_tm`` registers the ``tm_*`` models with timm: ``timm.create_model('tm_resnet50')``.

Where each concern lives:

* ``layers``: the TemplateMatching block (knows nothing of ResNet).
* ``models.tm_resnet``: the tm_resnet family, its one forward path, ResNet weight conversion, cfgs and entry points.
* ``pretrained``: TM-trained weight tags (``TM_WEIGHTS``) and the checks before timm loads a weights file.
* ``checkpoints``: reading timm train.py checkpoints (shared by export and visualize).
* ``export``, ``push``, ``model_card``: ``timm-tm export`` / ``timm-tm push`` and the card they write.
* ``compare``, ``bench``, ``visualize`` (with ``class_maps``), ``scripts``: the other ``timm-tm`` subcommands.
* ``cli``: the ``timm-tm`` entry point and what every subcommand shares; ``files``: atomic writes.
* ``data``, ``profiling``: packaged datasets; params / GMACs counts.
"""

from timm_tm.layers import TemplateMatching
from timm_tm.models import TemplateMatchingResNet, convert_resnet_state_dict

__version__ = '0.1.0'

__all__ = ['TemplateMatching', 'TemplateMatchingResNet', 'convert_resnet_state_dict', '__version__']
