"""``timm-tm compare``: does template matching beat ResNet? A paired, seeded comparison under one recipe.

Every variant (the TM-free ``baseline``, the TM model, ablations of it) is trained with the same data, seeds,
epochs, optimizer (``timm.optim.create_optimizer_v2``), schedule (``timm.scheduler.create_scheduler_v2``),
augmentations and loss (timm's), and evaluated by top-1 on a held-out split. Variants differ only in their TM
blocks: each is the same ``tm_*`` model, the baseline with ``tm_stages=()``. For a given seed, the backbone and
head start from the same weights in every variant (the TM blocks are built after them) and see the same batches
in the same order, so per-seed differences are paired.

Data: scikit-learn's digits (the default, installs with scikit-learn), cluttered MNIST built from the 10,000 real
MNIST digits that ship with the package (or another MNIST ``.npz``, ``--mnist-npz``), or any ImageFolder-layout
folder with ``train/`` and ``val/`` (``--data-dir``, read with timm's ``create_dataset`` / ``create_loader``).

Output, under ``--out``: ``results.json`` (every per-seed number, written before the first run and rewritten after
each finished one, so an interrupted comparison keeps what it finished; ``--resume`` skips those; the folder is
locked while a comparison runs in it), ``results.md`` (the table) and
``results.png`` (final top-1 per seed and mean per variant) and ``curves.png`` (val top-1 per epoch, mean ± std
over seeds per variant). Runs go ``--jobs`` at a time, each in its own process with ``--threads`` threads (one by
default on the CPU), so per-seed numbers do not depend on how many run side by side.

Variant names: ``baseline``, or ``tm`` followed by ``-``-separated options that override the model's defaults:

* ``m<int>``: templates per class, e.g. ``tm-m4``
* ``s<stages>``: stages carrying TM blocks, e.g. ``tm-s4``, ``tm-s34``, ``tm-s234``
* ``w<float>``: initial evidence weight, e.g. ``tm-w0``
* ``fixw``: evidence weight frozen at its initial value; ``noguide`` = ``w0`` + ``fixw`` (no label guidance)
* ``t<float>``: initial temperature, e.g. ``tm-t30``
* ``max`` / ``lse``: pooling of a class's templates into its evidence
* ``noembed`` / ``embtemplates`` / ``embclasses`` / ``embtied`` / ``embargmax``: the embedding (``none`` is the
  control whose blocks change no feature: they only send the labels' gradient through the templates)
* ``evgrad`` / ``evlogits``: the evidence reaches the logits as gradient only, or is added to them
* ``ep<int>``: this variant's own epoch count (also ``baseline-ep<int>``: a baseline trained longer, the
  comparison at equal cost and the check that the baseline has plateaued)

Two options that set the same thing (``tm-m1-m4``, ``tm-w1-noguide``, ``tm-embtied-embclasses``) are refused.

The modules: ``variants`` (the names above), ``data`` (the two pipelines), ``training`` (one run),
``statistics`` (means, paired differences, verdicts), ``report`` (the files written and the table), ``runner``
(the runs, serial or in worker processes) and ``cli`` (the arguments and ``main``).
"""

from .cli import build_parser, main
from .statistics import paired, summarize, verdict, verdicts
from .training import build_model, train_one
from .variants import ABLATION_VARIANTS, DEFAULT_VARIANTS, Variant, control_pairs, parse_variant

__all__ = [
    'main', 'build_parser', 'Variant', 'parse_variant', 'control_pairs', 'DEFAULT_VARIANTS', 'ABLATION_VARIANTS',
    'build_model', 'train_one', 'summarize', 'paired', 'verdict', 'verdicts',
]  # fmt: skip
