"""Model cards for exported tm_* weights, in the format of timm's Hugging Face Hub cards.

A card template is Markdown with ``string.Template`` placeholders (``${params_m}``, ``${usage}``, ...; see
``CARD_FIELDS``). ``timm-tm export`` fills them with numbers measured on the exported weights, so no number in a
card is typed by hand. Templates are looked up in this order:

1. ``--card FILE`` given to ``timm-tm export``;
2. ``model_cards/<name>.md`` of a source checkout (one per model the project publishes, e.g.
   ``model_cards/tm_resnet50.tm_in1k.md``), or of the current directory;
3. ``DEFAULT_CARD`` below, packaged with timm_tm, so that export works from an installed wheel for any model.

The shared sections (``${usage}``: classification, feature maps, image embeddings; ``${citation}``) live here once
and are substituted into every template, as do the sentences the export writes from the run (:func:`training_text`,
:func:`tm_block_text`, :func:`tm_details`, :func:`metrics_text`).
"""

import re
import string
from pathlib import Path
from typing import Any, Dict, List, Optional, Tuple

import torch.nn as nn
from timm.models import get_pretrained_cfg

from timm_tm.models import base_model_name
from timm_tm.models.tm_resnet import TM_ARCHS, tm_baseline

__all__ = [
    'CARD_FIELDS',
    'DEFAULT_CARD',
    'USAGE',
    'CITATION',
    'find_card_template',
    'render_card',
    'training_text',
    'tm_block_text',
    'base_model_text',
    'initial_weights',
    'tm_details',
    'metrics_text',
]

# name -> what the export fills in
CARD_FIELDS: Dict[str, str] = {
    'model_name': 'name of the weights, e.g. tm_resnet18_small.mnist',
    'repo_id': 'Hub repo the card is written for, e.g. timm-tm/tm_resnet18_small.mnist',
    'architecture': 'timm architecture, e.g. tm_resnet18_small',
    'license': 'license id for the front matter',
    'datasets_yaml': 'front matter list of datasets ("- name" lines)',
    'dataset': 'dataset the weights were trained on',
    'description': 'one paragraph on what the weights are',
    'num_classes': 'classes of the head (and of the templates)',
    'params_m': 'parameters, millions',
    'gmacs': 'GMACs at image_size (fvcore, as timm benchmark.py counts them)',
    'activations_m': 'activations, millions, at image_size',
    'image_size': 'input size the numbers are measured at, e.g. "32 x 32"',
    'tm_block': 'what the exported TM blocks compute, in words (embedding, how the evidence reaches the logits)',
    'base_model': "the TM-free network the architecture adds its TM blocks to, e.g. timm's `convnext_tiny`",
    'initial_weights': 'what the run started from: timm weights (e.g. `timm/resnet50d.ra2_in1k`), a file, or none',
    'base_model_yaml': 'front matter line `base_model: ORG/NAME` when the run started from Hub weights, else empty',
    'tm_details': 'TM block placement, templates per class, classes',
    'training': 'recipe read from the checkpoint (epochs, optimizer, lr, batch size, EMA)',
    'metrics': 'Markdown table of top-1 / top-5 from the run summary.csv, or a sentence saying none were given',
    'weights_sha256': 'SHA-256 of model.safetensors',
    'timm_version': 'timm version used for export',
    'timm_tm_version': 'timm-tm version used for export',
    'usage': 'the Model Usage snippets (rendered from USAGE)',
    'citation': 'the Citation block (CITATION)',
}

USAGE = """\
Install timm-tm from its repository (`pip install .` in a clone; it brings timm); `import timm_tm` registers the
`tm_*` architectures with timm.

### Image Classification
```python
from urllib.request import urlopen

import timm
import timm_tm  # noqa: F401  (registers the tm_* architectures)
import torch
from PIL import Image

img = Image.open(urlopen(
    'https://huggingface.co/datasets/huggingface/documentation-images/resolve/main/beignets-task-guide.png'
)).convert('RGB')

model = timm.create_model('hf-hub:${repo_id}', pretrained=True)
model = model.eval()

# get model specific transforms (normalization, resize)
data_config = timm.data.resolve_model_data_config(model)
transforms = timm.data.create_transform(**data_config, is_training=False)

with torch.no_grad():
    output = model(transforms(img).unsqueeze(0))  # unsqueeze single image into batch of 1

top_probabilities, top_class_indices = torch.topk(output.softmax(dim=1) * 100, k=min(5, output.shape[1]))
label_names = model.pretrained_cfg.get('label_names')  # class names, when the export knew them
for p, i in zip(top_probabilities[0].tolist(), top_class_indices[0].tolist()):
    print(f'{label_names[i] if label_names else i}: {p:.1f}%')
```

### Feature Map Extraction
```python
from urllib.request import urlopen

import timm
import timm_tm  # noqa: F401
import torch
from PIL import Image

img = Image.open(urlopen(
    'https://huggingface.co/datasets/huggingface/documentation-images/resolve/main/beignets-task-guide.png'
)).convert('RGB')

model = timm.create_model('hf-hub:${repo_id}', pretrained=True, features_only=True)
model = model.eval()

data_config = timm.data.resolve_model_data_config(model)
transforms = timm.data.create_transform(**data_config, is_training=False)

with torch.no_grad():
    output = model(transforms(img).unsqueeze(0))  # one feature map per stage, TM blocks included

for o in output:
    print(o.shape)  # B x C x H x W per stage
```

### Image Embeddings
```python
from urllib.request import urlopen

import timm
import timm_tm  # noqa: F401
import torch
from PIL import Image

img = Image.open(urlopen(
    'https://huggingface.co/datasets/huggingface/documentation-images/resolve/main/beignets-task-guide.png'
)).convert('RGB')

model = timm.create_model('hf-hub:${repo_id}', pretrained=True, num_classes=0)  # remove the classifier
model = model.eval()  # the TM blocks keep their trained templates and still embed

data_config = timm.data.resolve_model_data_config(model)
transforms = timm.data.create_transform(**data_config, is_training=False)

with torch.no_grad():
    output = model(transforms(img).unsqueeze(0))  # (batch_size, num_features) shaped tensor
    # or equivalently (without needing to set num_classes=0)
    output = model.forward_features(transforms(img).unsqueeze(0))  # (1, num_features, H, W)
    output = model.forward_head(output, pre_logits=True)  # (1, num_features)
print(output.shape)
```"""

CITATION = """\
```bibtex
@inproceedings{gorgun2022template,
  title     = {Feature Embedding by Template Matching as a ResNet Block},
  author    = {Gorgun, Ada and Gurbuz, Yeti Z. and Alatan, A. Aydin},
  booktitle = {British Machine Vision Conference (BMVC)},
  year      = {2022},
  eprint    = {2210.00992},
  archivePrefix = {arXiv},
  url       = {https://arxiv.org/abs/2210.00992}
}
```
```bibtex
@inproceedings{he2016deep,
  title     = {Deep Residual Learning for Image Recognition},
  author    = {He, Kaiming and Zhang, Xiangyu and Ren, Shaoqing and Sun, Jian},
  booktitle = {Proceedings of the IEEE Conference on Computer Vision and Pattern Recognition (CVPR)},
  pages     = {770--778},
  year      = {2016}
}
```
```bibtex
@misc{rw2019timm,
  author    = {Ross Wightman},
  title     = {PyTorch Image Models},
  year      = {2019},
  publisher = {GitHub},
  journal   = {GitHub repository},
  doi       = {10.5281/zenodo.4414861},
  howpublished = {\\url{https://github.com/huggingface/pytorch-image-models}}
}
```"""

DEFAULT_CARD = """\
---
tags:
- image-classification
- timm
- template-matching
library_name: timm
license: ${license}
datasets:
${datasets_yaml}
${base_model_yaml}
---
# Model card for ${model_name}

${description}

A `${architecture}`: a timm CNN (the base model below) with template-matching (TM) blocks ("Feature Embedding by
Template Matching as a ResNet Block", BMVC 2022). ${tm_block}

## Model Details
- **Model Type:** Image classification / feature backbone
- **Model Stats:**
  - Params (M): ${params_m}
  - GMACs: ${gmacs}
  - Activations (M): ${activations_m}
  - Image size: ${image_size}
- **Base model:** ${base_model}
- **Template matching:** ${tm_details}
- **Classes:** ${num_classes}
- **Dataset:** ${dataset}
- **Initial weights:** ${initial_weights}
- **Training:** ${training}
- **Papers:**
  - Feature Embedding by Template Matching as a ResNet Block: https://arxiv.org/abs/2210.00992
  - Deep Residual Learning for Image Recognition: https://arxiv.org/abs/1512.03385
- **Original:** https://github.com/huggingface/pytorch-image-models (timm ${timm_version}), exported by
  timm-tm ${timm_tm_version}
- **Weights:** `model.safetensors`, SHA-256 `${weights_sha256}`

## Model Usage
${usage}

## Model Comparison
${metrics}

## Citation
${citation}
"""

_PLACEHOLDER = re.compile(r'\$\{(\w+)\}|\$(\w+)')
# fields pasted inside the snippets' Python string literals (and the front matter): a quote, backslash, backtick or
# any white space would end the literal and let the rest run as code in a reader's session
_CODE_FIELDS = ('repo_id', 'model_name', 'architecture')
_UNSAFE_IN_CODE = re.compile(r'[\'"\\`\s]')


def _candidate_dirs() -> List[Path]:
    dirs = [Path(__file__).resolve().parents[1] / 'model_cards', Path.cwd() / 'model_cards']
    return [d for i, d in enumerate(dirs) if d.is_dir() and d not in dirs[:i]]


def find_card_template(name: str, card: Optional[str] = None) -> Optional[Path]:
    """The template file for weights ``name`` (``--card``, else ``model_cards/<name>.md``); None: the default."""
    if card:
        path = Path(card)
        if not path.is_file():
            raise FileNotFoundError(f'--card: model card template not found: {path}')
        return path
    for d in _candidate_dirs():
        if (d / f'{name}.md').is_file():
            return d / f'{name}.md'
    return None


def render_card(fields: Dict[str, str], template: Optional[str] = None, source: str = 'default card') -> str:
    """``template`` (default: ``DEFAULT_CARD``) with every ``${field}`` filled; ``usage``/``citation`` added here.

    Raises ``ValueError`` naming ``source`` and the placeholders that have no value, so a typo in a template fails
    the export instead of publishing a card with a hole in it, and for a ``repo_id`` / ``model_name`` /
    ``architecture`` that would break out of the snippets' string literals.
    """
    template = DEFAULT_CARD if template is None else template
    values = dict(fields)
    for key in _CODE_FIELDS:
        if key in values and _UNSAFE_IN_CODE.search(str(values[key])):
            raise ValueError(f'{source}: {key} {values[key]!r} cannot go into the code snippets (quote or space)')
    values.setdefault('usage', string.Template(USAGE).substitute(values))
    values.setdefault('citation', CITATION)
    used = {a or b for a, b in _PLACEHOLDER.findall(template)}
    unknown = sorted(used - set(values))
    if unknown:
        raise ValueError(f'{source}: no value for placeholder(s) {", ".join("${" + u + "}" for u in unknown)}')
    return string.Template(template).substitute(values)


def training_text(args: Dict[str, Any], epoch: Optional[int], use_ema: bool) -> str:
    """The recipe train.py recorded (``args``), in one line; ``epoch``: the epoch the weights are from."""
    if not args:
        return 'not recorded in the checkpoint (a bare state_dict)'
    parts = []
    if args.get('epochs') is not None:
        epochs = args['epochs']
        of_epoch = f' (weights of epoch {epoch})' if epoch is not None else ''
        parts.append(f'{epochs} epoch{"s" if epochs != 1 else ""}{of_epoch}')
    if args.get('opt'):
        parts.append(f'optimizer {args["opt"]}, lr {args.get("lr")}, weight decay {args.get("weight_decay")}')
    if args.get('sched'):
        parts.append(f'{args["sched"]} schedule')
    if args.get('batch_size'):
        parts.append(f'batch size {args["batch_size"]}')
    aug = [f'{k} {args[k]}' for k in ('mixup', 'cutmix', 'smoothing', 'aa') if args.get(k)]
    if aug:
        parts.append(', '.join(aug))
    if args.get('amp'):
        parts.append(f'AMP ({args.get("amp_dtype", "float16")})')
    parts.append('EMA weights' if use_ema else 'model weights (not EMA)')
    return 'timm train.py: ' + '; '.join(parts)


# what each embedding adds to a region's features, and how the class evidence reaches the logits, in words
_EMBEDDING_TEXT = {
    'none': 'adds nothing to the features (the evidence-only form: the templates learn from the labels alone)',
    'tied': 'adds to every region the directions of the templates it matches (a softmax over the templates, scaled '
    'per channel; residual)',
    'argmax': 'adds to every region the direction of the one template it matches best (scaled per channel; residual)',
    'templates': 'keeps the templates a region matches better than usual (BatchNorm + ReLU over the scores) and embeds '
    'them back into the features (1x1 conv, residual)',
    'classes': 'adds one learned vector per class, weighted by how well the region matches each class (a softmax '
    'over the classes; residual)',
}
_EVIDENCE_TEXT = {
    'gradient': "Each class's matching score, averaged over the regions, reaches the logits as gradient only: the "
    "labels train the templates, and the predictions are the linear head's.",
    'logits': "Each class's matching score, averaged over the regions and weighted, is added to the logits.",
}


def tm_block_text(model: nn.Module) -> str:
    """What ``model``'s TM blocks compute, in two sentences written from the blocks themselves."""
    blocks = model.tm_blocks() if hasattr(model, 'tm_blocks') else {}
    if not blocks:
        return 'This model has no TM block: it computes what its base model computes.'
    first = next(iter(blocks.values()))
    return (
        'Each TM block scores every region of its feature map against per-class templates (cosine, learnable '
        f'temperature) and {_EMBEDDING_TEXT[first.embedding]}. {_EVIDENCE_TEXT[first.evidence_mode]}'
    )


def base_model_text(architecture: str) -> str:
    """The TM-free network ``architecture`` (a tm_* model) adds its TM blocks to, in one line."""
    if architecture in TM_ARCHS:
        base, kwargs = tm_baseline(architecture)
        if kwargs:  # tm_resnet18_small: no twin in timm
            shown = ', '.join(f'{k}={v}' for k, v in kwargs.items())
            return f'`{base}` with `{shown}` (the same network without TM blocks; timm has no such ResNet)'
        return f"timm's `{base}` (the same network without the TM blocks)"
    try:  # the other timm CNNs (timm_tm.models.tm_attach): tm_convnext_tiny on convnext_tiny, ...
        return f"timm's `{base_model_name(architecture)}` (the same network without the TM blocks)"
    except ValueError:
        return 'not known to this timm-tm'


def initial_weights(args: Dict[str, Any]) -> Tuple[str, Optional[str]]:
    """(what the run recorded in ``args`` (train.py's arguments) started from, in one line; the Hub repo of those
    weights, or None): timm's pretrained tag (``--pretrained``; for ``tm_X.<tag>`` the base's own ``X.<tag>``
    weights), ``--pretrained-path`` or ``--initial-checkpoint`` (files, named), or random initialization."""
    if not args:
        return 'not recorded in the checkpoint (a bare state_dict)', None
    if args.get('initial_checkpoint'):
        return f'the checkpoint `{Path(args["initial_checkpoint"]).name}` (train.py --initial-checkpoint)', None
    if not args.get('pretrained'):
        return 'none: trained from random initialization', None
    if args.get('pretrained_path'):
        return f'the weights file `{Path(args["pretrained_path"]).name}` (train.py --pretrained-path)', None
    model = args.get('model')
    try:
        cfg = get_pretrained_cfg(model) if isinstance(model, str) else None  # None for hf-hub: and local-dir: names
    except RuntimeError:  # a tag this timm does not know
        cfg = None
    if cfg is None:
        return f'the pretrained weights of `{model}` (train.py --pretrained)', None
    tag = f'{cfg.architecture}.{cfg.tag}' if cfg.tag else cfg.architecture
    if cfg.hf_hub_id and cfg.hf_hub_id.startswith('timm/'):
        return (
            f"`{cfg.hf_hub_id}`, timm's own weights of the base, loaded with the TM blocks at identity (the "
            f'pretrained tag `{tag}`)',
            cfg.hf_hub_id,
        )
    return f'the pretrained tag `{tag}`' + (f' (`{cfg.hf_hub_id}`)' if cfg.hf_hub_id else ''), cfg.hf_hub_id


def tm_details(model: nn.Module) -> str:
    """Where ``model``'s TM blocks sit, and their templates and classes, in one line."""
    blocks = model.tm_blocks() if hasattr(model, 'tm_blocks') else {}
    if not blocks:
        return 'no TM blocks (the TM-free baseline, tm_stages=())'
    first = next(iter(blocks.values()))
    evidence = {
        'gradient': "class evidence reaches the logits as gradient only (the predictions are the linear head's)",
        'logits': 'class evidence added to the logits',
    }[first.evidence_mode]
    return (
        f'blocks after {", ".join(blocks)}; {first.templates_per_class} template(s) per class, '
        f'{first.num_classes} classes, {first.evidence_pool} class pooling; {evidence}; embedding {first.embedding!r}'
    )


def _fmt(x: Optional[float], digits: int = 2) -> str:
    return 'n/a' if x is None else f'{x:.{digits}f}'


def metrics_text(
    name: str,
    metrics: Optional[Dict[str, Any]],
    stats: Dict[str, float],
    image_size: Tuple[int, int],
    dataset: str,
    split: str,
    use_ema: bool,
) -> str:
    """The Model Comparison section: a one-row table of ``metrics`` (top1, top5, loss, epoch, as read from
    summary.csv) with ``stats`` (params_m, gmacs; :func:`timm_tm.profiling.profile_model`), or, without metrics, a
    sentence saying that no accuracy is claimed."""
    if not metrics:
        return 'No evaluation was given to the export (`--summary`): no accuracy is claimed.'
    return (
        f'Measured by timm train.py on the {split} split of {dataset} '
        f'at {image_size[0]} x {image_size[1]} px ({"EMA" if use_ema else "model"} weights):\n\n'
        '| model | top-1 | top-5 | eval loss | epoch | params (M) | GMACs |\n'
        '|---|---|---|---|---|---|---|\n'
        f'| {name} | {_fmt(metrics["top1"])} | {_fmt(metrics["top5"])} | {_fmt(metrics["loss"], 4)} | '
        f'{metrics["epoch"]} | {stats["params_m"]:.2f} | {stats["gmacs"]:.3f} |'
    )
