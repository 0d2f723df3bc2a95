"""``timm-tm visualize``: draw what the templates of a TM model match, one PNG per image.

Each picture has a row per TemplateMatching block (e.g. ``layer3.1``, ``layer4.1``):

* the input image as the model sees it (timm's eval preprocessing for the model: ``resolve_data_config`` +
  ``create_transform``), titled with the model's prediction;
* for each of the ``--classes`` top predicted classes, that class's matching map (the block's per-region class
  map, ``temperature * cos``) upsampled to the image and overlaid on it, with one colour bar per row;
* the best-matching class of each region (argmax over classes), with a legend of class names.

Output names: with one image the picture is written to ``--out``; with several, ``--out`` is a folder when it
exists or ends with ``/`` (``<out>/<image stem>.png``), otherwise its stem is a prefix
(``--out maps.png`` writes ``maps_<image stem>.png``).

Label names come from ``--label-names FILE`` (one per line, or a JSON list / dict), else the checkpoint (a
``label_names`` entry, or the class folders / ``--class-map`` of the train.py run that wrote it, when still on
disk), else the pretrained cfg (``label_names``, or timm's ImageNet class descriptions for ImageNet-sized
``--pretrained`` heads), else indices. The checkpoint is read as ``timm-tm export`` reads it
(:mod:`timm_tm.checkpoints`). An output is never one of the inputs, and an existing file is replaced only with
``--force`` and only when it is a picture this command wrote (a PNG tagged ``Software: timm-tm visualize``).
"""

import argparse
import os
import sys
from pathlib import Path
from typing import Any, Callable, Dict, List, NamedTuple, Optional, Sequence, Tuple

import numpy as np
import timm
import torch
import torch.nn as nn
import torch.nn.functional as F
from PIL import Image
from timm.data import ImageNetInfo, create_transform, infer_imagenet_subset, resolve_data_config

# read_checkpoint is shared with `timm-tm export`: the same EMA choice, args and checks
from timm_tm.checkpoints import (
    CheckpointError,
    check_label_names,
    data_args_from_args,
    label_names_from_args,
    model_kwargs_from_args,
    num_classes_from,
    read_checkpoint,
    read_label_names_file,
)
from timm_tm.class_maps import BlockClassMap, compute_class_maps_and_output, find_tm_blocks
from timm_tm.cli import command_parser, first_line, one_line, report_error
from timm_tm.files import atomic_write
from timm_tm.layers import CONFIG_KEY

__all__ = [
    'BestClassPanel',
    'VisualizeError',
    'read_checkpoint',
    'open_image',
    'render_image',
    'output_paths',
    'check_outputs',
    'load_model',
    'resolve_label_names',
    'class_palette',
    'plot_class_maps',
    'figure_size',
    'picture_size_problem',
    'main',
]

COMMAND = 'visualize'
PANEL_INCHES = 2.2  # side of one image panel
TITLE_INCHES = 0.55  # room for a row's titles
COLORBAR_WIDTH = 0.07  # colour bar width, in panels
COLORBAR_GAP = 0.3  # room for the colour bar's tick labels, in panels
LEGEND_WIDTH = 0.9  # legend width, in panels
CELL_LABELS_UP_TO = 64  # regions in a map whose best class is also written in each region
MAX_LEGEND = 20  # classes named in a legend (by area); the rest are drawn in grey as 'other'
OTHER_COLOR = (0.6, 0.6, 0.6)
MAX_DPI = 600  # a picture is ~15 x 6 inches per two blocks: 600 dpi is already ~30 megapixels
# the largest picture drawn: matplotlib's Agg canvas allocates width x height x 4 bytes at once (400 MB here)
MAX_MEGAPIXELS = 100
# the tag a picture of this command carries (a PNG text chunk): --force replaces only such a file
SOFTWARE_TAG = 'timm-tm visualize'
USE_EMA_WITHOUT_CHECKPOINT = '--use-ema picks the EMA weights of a --checkpoint: give one, or leave out --use-ema'


class BestClassPanel(NamedTuple):
    """Where a block's best-class map was drawn: its axes, the h x w class indices, and their colours."""

    axes: Any
    best_class: np.ndarray
    palette: Dict[int, Tuple[float, float, float]]


class VisualizeError(Exception):
    """A bad input (file, model, checkpoint) reported as one line."""


def _note(message: str) -> None:
    """A remark that is not an error (ignored names, rescaled pixels, random weights): one line on stderr."""
    print(f'timm-tm {COMMAND}: {message}', file=sys.stderr)


def _require_matplotlib():
    try:
        import matplotlib  # noqa: F401
    except ImportError as e:
        raise VisualizeError("matplotlib is needed for pictures: pip install 'timm-tm[examples]'") from e


# ----------------------------------------------------------------------------------------------------------------
# model and checkpoint


class _CheckpointModel(NamedTuple):
    """A checkpoint read for building its model: weights, metadata, and the ``timm.create_model`` arguments."""

    state_dict: Dict[str, torch.Tensor]
    meta: Dict[str, Any]
    model_name: str
    kwargs: Dict[str, Any]  # with num_classes when known


def _read_model_checkpoint(
    checkpoint: str,
    model_name: Optional[str],
    num_classes: Optional[int],
    use_ema: bool,
) -> _CheckpointModel:
    """Read ``checkpoint`` as ``timm-tm export`` does; the model's name and kwargs follow its training run."""
    try:
        state_dict, meta = read_checkpoint(checkpoint, use_ema=use_ema)
        args = meta['args']
        kwargs = model_kwargs_from_args(args, checkpoint)
        model_name = model_name or meta.get('arch') or args.get('model')
        if not model_name:
            raise VisualizeError(f'{checkpoint} does not name its model: pass --model')
        if num_classes is None:
            num_classes = num_classes_from(args, state_dict, checkpoint, model_name)
    except CheckpointError as e:
        raise VisualizeError(str(e)) from e
    templates = [v for k, v in state_dict.items() if k.endswith('.templates.weight')]
    if templates and num_classes and 'templates_per_class' not in kwargs:
        # the stored templates are num_classes x templates_per_class rows
        templates_per_class = templates[0].shape[0] // num_classes
        if templates_per_class > 1:
            kwargs['templates_per_class'] = templates_per_class
    if num_classes is not None:
        kwargs['num_classes'] = num_classes
    return _CheckpointModel(state_dict, meta, model_name, kwargs)


def _create_model(model_name: str, pretrained: bool, kwargs: Dict[str, Any]) -> nn.Module:
    """``timm.create_model``; what fails (an unknown model, bad kwargs, an unreachable Hub, altered weights) is
    one line, whatever timm raised."""
    try:
        return timm.create_model(model_name, pretrained=pretrained, **kwargs)
    except Exception as e:
        raise VisualizeError(f'cannot create model {model_name!r}: {first_line(e)}') from e


def _load_state_dict_or_explain(model: nn.Module, state_dict: Dict[str, torch.Tensor], what: str) -> None:
    """``load_state_dict(strict=True)``, with a one-line summary of what does not fit instead of timm's page."""
    model_sd = model.state_dict()
    # a TM block's configuration record is optional (checkpoints saved before it existed); checked when present
    missing = [k for k in model_sd if k not in state_dict and not k.endswith('.' + CONFIG_KEY)]
    unexpected = [k for k in state_dict if k not in model_sd]
    shapes = [
        f'{k} {list(state_dict[k].shape)} vs {list(v.shape)}'
        for k, v in model_sd.items()
        if k in state_dict and state_dict[k].shape != v.shape
    ]
    if missing or unexpected or shapes:
        parts = []
        if missing:
            parts.append(f'{len(missing)} missing keys (e.g. {missing[0]})')
        if unexpected:
            parts.append(f'{len(unexpected)} unexpected keys (e.g. {unexpected[0]})')
        if shapes:
            parts.append(f'{len(shapes)} shape mismatches (e.g. {shapes[0]})')
        raise VisualizeError(f'{what}: ' + ', '.join(parts))
    try:
        model.load_state_dict(state_dict, strict=True)
    except RuntimeError as e:  # the same keys and shapes with another meaning (a TM block's options)
        raise VisualizeError(f'{what}: {one_line(e)}') from e


def _check_finite_weights(model: nn.Module, source: str) -> None:
    bad = [k for k, v in model.state_dict().items() if v.is_floating_point() and not torch.isfinite(v).all()]
    if bad:
        raise VisualizeError(f'{source}: non-finite weights (NaN / inf) in {bad[:4]}')


def load_model(
    model_name: Optional[str],
    checkpoint: Optional[str] = None,
    pretrained: bool = False,
    num_classes: Optional[int] = None,
    use_ema: bool = False,
) -> Tuple[nn.Module, Dict[str, Any]]:
    """Build ``model_name`` (default: the checkpoint's ``arch``) with weights; returns (model in eval, metadata).

    From a train.py checkpoint, ``num_classes`` (unless given) and the model kwargs (``--model-kwargs``,
    ``--in-chans``, ``--gp``, ``--bn-eps``) follow the training run, as ``timm-tm export`` reads them, and
    ``templates_per_class`` the stored templates, so that the state_dict loads strictly. Weights that are not all
    finite are refused, whatever their source.
    """
    state_dict, meta = None, {}
    kwargs = {} if num_classes is None else {'num_classes': num_classes}
    if checkpoint:
        state_dict, meta, model_name, kwargs = _read_model_checkpoint(checkpoint, model_name, num_classes, use_ema)
    elif use_ema:
        raise VisualizeError(USE_EMA_WITHOUT_CHECKPOINT)
    if not model_name:
        raise VisualizeError('--model is required (or a --checkpoint that names its model)')
    model = _create_model(model_name, pretrained and not checkpoint, kwargs)
    if state_dict is not None:
        arch = meta.get('arch')
        what = f'{checkpoint} does not fit model {model_name!r}' + (f' (it was saved from {arch!r})' if arch else '')
        _load_state_dict_or_explain(model, state_dict, what)
    _check_finite_weights(model, checkpoint or model_name)
    try:
        find_tm_blocks(model)
    except ValueError as e:
        raise VisualizeError(str(e)) from e
    return model.eval(), meta


def _cfg_source(cfg: Dict[str, Any]) -> str:
    """Where a pretrained cfg was read from, for messages: the local folder's config.json, the Hub repo, or the tag."""
    if cfg.get('source') == 'local-dir' and cfg.get('file'):
        return os.path.join(str(cfg['file']), 'config.json')
    return str(cfg.get('hf_hub_id') or cfg.get('architecture') or 'the pretrained cfg')


def resolve_label_names(
    model: nn.Module,
    num_classes: int,
    meta: Optional[Dict[str, Any]] = None,
    label_names_file: Optional[str] = None,
    imagenet: bool = False,
) -> List[str]:
    """``num_classes`` names: the file, the checkpoint, the pretrained cfg, ImageNet's (``imagenet``), or indices.

    Names that do not fit ``num_classes`` are skipped with a note; names that are not a list of names (a config's
    ``label_names: 5``) are an error naming where they came from.
    """
    meta = meta or {}
    # read one source at a time, in order: a broken source after the one that fits (the run's class map when
    # --label-names is given) is never read, so it cannot refuse names the user gave
    sources: List[Tuple[str, Callable[[], Optional[List[Any]]]]] = [
        ('--label-names', lambda: read_label_names_file(label_names_file) if label_names_file else None),
        (
            'checkpoint',
            lambda: check_label_names(meta['label_names'], 'checkpoint') if meta.get('label_names') else None,
        ),
        ('training data', lambda: (label_names_from_args(meta['args']) or [None])[0] if meta.get('args') else None),
        ('pretrained cfg', lambda: _pretrained_cfg_names(model)),
        ('ImageNet', lambda: _imagenet_names(model) if imagenet else None),
    ]
    for source, read in sources:
        try:
            names = read()
        except CheckpointError as e:
            raise VisualizeError(str(e)) from e
        if names is None:
            continue
        if len(names) == num_classes:
            return [str(n) for n in names]
        _note(f'ignoring {len(names)} label names from {source} for {num_classes} classes')
    return [str(i) for i in range(num_classes)]


def _pretrained_cfg_names(model: nn.Module) -> Optional[List[str]]:
    """The class names of ``model``'s pretrained cfg (its label descriptions where it has them), or None."""
    cfg = getattr(model, 'pretrained_cfg', None) or {}
    if cfg.get('label_names') is None:
        return None
    source = _cfg_source(cfg)
    names = check_label_names(cfg['label_names'], source)
    descriptions = cfg.get('label_descriptions') or {}
    if not isinstance(descriptions, dict):
        raise VisualizeError(f'{source}: label_descriptions has type {type(descriptions).__name__}, not a dict')
    return [str(descriptions.get(n, n)) for n in names]


def _imagenet_names(model: nn.Module) -> Optional[List[str]]:
    """ImageNet's class names for the subset ``model``'s head fits, or None."""
    subset = infer_imagenet_subset(model)
    if not subset:
        return None
    info = ImageNetInfo(subset)
    # the first lemma of each description ('tench', not 'tench, Tinca tinca'): legends stay short
    return [info.index_to_description(i).split(', ')[0] for i in range(info.num_classes())]


# ----------------------------------------------------------------------------------------------------------------
# picture


def figure_size(num_blocks: int, top_k: int) -> Tuple[float, float]:
    """(width, height) in inches of the picture for ``num_blocks`` TM blocks and ``top_k`` overlays per row."""
    width = PANEL_INCHES * sum(_width_ratios(top_k)) + 0.8
    height = (PANEL_INCHES + TITLE_INCHES) * num_blocks + 0.4
    return width, height


def picture_size_problem(num_blocks: int, top_k: int, dpi: int) -> Optional[str]:
    """Why the picture of ``num_blocks`` TM blocks with ``top_k`` overlays per row is too large to draw at ``dpi``
    (more than ``MAX_MEGAPIXELS``), in one line; None if it is not."""
    width, height = (round(inches * dpi) for inches in figure_size(num_blocks, top_k))
    megapixels = width * height / 1e6
    if megapixels <= MAX_MEGAPIXELS:
        return None
    return (
        f'--classes {top_k} --dpi {dpi}: the picture of {num_blocks} TM block(s) would be {width} x {height} pixels '
        f'({megapixels:,.0f} megapixels, {4 * megapixels / 1e3:,.1f} GB to draw); the most is {MAX_MEGAPIXELS} '
        'megapixels: lower --classes or --dpi'
    )


def _width_ratios(top_k: int) -> List[float]:
    # image, top_k overlays, colour bar, gap, best-class map, legend
    return [1.0] * (1 + top_k) + [COLORBAR_WIDTH, COLORBAR_GAP, 1.0, LEGEND_WIDTH]


def class_palette(best_class: np.ndarray, num_classes: int) -> Dict[int, Tuple[float, float, float]]:
    """Colours of the classes in an H x W best-class map: the ``MAX_LEGEND`` largest get distinct colours
    (tab10 / tab20, fixed per class index when the model has that few classes), the rest share ``OTHER_COLOR``."""
    from matplotlib import colormaps

    classes, counts = np.unique(best_class, return_counts=True)
    by_area = [int(c) for c in classes[np.argsort(-counts, kind='stable')]]
    if num_classes <= 20:
        cmap = colormaps['tab10' if num_classes <= 10 else 'tab20']
        return {c: tuple(cmap(c)[:3]) for c in by_area}
    cmap = colormaps['tab20']
    return {c: (tuple(cmap(i)[:3]) if i < MAX_LEGEND else OTHER_COLOR) for i, c in enumerate(by_area)}


def _to_display(image: torch.Tensor, mean: Sequence[float], std: Sequence[float]) -> np.ndarray:
    """C x H x W normalized model input -> H x W x 3 (or H x W) floats in [0, 1]."""
    c = image.shape[0]
    mean_t = torch.tensor(mean[:c], dtype=image.dtype).view(-1, 1, 1)
    std_t = torch.tensor(std[:c], dtype=image.dtype).view(-1, 1, 1)
    img = (image.float().cpu() * std_t + mean_t).clamp(0, 1)
    return img[0].numpy() if c == 1 else img[:3].permute(1, 2, 0).numpy()


def _new_figure(num_blocks: int, top_k: int, title: str, dpi: int):
    """An empty picture and its grid: a row per block, the columns of :func:`_width_ratios`."""
    from matplotlib.figure import Figure

    fig = Figure(figsize=figure_size(num_blocks, top_k), dpi=dpi)
    ratios = _width_ratios(top_k)
    grid = fig.add_gridspec(
        num_blocks,
        len(ratios),
        width_ratios=ratios,
        left=0.03,
        right=0.99,
        top=1 - 0.6 / fig.get_figheight(),
        bottom=0.02,
        wspace=0.12,
        hspace=0.35,
    )
    if title:
        fig.suptitle(title, fontsize=11, y=1 - 0.1 / fig.get_figheight(), va='top')
    return fig, grid


def _draw_input(ax, image: np.ndarray, row_label: str) -> None:
    """The model's input, H x W x 3 (or H x W gray) in [0, 1], labelled with its row's block."""
    ax.imshow(image, **(dict(cmap='gray', vmin=0, vmax=1) if image.ndim == 2 else {}))
    ax.set_title('input', fontsize=9)
    ax.set_ylabel(row_label, fontsize=9)
    ax.set_xticks([])
    ax.set_yticks([])


def _draw_overlays(axes: Sequence[Any], gray: np.ndarray, class_maps: torch.Tensor, titles: Sequence[str]):
    """Each of the K x h x w ``class_maps`` upsampled to the H x W ``gray`` image and overlaid on it, on one colour
    scale; returns the last overlay (its norm and colormap make the colour bar)."""
    img_h, img_w = gray.shape
    upsampled = F.interpolate(class_maps[None], size=(img_h, img_w), mode='bilinear', align_corners=False)[0]
    vmin, vmax = float(upsampled.min()), float(upsampled.max())
    for ax, heat_map, title in zip(axes, upsampled, titles):
        ax.imshow(gray, cmap='gray', vmin=0, vmax=1.6)  # dimmed, so that the heat reads over it
        heat = ax.imshow(heat_map.numpy(), cmap='inferno', alpha=0.7, vmin=vmin, vmax=vmax)
        ax.set_title(title, fontsize=9)
        ax.set_xticks([])
        ax.set_yticks([])
    return heat


def _draw_colorbar(fig, cax, heat) -> None:
    from matplotlib.cm import ScalarMappable

    fig.colorbar(ScalarMappable(norm=heat.norm, cmap=heat.cmap), cax=cax)  # opaque, unlike the overlay
    cax.tick_params(labelsize=7)
    cax.set_ylabel('match score (temperature x cos)', fontsize=7)


def _draw_best_class(
    ax,
    best: np.ndarray,
    palette: Dict[int, Tuple[float, float, float]],
    label_names: Sequence[str],
    image_size: Tuple[int, int],
) -> None:
    """The h x w best-class map in the palette's colours, stretched over the H x W image's extent."""
    img_h, img_w = image_size
    h, w = best.shape
    rgb = np.array([[palette[int(c)] for c in line] for line in best], dtype=np.float32)
    # one flat colour per region
    ax.imshow(rgb, interpolation='nearest', extent=(-0.5, img_w - 0.5, img_h - 0.5, -0.5))
    ax.set_xlim(-0.5, img_w - 0.5)
    ax.set_ylim(img_h - 0.5, -0.5)
    ax.set_title('best-matching class', fontsize=9)
    if h * w <= CELL_LABELS_UP_TO and max(len(label_names[c]) for c in palette) <= 3:
        # short names fit in the regions; written a little below the centre, away from a region's corner
        for (i, j), c in np.ndenumerate(best):
            x, y = (j + 0.5) * img_w / w - 0.5, (i + 0.6) * img_h / h - 0.5
            ax.text(x, y, label_names[c], ha='center', va='center', fontsize=8, color='white')
    ax.set_xticks([])
    ax.set_yticks([])


def _draw_legend(
    ax, best: np.ndarray, palette: Dict[int, Tuple[float, float, float]], label_names: Sequence[str]
) -> None:
    """The classes of the h x w best-class map with their regions, largest first; the unnamed ones as 'other'."""
    from matplotlib.patches import Patch

    ax.axis('off')
    counts = {c: int((best == c).sum()) for c in palette}
    named = [c for c in palette if palette[c] != OTHER_COLOR]
    handles = [Patch(color=palette[c], label=f'{label_names[c]} ({counts[c]})') for c in named]
    rest = sum(counts[c] for c in palette if palette[c] == OTHER_COLOR)
    if rest:
        handles.append(Patch(color=OTHER_COLOR, label=f'other ({rest})'))
    ax.legend(handles=handles, loc='center left', fontsize=8, frameon=False, title='class (regions)', title_fontsize=8)


def _top_classes(
    block: BlockClassMap, probs: Optional[torch.Tensor], top_k: int, label_names: Sequence[str]
) -> Tuple[List[int], List[str]]:
    """The ``top_k`` classes by probability (else by the block's class evidence), and their panel titles."""
    evidence = block.class_evidence[0].float().cpu()
    top = (probs if probs is not None else evidence).topk(top_k).indices.tolist()
    if probs is not None:
        return top, [f'{label_names[c]}  (p={float(probs[c]):.2f})' for c in top]
    return top, [f'{label_names[c]}  (e={float(evidence[c]):.1f})' for c in top]


def plot_class_maps(
    image: np.ndarray,
    maps: Dict[str, BlockClassMap],
    label_names: Sequence[str],
    probs: Optional[torch.Tensor] = None,
    top_k: int = 3,
    title: str = '',
    dpi: int = 100,
):
    """One image's picture; returns (matplotlib Figure, ``{block name: BestClassPanel}``).

    Args:
        image: H x W x 3 (or H x W) floats in [0, 1], the model's input.
        maps: ``{block name: BlockClassMap}`` for this image (batch of 1).
        label_names: N class names.
        probs: N class probabilities of the model's prediction; the top ``top_k`` classes are drawn (by default
            the classes with the most class evidence in each block).
    """
    top_k = max(1, min(top_k, len(label_names)))
    fig, grid = _new_figure(len(maps), top_k, title, dpi)
    gray = image if image.ndim == 2 else image.mean(axis=2)
    panels = {}
    for row, (name, block) in enumerate(maps.items()):
        class_map = block.class_map[0].float().cpu()  # N x h x w
        h, w = class_map.shape[-2:]
        _draw_input(fig.add_subplot(grid[row, 0]), image, f'{name}\n{h} x {w} regions')
        top, titles = _top_classes(block, probs, top_k, label_names)
        overlay_axes = [fig.add_subplot(grid[row, 1 + j]) for j in range(top_k)]
        heat = _draw_overlays(overlay_axes, gray, class_map[top], titles)
        _draw_colorbar(fig, fig.add_subplot(grid[row, 1 + top_k]), heat)
        # column 2 + top_k is the gap that holds the colour bar's tick labels
        best = block.best_class[0].cpu().numpy()
        palette = class_palette(best, len(label_names))
        ax = fig.add_subplot(grid[row, 3 + top_k])
        _draw_best_class(ax, best, palette, label_names, gray.shape)
        _draw_legend(fig.add_subplot(grid[row, 4 + top_k]), best, palette, label_names)
        panels[name] = BestClassPanel(ax, best, palette)
    return fig, panels


def _save_png(fig, path: Path, dpi: int, replace: bool = False) -> None:
    """Write the picture atomically (a killed run leaves the old picture or the new one, never half of one), tagged
    as this command's. Without ``replace``, a file that appeared at ``path`` meanwhile is kept, and so is the picture
    (under a temporary name, given in the error)."""
    metadata = {'Software': SOFTWARE_TAG}
    kept = atomic_write(path, lambda tmp: fig.savefig(tmp, format='png', dpi=dpi, metadata=metadata), replace=replace)
    if kept:
        raise VisualizeError(f'--out: {path} appeared while drawing and is kept; the picture is in {kept}')


def _written_by_visualize(path: Path) -> bool:
    """True when ``path`` is a regular file holding a PNG tagged by this command (``SOFTWARE_TAG``)."""
    if path.is_symlink() or not path.is_file():
        return False
    try:
        with Image.open(path) as im:
            return im.format == 'PNG' and im.info.get('Software') == SOFTWARE_TAG
    except Exception:  # not an image, unreadable: not ours
        return False


def check_existing_outputs(outputs: Sequence[Path], force: bool) -> None:
    """Refuse outputs that exist, unless ``force`` and each is a picture this command wrote: a file of the user's
    (notes, a photo named like a picture, a folder) is never replaced."""
    for out in outputs:
        if not os.path.lexists(out):
            continue
        if not force:
            raise VisualizeError(f'--out: {out} exists; pass --force to replace it, or write the picture elsewhere')
        if not _written_by_visualize(out):
            raise VisualizeError(
                f'--out: {out} exists and is not a picture timm-tm visualize wrote (a PNG tagged Software: '
                f'{SOFTWARE_TAG}); --force replaces only those: write the picture elsewhere'
            )


def output_paths(out: str, images: Sequence[str]) -> List[Path]:
    """Where each image's picture goes (see the module docstring)."""
    out_path = Path(out)
    folder_mode = out.endswith(('/', os.sep)) or out_path.is_dir()
    if len(images) == 1 and not folder_mode:
        return [out_path]
    paths, seen = [], set()
    for image in images:
        stem = Path(image).stem
        base = out_path / stem if folder_mode else out_path.with_name(f'{out_path.stem}_{stem}')
        candidate, i = base.with_suffix('.png'), 2
        while candidate in seen:
            candidate = base.with_name(f'{base.name}_{i}').with_suffix('.png')
            i += 1
        seen.add(candidate)
        paths.append(candidate)
    return paths


def _scaled_to_8bit(im: Image.Image, path: str) -> Image.Image:
    """A 16-bit / 32-bit integer or float single-channel image as 8-bit 'L', scaled from its own range: PIL's
    ``convert`` would clip it (a 16-bit PNG saturates to white, a float TIFF in [0, 1] turns black)."""
    pixels = np.asarray(im, dtype=np.float64)
    if not np.isfinite(pixels).all():
        raise VisualizeError(f'{path}: the image has non-finite pixel values (NaN / inf)')
    lo, hi = float(pixels.min()), float(pixels.max())
    if im.mode.startswith('I;16') or (im.mode == 'I' and lo >= 0 and hi <= 65535):
        pixels = pixels / 65535  # 16-bit PNG / TIFF (PIL opens some as mode 'I')
    elif im.mode == 'F' and lo >= 0 and hi <= 1:
        pass  # the usual range of a float image
    else:
        _note(f'{path}: {im.mode} image with values in [{lo:g}, {hi:g}], shown scaled to [0, 1]')
        pixels = (pixels - lo) / (hi - lo) if hi > lo else np.zeros_like(pixels)
    return Image.fromarray(np.round(pixels * 255).astype(np.uint8), mode='L')


def open_image(path: str, channels: int = 3) -> Image.Image:
    """The image at ``path`` as an 8-bit PIL image with ``channels`` (3: 'RGB', 1: 'L'), high bit-depth and float
    images scaled rather than clipped; a ``VisualizeError`` naming ``path`` when it cannot be read (not an image,
    truncated, or a decompression bomb that PIL refuses to open)."""
    try:
        with Image.open(path) as im:
            im.load()
            if im.mode in ('I', 'F') or im.mode.startswith('I;16'):
                im = _scaled_to_8bit(im, path)
            return im.convert('RGB' if channels == 3 else 'L')
    except VisualizeError:
        raise
    except Exception as e:  # OSError, DecompressionBombError, SyntaxError, ...: whatever a bad file makes PIL raise
        raise VisualizeError(f'{path}: cannot read image ({type(e).__name__}: {first_line(e)})') from e


def render_image(
    model: nn.Module,
    transform,
    image_path: str,
    label_names: Sequence[str],
    data_config: Dict[str, Any],
    top_k: int = 3,
    dpi: int = 100,
    device: str = 'cpu',
):
    """Open, preprocess and draw one image.

    Returns (Figure, ``{block: BlockClassMap}`` as compute_class_maps gives them, ``{block: BestClassPanel}``).
    """
    im = open_image(image_path, data_config['input_size'][0])
    x = transform(im).unsqueeze(0).to(device)
    output, maps = compute_class_maps_and_output(model, x)
    if isinstance(output, torch.Tensor) and not torch.isfinite(output).all():
        raise VisualizeError(f"{image_path}: the model's output is not finite (NaN / inf): nothing to draw")
    probs = None
    if isinstance(output, torch.Tensor) and output.ndim == 2 and output.shape[1] == len(label_names):
        probs = output[0].float().softmax(-1).cpu()
    title = Path(image_path).name
    if probs is not None:
        c = int(probs.argmax())
        title += f'   prediction: {label_names[c]} (p={float(probs[c]):.2f})'
    image = _to_display(x[0], data_config['mean'], data_config['std'])
    fig, panels = plot_class_maps(image, maps, label_names, probs=probs, top_k=top_k, title=title, dpi=dpi)
    return fig, maps, panels


# ----------------------------------------------------------------------------------------------------------------
# command line


def _same_file(a: str, b: str) -> bool:
    """True when paths ``a`` and ``b`` are one file: the same real path (links, ``..``), or hard links."""
    if os.path.realpath(a) == os.path.realpath(b):
        return True
    try:
        return os.path.samefile(a, b)
    except OSError:
        return False


def check_outputs(outputs: Sequence[Path], inputs: Dict[str, Optional[str]]) -> None:
    """Refuse outputs that are inputs: writing a picture must never overwrite an image, checkpoint or names file."""
    for out in outputs:
        for what, path in inputs.items():
            if path and _same_file(str(out), path):
                raise VisualizeError(f'--out: {out} is the input {what} {path}; write the picture elsewhere')


def _check_device(name: str) -> torch.device:
    try:
        device = torch.device(name)
        if device.type == 'meta':
            raise ValueError('the meta device holds no data')
        torch.empty(1, device=device)  # an unknown, absent or unbuilt device (cuda without a GPU) fails here
    except Exception as e:
        raise VisualizeError(f'--device {name}: not usable on this machine ({first_line(e)})') from e
    return device


def _parser() -> argparse.ArgumentParser:
    p = command_parser(
        COMMAND,
        'Draw the per-region class maps of a TM model on images, one PNG per image.',
        epilog='With several images, --out is a folder when it exists or ends with "/" (<out>/<image stem>.png); '
        'otherwise its stem is a prefix (--out maps.png writes maps_<image stem>.png).',
    )
    p.add_argument('images', nargs='+', metavar='IMAGE', help='image files')
    p.add_argument('--model', default=None, help="timm model name, e.g. tm_resnet50 (default: the checkpoint's)")
    weights = p.add_mutually_exclusive_group()
    weights.add_argument('--checkpoint', default=None, metavar='FILE', help='timm train.py checkpoint or state_dict')
    weights.add_argument('--pretrained', action='store_true', help="the model's pretrained weights (timm / Hub)")
    p.add_argument('--use-ema', action='store_true', help="the checkpoint's EMA weights (state_dict_ema)")
    p.add_argument('--num-classes', type=int, default=None, help="classes of the model (default: the checkpoint's)")
    p.add_argument('--classes', type=int, default=3, metavar='N', help='top predicted classes to overlay (default 3)')
    p.add_argument('--label-names', default=None, metavar='FILE', help='class names: one per line, or JSON')
    p.add_argument('--out', required=True, help='output PNG (or folder / prefix with several images)')
    p.add_argument('--dpi', type=int, default=100, help='resolution of the PNG (default 100)')
    p.add_argument('--force', action='store_true', help='replace existing pictures that timm-tm visualize wrote')
    p.add_argument('--device', default='cpu', help='torch device (default cpu)')
    return p


def _check_arguments(parser: argparse.ArgumentParser, args: argparse.Namespace) -> List[Path]:
    """The output path of each image; wrong arguments (a value out of range, a device this machine lacks, an output
    that is an input) end the command through ``parser.error`` (usage, the error line, exit status 2)."""
    for flag, value, lo, hi in (
        ('--classes', args.classes, 1, None),
        ('--dpi', args.dpi, 1, MAX_DPI),
        ('--num-classes', args.num_classes, 1, None),
    ):
        if value is not None and (value < lo or (hi is not None and value > hi)):
            limits = f'>= {lo}' if hi is None else f'between {lo} and {hi}'
            parser.error(f'{flag} must be {limits}, got {value}')
    if args.use_ema and not args.checkpoint:
        parser.error(USE_EMA_WITHOUT_CHECKPOINT)
    try:  # a device this machine lacks is a wrong argument, as in timm-tm compare
        _check_device(args.device)
    except VisualizeError as e:
        parser.error(str(e))
    out_paths = output_paths(args.out, args.images)
    inputs = {f'image {i + 1}': p for i, p in enumerate(args.images)}
    inputs.update({'--checkpoint': args.checkpoint, '--label-names': args.label_names})
    try:
        check_outputs(out_paths, inputs)
        check_existing_outputs(out_paths, args.force)
    except VisualizeError as e:
        parser.error(str(e))
    return out_paths


class _Drawing(NamedTuple):
    """What every image of one command is drawn with."""

    model: nn.Module  # in eval mode, on ``device``
    device: torch.device
    label_names: List[str]
    data_config: Dict[str, Any]  # timm's resolve_data_config: input_size, mean, std, ...
    transform: Any  # timm's eval transform for data_config


def _prepare(args: argparse.Namespace) -> _Drawing:
    """The model, label names and preprocessing of the command; a VisualizeError when one of them fails."""
    device = torch.device(args.device)  # checked with the arguments
    _require_matplotlib()
    model, meta = load_model(args.model, args.checkpoint, args.pretrained, args.num_classes, args.use_ema)
    model.to(device)
    num_classes = next(iter(find_tm_blocks(model).values())).num_classes
    label_names = resolve_label_names(model, num_classes, meta, args.label_names, imagenet=args.pretrained)
    # the checkpoint's train args (input size, mean, std, crop) where set, else the model's pretrained cfg
    try:
        train_args = data_args_from_args(meta.get('args') or {}, str(args.checkpoint))
    except CheckpointError as e:
        raise VisualizeError(str(e)) from e
    data_config = resolve_data_config(args=train_args, model=model)
    transform = create_transform(**data_config, is_training=False)
    return _Drawing(model, device, label_names, data_config, transform)


def _draw_images(
    drawing: _Drawing, images: Sequence[str], out_paths: Sequence[Path], top_k: int, dpi: int, force: bool = False
) -> int:
    """Draw and save each image's picture; returns how many failed (each reported, the others still drawn)."""
    failed = 0
    for image_path, out_path in zip(images, out_paths):
        try:
            fig, *_ = render_image(
                drawing.model, drawing.transform, image_path, drawing.label_names, drawing.data_config,
                top_k, dpi, str(drawing.device),
            )  # fmt: skip
            _save_png(fig, out_path, dpi, replace=force)
            print(f'{image_path} -> {out_path}')
        except VisualizeError as e:
            report_error(COMMAND, e)
            failed += 1
        except (OSError, RuntimeError) as e:  # cannot write the picture, out of memory: this image only
            report_error(COMMAND, f'{image_path}: {type(e).__name__}: {first_line(e)}')
            failed += 1
    return failed


def main(argv: Optional[List[str]] = None) -> int:
    """``timm-tm visualize``: 0 when every picture was written, 1 when one failed (or the model could not be
    loaded), 2 for wrong arguments (through argparse)."""
    parser = _parser()
    args = parser.parse_args(argv)
    out_paths = _check_arguments(parser, args)
    try:
        drawing = _prepare(args)
    except VisualizeError as e:
        return report_error(COMMAND, e)
    num_blocks = len(find_tm_blocks(drawing.model))
    problem = picture_size_problem(num_blocks, min(args.classes, len(drawing.label_names)), args.dpi)
    if problem:  # known once the model is: a wrong argument all the same, refused before anything is drawn
        parser.error(problem)
    if not args.checkpoint and not args.pretrained:
        _note('no --checkpoint or --pretrained: random weights, the maps show nothing learned')
    return 1 if _draw_images(drawing, args.images, out_paths, args.classes, args.dpi, args.force) else 0


if __name__ == '__main__':
    sys.exit(main())
