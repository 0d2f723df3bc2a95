"""Print the README's family table: params, GMACs and activations of each tm_* model against its baseline.

Counted with ``timm_tm.profiling.profile_model`` (fvcore, as timm's ``benchmark.py --bench profile`` counts them:
one multiply-add is one MAC) at each model's default input size, with its default kwargs (1000 classes, except
tm_resnet18_small: 10 classes at 32 px). The baseline of tm_X is timm's X (resnet50, convnext_tiny, ...); that of
tm_resnet18_small is the same model with ``tm_stages=()``.

    python benchmarks/family_table.py
    python benchmarks/family_table.py --models tm_convnext_tiny tm_regnety_016 tm_efficientnet_b0 --embedding tied
"""

import argparse
from typing import List, Optional

import timm
import torch

import timm_tm  # noqa: F401  (registers the tm_* models)
from timm_tm.models.tm_resnet import TM_ARCHS
from timm_tm.profiling import profile_model

# tm_resnet18_small is for 32-64 px datasets: profile it as one (10 classes)
SMALL_KWARGS = dict(num_classes=10)


def _row(name: str, tm_kwargs: Optional[dict] = None) -> List[str]:
    kwargs = SMALL_KWARGS if name.endswith('_small') else {}
    model = timm.create_model(name, **kwargs, **(tm_kwargs or {}))
    input_size = model.pretrained_cfg['input_size']
    if name.endswith('_small'):
        baseline = timm.create_model(name, tm_stages=(), **kwargs)
        baseline_name = f'{name} (tm_stages=())'
    else:
        baseline_name = name[len('tm_') :]
        baseline = timm.create_model(baseline_name, **kwargs)
    tm, base = profile_model(model, input_size), profile_model(baseline, input_size)
    stages = ', '.join(str(s) for s in model.tm_stages)
    return [
        f'`{name}`',
        stages,
        str(model.templates_per_class),
        f'{tm["params_m"]:.2f}',
        f'{tm["gmacs"]:.3f}' if tm['gmacs'] < 1 else f'{tm["gmacs"]:.2f}',
        f'{tm["activations_m"]:.2f}',
        f'{input_size[-1]} px, {model.num_classes}',
        f'`{baseline_name}`',
        f'+{100 * (tm["params_m"] / base["params_m"] - 1):.1f}%',
        f'+{100 * (tm["gmacs"] / base["gmacs"] - 1):.1f}%',
        f'+{100 * (tm["activations_m"] / base["activations_m"] - 1):.1f}%',
    ]


def main(argv: Optional[List[str]] = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split('\n')[0])
    parser.add_argument('--models', nargs='+', default=list(TM_ARCHS), help='tm_* models (default: the family)')
    parser.add_argument('--embedding', default=None, help="the TM blocks' embedding (default: the block's default)")
    args = parser.parse_args(argv)
    tm_kwargs = {} if args.embedding is None else dict(embedding=args.embedding)
    torch.manual_seed(0)
    header = [
        'model', 'TM stages', 'templates / class', 'params (M)', 'GMACs', 'activations (M)', 'input, classes',
        'baseline', 'params +', 'GMACs +', 'activations +',
    ]  # fmt: skip
    print('| ' + ' | '.join(header) + ' |')
    print('|' + '|'.join(['---'] * 3 + ['---:'] * 3 + ['---'] * 2 + ['---:'] * 3) + '|')
    for name in args.models:
        print('| ' + ' | '.join(_row(name, tm_kwargs)) + ' |', flush=True)


if __name__ == '__main__':
    main()
