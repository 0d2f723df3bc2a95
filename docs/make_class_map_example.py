"""Make the README's class-map picture: ``python docs/make_class_map_example.py`` (about 2-4 minutes on one core).

Trains a narrow tm_resnet18_small (one block per stage, widths 16-128, TM blocks after stages 3 and 4) briefly on
real MNIST digits, saves it as timm's train.py does (``state_dict`` + ``args``), writes a held-out digit as a PNG,
and draws it with ``timm-tm visualize``. The digits are the MNIST copy that ships with the package (``--mnist`` for
another archive); without it, scikit-learn's 8 x 8 digits,
upsampled to 28 x 28, stand in.
"""

import argparse
import shutil
import sys
import tempfile
from pathlib import Path

import numpy as np
import timm
import torch
import torch.nn.functional as F

import timm_tm  # noqa: F401  (registers the tm_* models)
from timm_tm.data import PACKAGED_MNIST, load_digits_arrays, load_mnist_npz, split_arrays
from timm_tm.visualize import main as visualize

ROOT = Path(__file__).resolve().parents[1]
MODEL_KWARGS = dict(layers=(1, 1, 1, 1), channels=(16, 32, 64, 128))


def _digits(mnist: Path):
    if mnist.is_file():
        return load_mnist_npz(str(mnist))
    print(f'{mnist} not found: using scikit-learn digits', file=sys.stderr)
    x, y = load_digits_arrays()
    x = F.interpolate(torch.from_numpy(x).float()[:, None], size=(28, 28), mode='bilinear', align_corners=False)
    return x[:, 0].round().clamp(0, 255).to(torch.uint8).numpy(), y


def _to_input(digits: np.ndarray, data_config) -> torch.Tensor:
    """N x 28 x 28 uint8 -> N x 3 x 28 x 28 normalized, as timm's eval transform prepares the RGB PNGs."""
    x = torch.from_numpy(digits).float().div(255)[:, None].expand(-1, 3, -1, -1)
    mean = torch.tensor(data_config['mean']).view(1, 3, 1, 1)
    std = torch.tensor(data_config['std']).view(1, 3, 1, 1)
    return (x - mean) / std


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument('--mnist', type=Path, default=PACKAGED_MNIST, help='MNIST .npz (default: the packaged digits)')
    p.add_argument('--out', type=Path, default=ROOT / 'docs' / 'class_maps_example.png')
    p.add_argument('--epochs', type=int, default=2)
    p.add_argument('--digit', type=int, default=3, help='the class of the held-out digit to draw')
    p.add_argument('--index', type=int, default=0, help='which held-out digit of that class')
    p.add_argument('--seed', type=int, default=0)
    p.add_argument('--workdir', type=Path, default=None, help='keep the checkpoint and digit PNGs here')
    args = p.parse_args()
    torch.set_num_threads(1)
    torch.manual_seed(args.seed)

    from PIL import Image
    from timm.data import resolve_data_config

    splits = split_arrays(*_digits(args.mnist), val_fraction=0.2, seed=args.seed)
    (x_train, y_train), (x_val, y_val) = splits['train'], splits['val']
    model = timm.create_model('tm_resnet18_small', num_classes=10, **MODEL_KWARGS)
    data_config = resolve_data_config(args={'input_size': (3, 28, 28)}, model=model)
    xt, yt = _to_input(x_train, data_config), torch.from_numpy(y_train)
    batch = 32
    steps = args.epochs * (len(yt) // batch)
    opt = torch.optim.AdamW(model.parameters(), lr=5e-3, weight_decay=0.01)
    sched = torch.optim.lr_scheduler.OneCycleLR(opt, 5e-3, total_steps=steps, pct_start=0.2)
    model.train()
    generator = torch.Generator().manual_seed(args.seed)
    for epoch in range(args.epochs):
        order = torch.randperm(len(yt), generator=generator)
        for i in range(len(yt) // batch):
            idx = order[i * batch : (i + 1) * batch]
            loss = F.cross_entropy(model(xt[idx]), yt[idx])
            opt.zero_grad()
            loss.backward()
            opt.step()
            sched.step()
        print(f'epoch {epoch}: loss {loss.item():.3f}')
    model.eval()
    with torch.no_grad():
        acc = (model(_to_input(x_val, data_config)).argmax(1) == torch.from_numpy(y_val)).float().mean().item()
    print(f'held-out top-1 {acc:.3f} ({len(y_val)} digits)')

    with tempfile.TemporaryDirectory() as tmp:
        tmp = args.workdir or Path(tmp)
        tmp.mkdir(parents=True, exist_ok=True)
        # a checkpoint as timm's train.py saves it: the args say which model and input size to rebuild
        train_args = argparse.Namespace(
            model='tm_resnet18_small', num_classes=10, model_kwargs=MODEL_KWARGS, input_size=(3, 28, 28)
        )
        ckpt = tmp / 'model_best.pth.tar'
        torch.save({'epoch': args.epochs - 1, 'arch': 'tm_resnet18_small', 'state_dict': model.state_dict(),
                    'args': train_args}, ckpt)  # fmt: skip
        # one held-out digit of each class (the split is ordered by class), to draw
        picks = [int(np.flatnonzero(y_val == c)[args.index]) for c in range(10)]
        for c, i in enumerate(picks):
            Image.fromarray(x_val[i]).convert('RGB').save(tmp / f'digit_{c}.png')
        image = tmp / f'digit_{args.digit}.png'
        out = tmp / 'class_maps.png'
        command = [str(image), '--checkpoint', str(ckpt), '--classes', '3', '--out', str(out)]
        print('timm-tm visualize ' + ' '.join(command))
        rc = visualize(command)
        if rc == 0:
            args.out.parent.mkdir(parents=True, exist_ok=True)
            shutil.copyfile(out, args.out)
            print(f'wrote {args.out}')
    return rc


if __name__ == '__main__':
    sys.exit(main())
