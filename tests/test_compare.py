"""``timm-tm compare``: end to end on a tiny real subset (scikit-learn digits), resume, and clear errors."""

import json
import os
import re
import shlex

import pytest
import torch

from timm_tm.compare import control_pairs, main, parse_variant, runner
from timm_tm.compare.cli import build_parser
from timm_tm.compare.training import build_model
from timm_tm.compare.variants import table_reference
from timm_tm.data import FASHION_MNIST_DIR

pytest.importorskip('sklearn')

# a tiny, fast recipe on real digits: every test trains at most a few batches
TINY = [
    '--dataset', 'digits', '--train-size', '64', '--val-size', '40', '--img-size', '8', '--channels', '8,16,16,16',
    '--layers', '1,1,1,1', '--epochs', '1', '--warmup-epochs', '0', '--batch-size', '32', '--threads', '1',
    '--jobs', '1',
]  # fmt: skip


def _table_row(text: str, variant: str) -> list:
    """Cells of the Markdown table row of ``variant`` in ``text``."""
    for line in text.splitlines():
        cells = [c.strip() for c in line.strip().strip('|').split('|')]
        if cells and cells[0] == variant:
            return cells
    raise AssertionError(f'no table row for {variant!r} in:\n{text}')


def test_end_to_end_numbers_match_what_was_printed(tmp_path, capsys):
    out = tmp_path / 'run'
    assert main(TINY + ['--seeds', '0', '1', '--out', str(out)]) == 0
    printed = capsys.readouterr().out
    result = json.loads((out / 'results.json').read_text())
    runs = {(r['variant'], r['seed']): r for r in result['runs']}
    assert sorted(runs) == [(v, s) for v in ('baseline', 'tm', 'tm-noembed') for s in (0, 1)]
    md = (out / 'results.md').read_text()
    for variant in ('baseline', 'tm', 'tm-noembed'):
        seeds = [runs[(variant, s)]['top1'] for s in (0, 1)]
        # top-1 is a count of correct images out of the 40 val images
        assert all(abs(t * 40 / 100 - round(t * 40 / 100)) < 1e-6 for t in seeds)
        per_seed = ', '.join(f'{t:.2f}' for t in seeds)
        assert _table_row(printed, variant)[3] == per_seed
        assert _table_row(md, variant)[3] == per_seed
        mean = sum(seeds) / 2
        assert re.search(rf'^\s*{variant} top-1: {mean:.2f} ± ', printed, re.M), printed
    diffs = [runs[('tm', s)]['top1'] - runs[('baseline', s)]['top1'] for s in (0, 1)]
    assert _table_row(md, 'tm')[5] == ', '.join(f'{d:+.2f}' for d in diffs)
    # the baseline has no TM block; the TM model has its default two, with their final evidence weights
    assert runs[('baseline', 0)]['evidence_weight'] == {}
    assert len(runs[('tm', 0)]['evidence_weight']) == 2
    assert len(runs[('tm', 0)]['top1_per_epoch']) == 1
    for picture in ('results.png', 'curves.png'):
        assert (out / picture).read_bytes()[:8] == b'\x89PNG\r\n\x1a\n'
    # the verdicts: TM against the baseline, and the embedding against its evidence-only twin, in plain words
    for variant, reference in (('tm', 'baseline'), ('tm-noembed', 'baseline'), ('tm', 'tm-noembed')):
        d = [runs[(variant, s)]['top1'] - runs[(reference, s)]['top1'] for s in (0, 1)]
        line = re.search(rf'^{variant} vs {reference}: (.*)$', printed, re.M)
        assert line, printed
        assert f'{sum(d) / 2:+.2f} ± ' in line.group(1)
        assert line.group(1).startswith(('no significant difference', 'better', 'worse'))
        assert f'- {variant} vs {reference}: {line.group(1)}' in md  # the same verdicts in results.md


def test_parallel_runs_give_the_serial_numbers(tmp_path):
    """--jobs 2 runs side by side in worker processes, one thread each: the same per-seed numbers as one by one."""
    numbers = {}
    for jobs in ('1', '2'):
        out = tmp_path / f'jobs{jobs}'
        args = TINY + ['--seeds', '0', '--variants', 'baseline', 'tm', '--out', str(out), '--jobs', jobs]
        assert main(args) == 0
        runs = json.loads((out / 'results.json').read_text())['runs']
        numbers[jobs] = [(r['variant'], r['seed'], r['top1'], r['train_loss_per_epoch']) for r in runs]
    assert numbers['1'] == numbers['2']


def test_resume_skips_finished_runs(tmp_path, capsys):
    out = tmp_path / 'run'
    args = TINY + ['--variants', 'baseline', '--out', str(out), '--title', 'digits, a title with spaces']
    assert main(args + ['--seeds', '0']) == 0
    first = json.loads((out / 'results.json').read_text())['runs']
    with pytest.raises(SystemExit):  # an existing folder is never overwritten silently
        main(args + ['--seeds', '0', '1'])
    assert '--resume' in capsys.readouterr().err
    assert main(args + ['--seeds', '0', '1', '--resume']) == 0
    assert '1 finished run(s) kept, 1 to go' in capsys.readouterr().out
    result = json.loads((out / 'results.json').read_text())
    assert '--resume' not in result['config']['command']  # the folder keeps the command that started it
    assert shlex.split(result['config']['command'])[2:] == args + ['--seeds', '0']  # quoted as it ran
    runs = result['runs']
    assert runs[0] == first[0]  # seed 0 was not retrained (its timing would differ)
    assert [(r['variant'], r['seed']) for r in runs] == [('baseline', 0), ('baseline', 1)]
    with pytest.raises(SystemExit):  # another recipe cannot resume this folder
        main(args + ['--seeds', '0', '1', '--resume', '--epochs', '2'])
    assert 'epochs' in capsys.readouterr().err


def test_results_record_the_machine_kind_and_a_resume_on_another_is_none(tmp_path, monkeypatch):
    """What benchmarks/reproduce.py needs to know to compare exactly: the machine kind that made every run."""
    from timm_tm.bench.machine import numerics_record

    out = tmp_path / 'run'
    args = TINY + ['--variants', 'baseline', '--seeds', '0', '--out', str(out)]
    assert main(args) == 0
    config = json.loads((out / 'results.json').read_text())['config']
    assert config['machine'] == numerics_record(config['threads']) and config['machine']['kernel_env'] == {}
    monkeypatch.setenv('ONEDNN_MAX_CPU_ISA', 'SSE41')  # another CPU kind for oneDNN's convolutions
    assert main(args + ['--seeds', '0', '1', '--resume']) == 0
    assert json.loads((out / 'results.json').read_text())['config']['machine'] is None  # runs of two kinds


def test_image_folder_and_frozen_guidance(tmp_path):
    """An ImageFolder dataset goes through timm's create_dataset / create_loader; noguide keeps w at 0."""
    from timm_tm.data import load_digits_arrays, split_arrays, write_image_folder

    x, y = load_digits_arrays()
    splits = split_arrays(x[:120], y[:120], val_fraction=0.25, seed=0)
    write_image_folder(str(tmp_path / 'digits'), splits, size=16)
    out = tmp_path / 'run'
    args = TINY[6:] + ['--data-dir', str(tmp_path / 'digits'), '--img-size', '16', '--workers', '0']
    assert main(args + ['--seeds', '0', '--variants', 'tm-noguide', '--out', str(out)]) == 0
    (run,) = json.loads((out / 'results.json').read_text())['runs']
    assert run['num_train'] == len(splits['train'][1]) and run['num_val'] == len(splits['val'][1])
    assert set(run['evidence_weight'].values()) == {0.0}


def test_variants_share_initial_weights():
    """For one seed, baseline and TM variants start from the same backbone and head: differences are paired."""
    args = build_parser().parse_args(TINY)
    base = build_model(parse_variant('baseline'), args, 10, 1, seed=3).state_dict()
    tm = build_model(parse_variant('tm-m2-s234'), args, 10, 1, seed=3)
    tm_sd = tm.state_dict()
    assert len(tm.tm_blocks()) == 3
    for k, v in base.items():
        torch.testing.assert_close(tm_sd[k], v, msg=k)
    other = build_model(parse_variant('baseline'), args, 10, 1, seed=4).state_dict()
    assert not torch.equal(other['conv1.weight'], base['conv1.weight'])


def test_parse_variant():
    v = parse_variant('tm-m4-s34-noguide-t30')
    assert v.model_kwargs == dict(
        templates_per_class=4, tm_stages=(3, 4), evidence_weight_init=0.0, temperature_init=30.0
    )
    assert v.freeze_evidence_weight
    assert parse_variant('baseline').is_baseline
    with pytest.raises(ValueError, match='tm-q7'):
        parse_variant('tm-q7')
    assert parse_variant('tm-noembed').model_kwargs == dict(embedding='none')
    assert parse_variant('tm-embtemplates-evlogits-w1').model_kwargs == dict(
        embedding='templates', evidence_mode='logits', evidence_weight_init=1.0
    )
    longer = parse_variant('baseline-ep24')
    assert longer.is_baseline and longer.epochs == 24 and parse_variant('baseline').epochs is None
    with pytest.raises(ValueError, match='only ep<int>'):
        parse_variant('baseline-m2')
    with pytest.raises(ValueError, match='epochs must be >= 1'):
        parse_variant('tm-ep0')


def test_a_longer_variant_trains_its_own_epochs(tmp_path):
    out = tmp_path / 'run'
    assert main(TINY + ['--seeds', '0', '--variants', 'baseline', 'baseline-ep2', '--out', str(out)]) == 0
    runs = {r['variant']: r for r in json.loads((out / 'results.json').read_text())['runs']}
    assert len(runs['baseline']['top1_per_epoch']) == 1 and len(runs['baseline-ep2']['top1_per_epoch']) == 2


def test_a_study_at_a_longer_budget_is_set_against_its_own_baselines():
    # the Fashion-MNIST 100-epoch study: TM at 100 epochs against the 100-epoch baseline, its evidence-only twin
    # and its -noguide control; the 200-epoch baseline against the 100-epoch one (the plateau check)
    study = ['baseline-ep100', 'baseline-ep200', 'tm-embargmax-ep100', 'tm-noembed-ep100', 'tm-embargmax-ep100-noguide']
    pairs = set(control_pairs(study))
    assert pairs == {
        ('tm-embargmax-ep100', 'baseline-ep100'), ('tm-noembed-ep100', 'baseline-ep100'),
        ('tm-embargmax-ep100-noguide', 'baseline-ep100'), ('baseline-ep200', 'baseline-ep100'),
        ('tm-embargmax-ep100', 'tm-noembed-ep100'), ('tm-embargmax-ep100', 'tm-embargmax-ep100-noguide'),
    }  # fmt: skip
    assert table_reference(study) == 'baseline-ep100'
    # with the recipe's own baseline: every longer baseline against it, and each against the next shorter one
    assert set(control_pairs(['baseline', 'baseline-ep200', 'baseline-ep100'])) == {
        ('baseline-ep100', 'baseline'), ('baseline-ep200', 'baseline'), ('baseline-ep200', 'baseline-ep100'),
    }  # fmt: skip
    assert table_reference(['tm', 'baseline-ep100', 'baseline']) == 'baseline'
    assert table_reference(['tm', 'tm-noembed']) == 'baseline'


def test_a_knob_screen_sets_each_candidate_against_the_default_and_the_evidence_only_block():
    # the Fashion-MNIST knob screen: each option on the default embedding against the default itself (the option's
    # effect) and against the evidence-only block (the target), besides the baseline
    screen = ['baseline', 'tm-noembed', 'tm-embargmax', 'tm-embargmax-m2', 'tm-embargmax-s234-t4']
    assert set(control_pairs(screen)) == {
        ('tm-noembed', 'baseline'), ('tm-embargmax', 'baseline'), ('tm-embargmax-m2', 'baseline'),
        ('tm-embargmax-s234-t4', 'baseline'), ('tm-embargmax', 'tm-noembed'), ('tm-embargmax-m2', 'tm-embargmax'),
        ('tm-embargmax-m2', 'tm-noembed'), ('tm-embargmax-s234-t4', 'tm-noembed'),
    }  # fmt: skip
    # an option's own evidence-only twin, where it ran, is the evidence-only reference; the pair is not repeated
    # the other way round; a budget or guidance option is no knob (those pairs are the plateau and guidance checks)
    # and an evidence-only block of another budget is no reference (tm-ep2: none of its budget ran)
    assert set(control_pairs(['tm', 'tm-noembed', 'tm-m2', 'tm-noembed-m2', 'tm-ep2', 'tm-noguide'])) == {
        ('tm', 'tm-noembed'), ('tm-m2', 'tm-noembed-m2'), ('tm', 'tm-noguide'), ('tm-m2', 'tm'),
        ('tm-noembed-m2', 'tm-noembed'),
    }  # fmt: skip


def test_the_table_of_a_longer_study_gives_differences_to_its_shortest_baseline(tmp_path, capsys):
    out = tmp_path / 'run'
    assert main(TINY + ['--seeds', '0', '--variants', 'baseline-ep2', 'tm-ep2', '--out', str(out)]) == 0
    md = (out / 'results.md').read_text()
    assert 'difference to `baseline-ep2`' in md and 'Δ vs baseline-ep2' in md
    assert _table_row(md, 'tm-ep2')[4] != '-'  # its difference is there, not a dash for a missing 'baseline'
    assert 'tm-ep2 - baseline-ep2:' in capsys.readouterr().out


def test_a_failed_run_exits_1_with_one_error_line_and_keeps_the_finished_runs(tmp_path, capsys, monkeypatch):
    """A run that fails (here: the TM run diverges) is work that failed: exit status 1, one line on stderr, the
    same line in log.txt, the finished runs kept for --resume."""
    train_one = runner.train_one

    def diverging(variant, seed, *args, **kwargs):
        if variant.name == 'tm':
            raise FloatingPointError(f'{variant.name} seed {seed}: loss is nan at epoch 0')
        return train_one(variant, seed, *args, **kwargs)

    out = tmp_path / 'run'
    args = TINY + ['--seeds', '0', '--variants', 'baseline', 'tm', '--out', str(out)]
    monkeypatch.setattr(runner, 'train_one', diverging)
    assert main(args) == 1
    err = capsys.readouterr().err
    (line,) = err.splitlines()
    assert line.startswith('timm-tm compare: error: tm seed 0: loss is nan at epoch 0 (1 finished run(s) kept in ')
    assert f'error: {line.split("error: ", 1)[1]}' in (out / 'log.txt').read_text().splitlines()
    runs = json.loads((out / 'results.json').read_text())['runs']
    assert [(r['variant'], r['seed']) for r in runs] == [('baseline', 0)]
    assert not (out / 'results.md').exists()
    monkeypatch.setattr(runner, 'train_one', train_one)
    assert main(args + ['--resume']) == 0
    assert '1 finished run(s) kept, 1 to go' in capsys.readouterr().out


@pytest.mark.parametrize(
    'argv, message',
    [
        (['--data-dir', '/nonexistent/folder'], '--data-dir'),
        (['--variants', 'baseline', 'tm-zz'], "'zz'"),
        (['--variants', 'resnet'], "unknown variant 'resnet'"),
        (['--model', 'resnet18'], 'not a tm_* model'),
        (['--dataset', 'cluttered-mnist', '--mnist-npz', '/nonexistent.npz'], '/nonexistent.npz'),
        (['--mnist-npz', '/nonexistent.npz'], '--mnist-npz is for --dataset cluttered-mnist'),
        (['--opt', 'bogus'], "--opt 'bogus' is not a timm optimizer"),
        (['--sched', 'bogus'], "--sched 'bogus' is not a timm scheduler"),
        (['--lr', 'nan'], '--lr must be a finite number'),
        (['--lr', '0'], '--lr must be > 0'),
        (['--weight-decay', 'inf'], '--weight-decay must be a finite number'),
        (['--smoothing', '1.5'], '--smoothing must be < 1'),
        (['--jobs', '0'], '--jobs must be >= 1'),
        (['--device', 'bogus'], "--device 'bogus' is not a torch device"),
        (['--train-size', '0'], '--train-size must be >= 1, got 0'),
        (['--train-size', '-5'], '--train-size must be >= 1, got -5'),
        (['--val-size', '0'], '--val-size must be >= 1, got 0'),
        (['--train-size', '100000'], '--train-size 100000: the train split has only'),
        (['--hflip', '7'], '--hflip must be a probability in [0, 1], got 7.0'),
        (['--hflip', 'nan'], '--hflip must be a probability in [0, 1], got nan'),
        (['--reprob', '0.25'], '--reprob applies to ImageFolder data (--data-dir) only'),
        (['--scale', '0.5', '1'], '--scale applies to ImageFolder data (--data-dir) only'),
        (['--device', 'mps'], "--device 'mps' is not usable here"),
        (['--device', 'meta'], "--device 'meta' is not usable here"),
        (['--variants', 'baseline', 'tm-t100'], '--variants: tm-t100: temperature_init must lie in'),
        (['--variants', 'tm-embtied-embclasses'], "'embtied' and 'embclasses' both set embedding"),
        (['--variants', 'tm-m1-m4'], "'m1' and 'm4' both set templates_per_class"),
        (['--variants', 'tm-w1-noguide'], "'w1' and 'noguide' both set evidence_weight_init"),
        (['--img-size', '100000'], '--img-size must be <= 1024, got 100000'),
        (['--dataset', 'cluttered-mnist', '--canvas', '100000'], '--canvas must be <= 1024, got 100000'),
        (['--batch-size', '100'], '--batch-size 100 is larger than the 64 training images'),
        (['--sched', 'none'], "--sched 'none'"),
        (['--sched', 'plateau'], "--sched 'plateau'"),
        (['--opt', 'fusedadam'], "--opt 'fusedadam'"),
        (['--mixup', '0.8', '--batch-size', '3'], '--mixup / --cutmix need an even --batch-size, got 3'),
        (['--cutmix', '1', '--batch-size', '31'], '--mixup / --cutmix need an even --batch-size, got 31'),
    ],
)
def test_bad_input_is_a_clear_error(argv, message, capsys, tmp_path, monkeypatch):
    """Wrong arguments exit 2 with one line before any work starts: no run trains, nothing is written."""
    monkeypatch.setattr(runner, 'train_one', _no_training)
    with pytest.raises(SystemExit) as e:
        main(TINY + argv + ['--out', str(tmp_path / 'never')])
    assert e.value.code == 2
    err = capsys.readouterr().err
    assert message in err and 'Traceback' not in err, err
    assert err.splitlines()[-1].startswith('timm-tm compare: error: ')
    assert not (tmp_path / 'never').exists()


def _no_training(*args, **kwargs):
    raise AssertionError('a run started before the arguments were checked')


def _npz(path, x, y):
    import numpy as np

    np.savez(path, x=np.asarray(x, dtype=np.uint8), y=np.asarray(y))
    return str(path)


def test_degenerate_or_foreign_data_is_refused_before_anything_is_written(tmp_path, capsys):
    import numpy as np

    rng = np.random.default_rng(0)
    digits = rng.integers(0, 255, (60, 28, 28))
    cases = {
        'one class': (_npz(tmp_path / 'one.npz', digits, np.zeros(60, dtype=np.int64)), 'at least 2'),
        # classes 0-8 in every split but one image of class 9: the stratified split puts it in val only
        'val class unseen': (
            _npz(tmp_path / 'unseen.npz', digits, np.r_[np.arange(59) % 9, 9]),
            'val classes [9] have no training',
        ),
        'garbage': (str(tmp_path / 'garbage.npz'), 'not a readable .npz'),
        'wrong arrays': (str(tmp_path / 'wrong.npz'), 'expected arrays "x" and "y"'),
    }
    (tmp_path / 'garbage.npz').write_bytes(b'PK\x03\x04 not a zip at all')
    np.savez(tmp_path / 'wrong.npz', images=digits)
    for name, (path, message) in cases.items():
        with pytest.raises(SystemExit) as e:
            main(TINY[6:] + ['--dataset', 'cluttered-mnist', '--mnist-npz', path, '--out', str(tmp_path / 'never')])
        assert e.value.code == 2, name
        err = capsys.readouterr().err
        assert message in err, (name, err)
        assert 'Traceback' not in err
        assert not (tmp_path / 'never').exists(), name


def test_corrupted_results_file_under_resume_is_named(tmp_path, capsys):
    out = tmp_path / 'run'
    out.mkdir()
    (out / 'results.json').write_text('{"config": ')
    with pytest.raises(SystemExit) as e:
        main(TINY + ['--seeds', '0', '--variants', 'baseline', '--out', str(out), '--resume'])
    assert e.value.code == 2
    assert str(out / 'results.json') in capsys.readouterr().err
    assert (out / 'results.json').read_text() == '{"config": '  # left as it was


def test_data_dir_without_val_split(tmp_path, capsys):
    (tmp_path / 'train' / 'a').mkdir(parents=True)
    with pytest.raises(SystemExit):
        main(['--data-dir', str(tmp_path)])
    assert 'missing: val/' in capsys.readouterr().err


def test_files_of_another_origin_in_out_are_never_overwritten(tmp_path, capsys):
    out = tmp_path / 'mine'
    out.mkdir()
    (out / 'results.md').write_text('my notes')
    with pytest.raises(SystemExit) as e:
        main(TINY + ['--seeds', '0', '--variants', 'baseline', '--out', str(out)])
    assert e.value.code == 2
    assert 'results.md' in capsys.readouterr().err
    assert (out / 'results.md').read_text() == 'my notes' and sorted(p.name for p in out.iterdir()) == ['results.md']


def test_fashion_mnist_from_a_folder_of_idx_files(tmp_path, capsys):
    from test_data import write_fashion_folder

    write_fashion_folder(tmp_path / 'fm', n_train=64, n_test=30)
    out = tmp_path / 'run'
    argv = ['--dataset', 'fashion-mnist', '--data-dir', str(tmp_path / 'fm')] + TINY[2:]
    argv = [a for a in argv if a not in ('--train-size', '64', '--val-size', '40')]
    assert main(argv + ['--seeds', '0', '--variants', 'baseline', '--out', str(out)]) == 0
    result = json.loads((out / 'results.json').read_text())
    run = result['runs'][0]
    assert (run['num_train'], run['num_val']) == (64, 30)  # the standard split: the test images are the val split
    assert result['config']['hflip'] == 0.5  # flips by default for clothes, not for digits
    assert result['config']['data_dir'] == str(tmp_path / 'fm')


def test_fashion_mnist_without_its_files_is_one_line_saying_how_to_get_them(tmp_path, capsys):
    with pytest.raises(SystemExit) as e:
        main(['--dataset', 'fashion-mnist', '--data-dir', str(tmp_path), '--out', str(tmp_path / 'never')])
    assert e.value.code == 2
    err = capsys.readouterr().err
    assert 'train-images-idx3-ubyte[.gz]' in err and 'apt-get install dataset-fashion-mnist' in err
    assert 'Traceback' not in err and not (tmp_path / 'never').exists()
    with pytest.raises(SystemExit) as e:
        main(['--dataset', 'digits', '--data-dir', str(tmp_path)])
    assert '--data-dir is for --dataset fashion-mnist or an ImageFolder' in capsys.readouterr().err


def test_flips_mirror_the_batch_and_digits_are_not_flipped_by_default():
    from timm_tm.compare.data import load_data

    args = build_parser().parse_args(TINY + ['--seeds', '0'])
    from timm_tm.compare.cli import _check_data_args

    _check_data_args(args, build_parser())
    assert args.hflip == 0.0
    plain = next(load_data(args, 0, torch.device('cpu')).train_batches(0))
    args.hflip = 1.0
    flipped = next(load_data(args, 0, torch.device('cpu')).train_batches(0))
    assert torch.equal(flipped[1], plain[1])
    assert torch.equal(flipped[0], plain[0].flip(-1))


def test_reuse_takes_finished_runs_of_the_same_recipe_only(tmp_path, capsys):
    first, second = tmp_path / 'first', tmp_path / 'second'
    assert main(TINY + ['--seeds', '0', '--variants', 'baseline', '--out', str(first)]) == 0
    reused_file = str(first / 'results.json')
    argv = TINY + ['--seeds', '0', '--variants', 'baseline', 'tm-noembed', '--out', str(second)]
    assert main(argv + ['--reuse', reused_file]) == 0
    log = (second / 'log.txt').read_text()
    assert 'baseline  ' not in log and 'tm-noembed' in log  # only the missing run was trained
    result = json.loads((second / 'results.json').read_text())
    runs = {r['variant']: r for r in result['runs']}
    original = json.loads((first / 'results.json').read_text())['runs'][0]
    assert runs['baseline']['top1'] == original['top1'] and runs['baseline']['reused_from'] == reused_file
    assert 'reused_from' not in runs['tm-noembed'] and result['config']['reused_from'] == [reused_file]
    with pytest.raises(SystemExit) as e:  # another recipe: refused before anything is written
        main(TINY + ['--lr', '0.01', '--seeds', '0', '--out', str(tmp_path / 'never'), '--reuse', reused_file])
    assert e.value.code == 2 and 'differs in: lr' in capsys.readouterr().err
    assert not (tmp_path / 'never').exists()


@pytest.mark.skipif(
    not os.path.isdir(FASHION_MNIST_DIR), reason=f'Fashion-MNIST not installed ({FASHION_MNIST_DIR}; Debian package '
    'dataset-fashion-mnist)',
)  # fmt: skip
def test_a_short_real_fashion_mnist_comparison_learns(tmp_path):
    out = tmp_path / 'run'
    argv = ['--dataset', 'fashion-mnist', '--train-size', '2000', '--val-size', '500', '--channels', '8,16,16,16',
            '--layers', '1,1,1,1', '--epochs', '3', '--warmup-epochs', '0', '--batch-size', '32', '--threads', '1',
            '--jobs', '1', '--seeds', '0', '--variants', 'baseline', '--out', str(out)]  # fmt: skip
    assert main(argv) == 0
    run = json.loads((out / 'results.json').read_text())['runs'][0]
    assert (run['num_train'], run['num_val']) == (2000, 500)
    assert run['top1'] > 30  # 10 classes: chance is 10% (44.4 here after 3 epochs of this tiny model)


@pytest.fixture(scope='module')
def digit_folder(tmp_path_factory):
    """A tiny ImageFolder (train/ and val/, ten digit classes, 16 px PNGs)."""
    from timm_tm.data import load_digits_arrays, split_arrays, write_image_folder

    x, y = load_digits_arrays()
    splits = split_arrays(x[:120], y[:120], val_fraction=0.25, seed=0)
    return write_image_folder(str(tmp_path_factory.mktemp('folder') / 'digits'), splits, size=16)


def _folder_args(root) -> list:
    return TINY[6:] + ['--data-dir', str(root), '--img-size', '16', '--workers', '0', '--seeds', '0']


@pytest.mark.parametrize(
    'argv, message',
    [
        (['--train-size', '20'], '--train-size / --val-size apply to the built-in datasets'),
        (['--val-size', '20'], '--train-size / --val-size apply to the built-in datasets'),
        (['--reprob', '5'], '--reprob must be a probability in [0, 1], got 5.0'),
        (['--scale', '0', '0'], '--scale must be 0 < MIN <= MAX <= 1, got [0.0, 0.0]'),
        (['--scale', 'nan', '1'], '--scale must be 0 < MIN <= MAX <= 1, got [nan, 1.0]'),
        (['--scale', '0.9', '0.5'], '--scale must be 0 < MIN <= MAX <= 1, got [0.9, 0.5]'),
        (['--color-jitter', '-1'], '--color-jitter must be a finite number >= 0, got -1.0'),
        (['--auto-augment', 'garbage'], "--auto-augment 'garbage' is not a timm augmentation policy"),
        (['--batch-size', '100'], '--batch-size 100 is larger than the'),
        (['--workers', '-1'], '--workers must be >= 0, got -1'),
    ],
)
def test_bad_image_folder_options_are_a_clear_error(argv, message, digit_folder, tmp_path, capsys, monkeypatch):
    monkeypatch.setattr(runner, 'train_one', _no_training)
    with pytest.raises(SystemExit) as e:
        main(_folder_args(digit_folder) + argv + ['--out', str(tmp_path / 'never')])
    assert e.value.code == 2
    err = capsys.readouterr().err
    assert message in err and 'Traceback' not in err, err
    assert not (tmp_path / 'never').exists()


def _copy_folder(src, dst):
    import shutil

    shutil.copytree(src, dst)
    return dst


def test_image_folders_a_comparison_cannot_use_are_refused(digit_folder, tmp_path, capsys, monkeypatch):
    """Val classes that train lacks (timm's reader would drop their images), a single class, a symlink loop (which
    would multiply the images): refused, naming the folder, before anything is written."""
    import shutil

    monkeypatch.setattr(runner, 'train_one', _no_training)
    unseen = _copy_folder(digit_folder, tmp_path / 'unseen')
    shutil.rmtree(unseen / 'train' / '7')
    one = _copy_folder(digit_folder, tmp_path / 'one')
    for split in ('train', 'val'):
        for d in (one / split).iterdir():
            if d.name != '3':
                shutil.rmtree(d)
    loop = _copy_folder(digit_folder, tmp_path / 'loop')
    (loop / 'train' / '2' / 'again').symlink_to(loop / 'train' / '2')
    twice = _copy_folder(digit_folder, tmp_path / 'twice')  # one class folder linked into another
    (twice / 'train' / '2' / 'more').symlink_to(twice / 'train' / '5')
    cases = {
        unseen: "val classes ['7'] have no training images",
        one: 'the training split has 1 class: a comparison needs at least 2',
        loop: f'{loop / "train" / "2" / "again"} leads to a folder read already',
        twice: f'{twice / "train" / "2" / "more"} leads to a folder read already',
    }
    for root, message in cases.items():
        with pytest.raises(SystemExit) as e:
            main(_folder_args(root) + ['--out', str(tmp_path / 'never')])
        assert e.value.code == 2, root
        err = capsys.readouterr().err
        assert message in err and 'Traceback' not in err, (root, err)
        assert not (tmp_path / 'never').exists()


def test_all_zero_images_are_refused(tmp_path, capsys):
    import numpy as np

    path = _npz(tmp_path / 'zero.npz', np.zeros((60, 28, 28)), np.arange(60) % 10)
    with pytest.raises(SystemExit) as e:
        main(TINY[6:] + ['--dataset', 'cluttered-mnist', '--mnist-npz', path, '--out', str(tmp_path / 'never')])
    assert e.value.code == 2
    err = capsys.readouterr().err
    assert 'every training pixel is 0: nothing to learn' in err and 'Traceback' not in err, err


def test_out_that_is_a_file_under_a_file_or_in_the_data_is_a_clear_error(tmp_path, capsys, digit_folder):
    (tmp_path / 'file').write_text('mine')
    data = _copy_folder(digit_folder, tmp_path / 'data')
    for argv, out, message in (
        (TINY, tmp_path / 'file', f'--out {tmp_path / "file"} is a file, not a folder'),
        (TINY, tmp_path / 'file' / 'sub', f'--out {tmp_path / "file" / "sub"}: {tmp_path / "file"} is a file'),
        (_folder_args(data), data / 'results', f'--out {data / "results"} is inside --data-dir {data}'),
    ):
        with pytest.raises(SystemExit) as e:
            main(argv + ['--seeds', '0', '--variants', 'baseline', '--out', str(out)])
        assert e.value.code == 2
        err = capsys.readouterr().err
        assert message in err and 'Traceback' not in err, err
        assert (tmp_path / 'file').read_text() == 'mine'
    assert not (data / 'results').exists()


def test_resume_refuses_what_changes_the_numbers(digit_folder, tmp_path, capsys):
    """--workers changes the ImageFolder augmentation stream, --threads and --device the arithmetic: a resume
    with another value would pair runs that did not see the same thing."""
    out = tmp_path / 'run'
    args = _folder_args(digit_folder) + ['--variants', 'baseline', '--out', str(out)]
    assert main(args) == 0
    config = json.loads((out / 'results.json').read_text())['config']
    for change in (['--workers', '1'], ['--threads', '2']):
        with pytest.raises(SystemExit) as e:
            main(args + change + ['--resume'])
        assert e.value.code == 2
        assert f'differs in: {change[0][2:]}' in capsys.readouterr().err
        assert json.loads((out / 'results.json').read_text())['config'] == config  # the recipe is not rewritten
    assert main(args + ['--resume', '--eval-every', '0']) == 0  # what does not change the numbers may differ


def test_a_first_run_that_fails_leaves_a_folder_that_resumes(tmp_path, capsys, monkeypatch):
    """results.json (with no runs) is written before the first run starts: the error line's advice holds."""

    def failing(variant, seed, *args, **kwargs):
        raise RuntimeError('out of memory')

    out = tmp_path / 'run'
    args = TINY + ['--seeds', '0', '--variants', 'baseline', '--out', str(out)]
    monkeypatch.setattr(runner, 'train_one', failing)
    assert main(args) == 1
    (line,) = capsys.readouterr().err.splitlines()
    assert line == (
        f'timm-tm compare: error: out of memory (0 finished run(s) kept in {out / "results.json"}; rerun the same '
        'command with --resume to continue)'
    )
    assert json.loads((out / 'results.json').read_text())['runs'] == []
    monkeypatch.undo()
    assert main(args + ['--resume']) == 0


def test_equal_paired_differences_have_no_p_value_and_are_not_significant():
    """Zero variance: a t-test has no p. Three seeds each one val image apart are not 'significantly better'."""
    from timm_tm.compare import paired, verdict

    runs = [dict(variant='baseline', seed=s, top1=90.0 + s) for s in range(3)]
    runs += [dict(variant='tm', seed=s, top1=91.0 + s) for s in range(3)]
    d = paired(runs, 'tm', 'baseline')
    assert d['p_value'] is None
    line = verdict(d)
    assert line == (
        'tm vs baseline: no significant difference (+1.00 ± 0.00 points, paired t-test p n/a: every seed differs '
        'by the same amount, better on 3/3 seeds)'
    )
    same = [dict(r, variant='tm', top1=r['top1']) for r in runs[:3]]
    assert 'p n/a: every seed gives the same top-1' in verdict(paired(runs[:3] + same, 'tm', 'baseline'))


def test_contradictory_variant_options_are_refused_whatever_the_options():
    """Two options that set the same model keyword (or both freeze w, or both set the epochs) contradict each
    other or repeat: refused, whichever options they are, instead of the last one winning."""
    from itertools import combinations

    examples = ['m2', 'm4', 's4', 's34', 'w0', 'w1', 't8', 't30', 'fixw', 'noguide', 'max', 'lse', 'noembed',
                'embtied', 'embtemplates', 'embclasses', 'evgrad', 'evlogits', 'ep2', 'ep3']  # fmt: skip

    def settings(tok):
        v = parse_variant(f'tm-{tok}')
        return (
            set(v.model_kwargs)
            | ({'freeze'} if v.freeze_evidence_weight else set())
            | ({'epochs'} if v.epochs else set())
        )

    for a, b in combinations(examples, 2):
        if settings(a) & settings(b):
            with pytest.raises(ValueError, match=f"'{a}' and '{b}' both set"):
                parse_variant(f'tm-{a}-{b}')
        else:
            parse_variant(f'tm-{a}-{b}')
    with pytest.raises(ValueError, match="'ep2' and 'ep3' both set"):
        parse_variant('baseline-ep2-ep3')


def test_array_data_that_would_not_fit_in_memory_is_refused_before_it_is_made():
    from timm_tm.compare.data import check_memory

    check_memory(1797, 16, 8, '--img-size 16', runs=2)  # the digits at their default size
    with pytest.raises(ValueError, match=r'--img-size 1024: 1000000 images of 1024 x 1024 px take .* GiB in memory'):
        check_memory(10**6, 1024, 8, '--img-size 1024', runs=2)


def test_another_timm_cnn_against_itself_without_tm_blocks(tmp_path, capsys):
    """--model tm_efficientnet_b0: the baseline is efficientnet_b0 (tm_stages=()); --channels and --layers shape the
    tm_resnet models only, and are refused for it."""
    out = tmp_path / 'run'
    argv = [
        '--dataset', 'digits', '--train-size', '64', '--val-size', '40', '--img-size', '32', '--epochs', '1',
        '--warmup-epochs', '0', '--batch-size', '32', '--threads', '1', '--jobs', '1', '--model', 'tm_efficientnet_b0',
        '--seeds', '0',
    ]  # fmt: skip
    assert main(argv + ['--variants', 'baseline', 'tm', '--out', str(out)]) == 0
    runs = {r['variant']: r for r in json.loads((out / 'results.json').read_text())['runs']}
    assert runs['baseline']['evidence_weight'] == {} and list(runs['tm']['evidence_weight']) == ['blocks.6.1']
    with pytest.raises(SystemExit) as e:
        main(argv + ['--channels', '8,16,16,16', '--out', str(tmp_path / 'never')])
    assert e.value.code == 2
    assert '--channels and --layers shape the tm_resnet models' in capsys.readouterr().err
