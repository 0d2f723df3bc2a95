"""``timm-tm bench``: the cost of the TM blocks, each tm_X against timm's X (resnet50d, convnext_tiny, ...) side by
side.

Both models of a pair run in one process, alternating A B, B A, A B, ... (the order flips every round so that a
slow drift of the machine hits both alike), for inference (``model(x)`` in eval mode under ``torch.no_grad``) and
for a full training step (zero_grad, forward, cross-entropy, backward, SGD step). Every round gives each model's
images/s; the report gives the median per model, the ratio of the medians (TM / baseline) and the spread of the
per-round ratios (a burst on the machine shows up as one outlying round, not as a biased median).

Peak memory: on CUDA ``torch.cuda.max_memory_allocated`` from before the model is built (weights, gradients,
optimizer state, activations); on the CPU the peak resident set size (Linux ``VmHWM``, reset through
``/proc/self/clear_refs``) minus the resident size before the model is built, in a fresh subprocess per model,
so that neither model reuses memory the other one freed.

Params and GMACs come from :func:`timm_tm.profiling.profile_model` (fvcore, as timm's benchmark.py counts them).
``--scale`` sweeps the class count, the templates per class and the TM stages of one model instead.

The modules: ``machine`` (what a run measured on: CPU, load, versions; Linux's resident memory), ``runner`` (one
model's steps, the alternating timing and its ratios), ``memory`` (peak memory: the CPU subprocess, CUDA's
allocator), ``pair`` (one tm_X / X pair, every variant), ``report`` (the tables a user reads, the
targets) and ``cli`` (the arguments, the run's configuration and ``main``).
"""

from .cli import main, parse_models
from .pair import bench_pair
from .report import TARGETS, format_pair, markdown_summary, scale_table

__all__ = ['main', 'TARGETS', 'bench_pair', 'parse_models', 'format_pair', 'markdown_summary', 'scale_table']
