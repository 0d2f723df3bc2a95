"""``timm-tm bench`` runs end to end on a tiny configuration and writes the results a user reads.

Nothing here asserts on wall time: only on structure, on numbers that are exact (params, the TM's MACs) and on
numbers that must be consistent with each other (a ratio of medians).
"""

import json
import stat
from pathlib import Path

import pytest

from timm_tm.bench import cli as bench_cli
from timm_tm.bench import main, parse_models
from timm_tm.files import process_umask
from timm_tm.layers import DEFAULT_EMBEDDING

TINY = ['--img-size', '64', '--batch-size', '2', '--warmup', '1', '--min-seconds', '0', '--threads', '1']


# the default block embeds with the templates' own directions (a per-channel scale, a second K x C product)
assert DEFAULT_EMBEDDING in ('argmax', 'tied', 'none'), 'the counts below are for these embeddings'
EMBEDS = DEFAULT_EMBEDDING != 'none'


def _tm_params(channels_and_classes):
    # templates (K x C) + temperature and evidence weight per block, + the embedding's per-channel scale
    return sum(c * k + 2 + (c if EMBEDS else 0) for c, k in channels_and_classes)


def test_bench_end_to_end_writes_json(tmp_path, capsys):
    pytest.importorskip('fvcore')
    out = tmp_path / 'bench.json'
    assert main(['--models', '18', '--rounds', '2', '--num-classes', '10', *TINY, '-o', str(out)]) == 0
    printed = capsys.readouterr().out
    assert 'tm_resnet18 vs resnet18' in printed and '| tm_resnet18 / resnet18 | eager |' in printed

    results = json.loads(out.read_text())
    assert results['config']['device'] == 'cpu' and results['config']['threads'] == 1
    assert results['machine']['cpu'] and results['machine']['torch_threads'] == 1
    assert 'VmHWM' in results['memory_method']
    (pair,) = results['pairs']
    assert (pair['tm_model'], pair['base_model'], pair['num_classes']) == ('tm_resnet18', 'resnet18', 10)

    prof = pair['profile']
    # exact: tm_resnet18's TM blocks follow stages 3 (256 channels) and 4 (512 channels), 10 templates each
    extra = _tm_params([(256, 10), (512, 10)])
    assert prof['tm']['params_m'] * 1e6 - prof['base']['params_m'] * 1e6 == pytest.approx(extra, abs=0.5)
    # the match (and the embedding): C * K * H * W multiply-adds each per block (64 px: stage 3 is 4 x 4, stage 4 is
    # 2 x 2), plus the small elementwise work fvcore counts
    tm_macs = (256 * 10 * 16 + 512 * 10 * 4) * (2 if EMBEDS else 1)
    extra_macs = (prof['tm']['gmacs'] - prof['base']['gmacs']) * 1e9
    assert tm_macs - 1 <= extra_macs <= 1.1 * tm_macs  # (GMACs are rounded floats)
    assert prof['gmacs_overhead'] == pytest.approx(prof['tm']['gmacs'] / prof['base']['gmacs'] - 1)

    (run,) = pair['runs']
    assert run['variant'] == 'eager'
    for mode in ('infer', 'train'):
        block = run[mode]
        ips = block['images_per_s']
        for name in ('tm_resnet18', 'resnet18'):
            assert len(ips[name]['per_round']) == 2 and all(v > 0 for v in ips[name]['per_round'])
            assert ips[name]['min'] <= ips[name]['median'] <= ips[name]['max']
        assert block['ratio'] == pytest.approx(ips['tm_resnet18']['median'] / ips['resnet18']['median'])
        rr = block['round_ratios']
        assert len(rr['per_round']) == 2 and rr['min'] <= rr['median'] <= rr['max']
        memory = run['memory_mb'][mode]
        assert memory['tm_resnet18'] > 0 and memory['resnet18'] > 0
        assert memory['ratio'] == pytest.approx(memory['tm_resnet18'] / memory['resnet18'])
    # training holds gradients and optimizer state on top of what inference needs
    assert run['memory_mb']['train']['resnet18'] > run['memory_mb']['infer']['resnet18']
    assert set(run['targets_met']) == {'infer_ratio', 'train_ratio', 'train_memory_ratio', 'gmacs_overhead'}
    assert results['markdown'].startswith('| pair |')


def test_scale_sweep_grows_with_templates(tmp_path):
    pytest.importorskip('fvcore')
    out = tmp_path / 'scale.json'
    argv = ['--scale', '--models', '18', '--rounds', '1', '--modes', 'infer', *TINY, '-o', str(out)]
    argv += ['--scale-classes', '10,40', '--scale-templates', '1,2', '--scale-templates-classes', '10']
    argv += ['--scale-stages', '4']
    assert main(argv) == 0
    rows = json.loads(out.read_text())['scale']
    configs = [(r['num_classes'], r['tm_kwargs'].get('templates_per_class'), tuple(r['tm_stages'])) for r in rows]
    assert configs == [(10, 1, (3, 4)), (40, 1, (3, 4)), (10, 2, (3, 4)), (1000, 1, (4,))]
    overhead = [r['profile']['gmacs_overhead'] for r in rows]
    # 4x the templates (40 classes) cost more than 2 per class at 10 classes, which cost more than 1
    assert overhead[1] > overhead[2] > overhead[0] > 0
    for row in rows:
        assert 'memory_mb' not in row['runs'][0] and row['runs'][0]['infer']['ratio'] > 0


@pytest.mark.parametrize(
    'argv,message',
    [
        (['--models', '7'], '--models'),
        (['--models', 'resnet50s'], '--models'),
        (['--modes', 'fast'], '--modes'),
        (['--batch-size', '0'], '--batch-size'),
        (['--device', 'tpu'], '--device'),
        (['--scale', '--scale-classes', '10,x'], '--scale-classes'),
        (['--tm-stages', '5'], '--tm-stages'),
        (['--models', 'convnext_tiny', '--tm-stages', '4'], '--tm-stages: tm_convnext_tiny: tm_stages must be'),
        (['--tm-stages', '3,3'], '--tm-stages'),
        (['--scale', '--scale-stages', '4;0'], '--scale-stages'),
        (['--scale', '--scale-templates-classes', '0'], '--scale-templates-classes'),
        (['--scale-classes', '10,x'], '--scale-classes'),  # checked without --scale too: a typo is not ignored
        (['--scale', '--scale-classes', '', '--scale-templates', '', '--scale-stages', ''], '--scale: nothing'),
        (['--min-seconds', 'nan'], '--min-seconds'),  # a NaN passes every comparison: min_seconds < 0 too
        (['--min-seconds', 'inf'], '--min-seconds'),  # steps per round = ceil(inf): an OverflowError
        (['--min-seconds', '-1'], '--min-seconds'),
    ],
)
def test_bad_arguments_name_the_parameter(argv, message, tmp_path, capsys):
    with pytest.raises(SystemExit) as exc:
        main([*argv, '--no-memory', '--no-profile', '-o', str(tmp_path / 'x.json')])
    assert exc.value.code == 2
    assert message in capsys.readouterr().err
    assert not (tmp_path / 'x.json').exists()


def test_parse_models():
    assert parse_models('18,50,101') == ['tm_resnet18', 'tm_resnet50', 'tm_resnet101']
    assert parse_models('resnet50,tm_resnet18') == ['tm_resnet50', 'tm_resnet18']
    assert parse_models('convnext_tiny,tm_regnety_016,efficientnet_b0') == [
        'tm_convnext_tiny', 'tm_regnety_016', 'tm_efficientnet_b0'
    ]  # fmt: skip
    assert parse_models('resnet50d, tm_seresnext50_32x4d,wide_resnet50_2') == [
        'tm_resnet50d',
        'tm_seresnext50_32x4d',
        'tm_wide_resnet50_2',
    ]
    for bad in ('resnet50s', 'tm_resnet18_small', '7'):  # not in the family; no twin in timm; no such depth
        with pytest.raises(ValueError, match=f"--models: '{bad}' is none of resnet18, resnet26, .*resnet50d"):
            parse_models(bad)
    for bad in ('resnet18_small', 'mobilenetv3_large_100'):  # no tm_* model: one built on no timm model
        with pytest.raises(ValueError, match=f'--models: {bad!r} is none of .*resnet50d, .*convnext_tiny'):
            parse_models(bad)


@pytest.mark.parametrize(
    'base, tm_blocks',
    [
        ('resnet18d', [(256, 10), (512, 10)]),  # a variant against its own base (resnet18d, not resnet18)
        ('efficientnet_b0', [(320, 10)]),  # a new family: the TM block after blocks.6 (320 channels)
    ],
)
def test_a_tm_model_is_benched_against_its_base_side_by_side(base, tm_blocks, tmp_path, capsys):
    """tm_<base> against timm's <base>: both in the results and the printed table; the same backbone, so the TM
    blocks' parameters (``tm_blocks``: channels and classes per block) are the only difference."""
    pytest.importorskip('fvcore')
    out = tmp_path / 'bench.json'
    argv = ['--models', base, '--rounds', '1', '--modes', 'infer', '--no-memory', '--num-classes', '10']
    assert main([*argv, *TINY, '-o', str(out)]) == 0
    assert f'| tm_{base} / {base} | eager |' in capsys.readouterr().out
    (pair,) = json.loads(out.read_text())['pairs']
    assert (pair['tm_model'], pair['base_model']) == (f'tm_{base}', base)
    prof = pair['profile']
    assert prof['tm']['params_m'] * 1e6 - prof['base']['params_m'] * 1e6 == pytest.approx(
        _tm_params(tm_blocks), abs=0.5
    )


QUICK = ['--models', '18', '--rounds', '1', '--modes', 'infer', '--no-memory', '--no-profile', *TINY]


@pytest.mark.parametrize('force', [False, True])
def test_output_folder_is_refused_before_the_run(force, tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    for output in ('.', str(tmp_path), 'sub/'):
        with pytest.raises(SystemExit) as exc:
            main([*QUICK, '-o', output, *(['--force'] if force else [])])
        assert exc.value.code == 2
        (line,) = [x for x in capsys.readouterr().err.splitlines() if 'error' in x]
        assert '--output' in line and 'directory' in line
    assert not list(tmp_path.iterdir())  # nothing written, no folder made


def test_existing_output_is_kept_unless_force(tmp_path, capsys):
    out = tmp_path / 'bench.json'
    out.write_text('earlier results\n')
    with pytest.raises(SystemExit) as exc:
        main([*QUICK, '-o', str(out)])
    assert exc.value.code == 2
    err = capsys.readouterr().err
    assert '--output' in err and str(out) in err and '--force' in err
    assert out.read_text() == 'earlier results\n'  # refused before the run: nothing measured, nothing lost

    assert main([*QUICK, '-o', str(out), '--force']) == 0
    assert json.loads(out.read_text())['pairs'][0]['tm_model'] == 'tm_resnet18'
    assert sorted(p.name for p in tmp_path.iterdir()) == ['bench.json']  # no temporary file left


def test_results_file_that_appears_during_the_run_is_kept(tmp_path, monkeypatch, capsys):
    out = tmp_path / 'bench.json'
    real_bench_pair = bench_cli.bench_pair

    def bench_pair_while_someone_writes_the_output(*args, **kwargs):
        out.write_text('written by someone else\n')
        return real_bench_pair(*args, **kwargs)

    monkeypatch.setattr(bench_cli, 'bench_pair', bench_pair_while_someone_writes_the_output)
    assert main([*QUICK, '-o', str(out)]) == 1
    (line,) = capsys.readouterr().err.splitlines()
    assert line.startswith(f'timm-tm bench: error: --output {out} appeared during the run and is kept')
    kept = Path(line.rsplit(' ', 1)[-1])
    assert out.read_text() == 'written by someone else\n'
    assert json.loads(kept.read_text())['pairs'][0]['tm_model'] == 'tm_resnet18'  # the results are not lost either
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted(['bench.json', kept.name])


def test_output_that_cannot_be_written_after_the_run_is_one_error_line(tmp_path, monkeypatch, capsys):
    out = tmp_path / 'results' / 'bench.json'  # its folder does not exist yet: made when the results are written
    real_bench_pair = bench_cli.bench_pair

    def bench_pair_while_the_folder_becomes_a_file(*args, **kwargs):
        (tmp_path / 'results').write_text('not a folder\n')
        return real_bench_pair(*args, **kwargs)

    monkeypatch.setattr(bench_cli, 'bench_pair', bench_pair_while_the_folder_becomes_a_file)
    assert main([*QUICK, '-o', str(out)]) == 1
    (line,) = capsys.readouterr().err.splitlines()  # no traceback
    assert line.startswith(f'timm-tm bench: error: --output: cannot write {out}')


def test_results_file_is_shareable(tmp_path):
    # written through a temporary file (mode 0600), then given the mode open() would have given it
    out = tmp_path / 'bench.json'
    assert main([*QUICK, '-o', str(out)]) == 0
    assert stat.S_IMODE(out.stat().st_mode) == 0o666 & ~process_umask()


def test_autocast_runs(tmp_path):
    # the config names the dtype ('bfloat16', for JSON); autocast needs the torch dtype itself
    out = tmp_path / 'bench.json'
    assert main([*QUICK, '--modes', 'infer,train', '--amp-dtype', 'bfloat16', '-o', str(out)]) == 0
    results = json.loads(out.read_text())
    assert results['config']['amp_dtype'] == 'bfloat16'
    assert results['pairs'][0]['runs'][0]['train']['ratio'] > 0


def test_a_failed_memory_subprocess_is_one_error_line(tmp_path, monkeypatch, capsys):
    """Exit 1 with the subprocess's exception line, no traceback, and no results file."""
    import subprocess

    import timm_tm.bench.memory as memory

    failed = subprocess.CompletedProcess(
        [], 1, stdout='', stderr='Traceback (most recent call last):\n  ...\nMemoryError: boom\n'
    )
    monkeypatch.setattr(memory.subprocess, 'run', lambda *a, **k: failed)
    out = tmp_path / 'bench.json'
    argv = [a for a in QUICK if a != '--no-memory']
    assert main([*argv, '-o', str(out)]) == 1
    err = capsys.readouterr().err.strip()
    assert err.startswith('timm-tm bench: error: the memory subprocess for ') and err.endswith('MemoryError: boom')
    assert len(err.splitlines()) == 1 and not out.exists()
