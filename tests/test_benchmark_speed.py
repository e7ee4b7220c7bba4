"""The speed benchmark (tools/benchmark_speed.py, run through
:mod:`mmseg_hosvd.bench.speed`) on a tiny FCN-5L run: the rows it writes
(``--json``) and the tables it prints."""
import json
import os.path as osp
import re
import subprocess
import sys

import pytest

from conftest import CONFIGS, REPO
from mmseg_hosvd.bench.speed import (STEP_COLUMNS, Contender, SpeedBenchmark,
                                     parse_speed_args)

pytestmark = pytest.mark.usefixtures('single_thread')

#: FCN 5L vanilla keeps the inputs of its 5 counted convs (the
#: figures of tests/test_benchmark_memory.py: 1.125 MiB at batch 2, 64x64),
#: here at batch 1 and 32x32: 1/8 of it
VANILLA_KEPT_MIB = 1.125 / 8


def speed_results(argv):
    """What ``tools/benchmark_speed.py ARGV`` computes, per model and
    setup: ``dict(model, setup, steps, layers)`` (it runs with the test's
    single thread)."""
    from mmseg.utils import register_all_modules
    register_all_modules()
    args = parse_speed_args(argv)
    results = []
    for model in args.models:
        for setup in args.setups:
            bench = SpeedBenchmark(args, model, setup, CONFIGS)
            bench.run_rounds(lambda line: None)
            results.append(dict(model=model, setup=setup,
                                steps=bench.step_rows(),
                                layers=bench.layer_rows()))
    return results


@pytest.fixture(scope='module')
def speed():
    return speed_results([
        '--models', 'fcn', '--setups', '5L', '--methods', 'hosvd',
        '--batch-size', '1', '--crop', '32', '32', '--iters', '2',
        '--warmup', '1', '--layer-repeats', '1', '--threads', '1'
    ])


def test_step_rows(speed, capsys):
    results = speed
    assert json.loads(json.dumps(results))[0]['steps'] == results[0][
        'steps']
    (result, ) = results
    assert (result['model'], result['setup']) == ('fcn', '5L')
    vanilla, hosvd = result['steps']
    # vanilla is always added, first: the ratios are to it
    assert vanilla['method'] == 'vanilla'
    assert hosvd['method'] == 'hosvd (eps 0.8)'
    assert vanilla['lean_backward'] == hosvd['lean_backward'] == 'exact'
    assert vanilla['step_ratio'] == vanilla['paired_ratio'] == 1
    for row in (vanilla, hosvd):
        assert row['forward_ms'] > 0 and row['backward_ms'] > 0
        assert row['optimizer_ms'] > 0
        assert row['step_ms'] >= max(row['forward_ms'], row['backward_ms'])
        assert row['lean_ratio'] == 1  # one lean mode: itself
    assert hosvd['step_ratio'] == pytest.approx(hosvd['step_ms'] /
                                                vanilla['step_ms'])
    assert vanilla['kept_mib'] == pytest.approx(VANILLA_KEPT_MIB)
    assert 0 < hosvd['kept_mib'] < vanilla['kept_mib']
    assert vanilla['ranks'] == '-'
    assert re.fullmatch(r'(\(\d+,\d+,\d+,\d+\) ?)+( \.\.\.)?',
                        hosvd['ranks'])


def test_layer_rows(speed):
    (result, ) = speed
    layers = result['layers']
    # the 5 counted convs of FCN 5L, each reading its own input
    assert [r['input'] for r in layers] == [
        'bb.layer4.1.conv1', 'bb.layer4.1.conv2', 'head.convs.0.conv',
        'head.convs.1.conv', 'head.conv_cat.conv'
    ]
    assert layers[-1]['shape'] == '(1, 640, 4, 4)'
    for row in layers:
        assert row['conv_ms'] > 0 and row['hosvd_ms'] > 0
        assert row['hosvd_per_conv'] == pytest.approx(row['hosvd_ms'] /
                                                      row['conv_ms'])
        assert re.fullmatch(r'\(\d+, \d+, \d+, \d+\)', row['ranks'])


def test_printed_tables_and_json(tmp_path):
    """The tool itself (a subprocess): its tables, progress and --json."""
    path = tmp_path / 'speed.json'
    result = subprocess.run([
        sys.executable, osp.join(REPO, 'tools', 'benchmark_speed.py'),
        '--models', 'fcn', '--setups', '5L', '--methods', 'vanilla',
        '--batch-size', '1', '--crop', '32', '32', '--iters', '1',
        '--warmup', '1', '--no-layers', '--threads', '1', '--device', 'cpu',
        '--json', str(path)
    ], capture_output=True, text=True, timeout=600)
    assert result.returncode == 0, result.stderr[-3000:]
    lines = [line for line in result.stdout.splitlines()
             if line.startswith('|')]
    assert len(lines) == 3  # header, rule, vanilla
    header = [cell.strip() for cell in lines[0].strip('|').split('|')]
    assert header == [column for _, column, _ in STEP_COLUMNS]
    assert re.match(r'\| vanilla +\| exact +\|( +\d+ \|){4} +1\.000 \|',
                    lines[2])
    assert ('## fcn 5L: batch 1, crop 32x32, 1 measured rounds after 1 '
            'warm-up, lean loss off' in result.stdout)
    assert 'round 2/2 measured: vanilla, lean exact' in result.stderr
    with open(path) as f:
        (written, ) = json.load(f)
    assert (written['model'], written['setup'], written['layers']) == (
        'fcn', '5L', [])
    (row, ) = written['steps']
    assert list(row) == [key for key, _, _ in STEP_COLUMNS]
    cells = [cell.strip() for cell in lines[2].strip('|').split('|')]
    assert cells[5] == f"{row['step_ms']:.0f}" and row['step_ratio'] == 1


def test_lean_loss_reaches_every_contender():
    args = parse_speed_args(['--models', 'fcn', '--setups', '5L',
                             '--methods', 'vanilla', 'hosvd', '--lean-loss',
                             'on', '--batch-size', '1', '--crop', '32', '32',
                             '--device', 'cpu'])
    from mmseg.utils import register_all_modules
    from mmseg_hosvd.lean_loss import LeanLossEncoderDecoder
    register_all_modules()
    assert args.lean_loss == [True]
    for method in args.methods:
        contender = Contender(method, 'fcn', '5L', args, CONFIGS,
                              lean_loss=True)
        assert isinstance(contender.model, LeanLossEncoderDecoder), method
        assert contender.label == f'{method}, lean exact, lean loss'
    args = parse_speed_args(['--models', 'fcn', '--setups', '5L', '--crop',
                             '32', '32', '--device', 'cpu'])
    assert args.lean_loss == [False]
    assert not isinstance(
        Contender('hosvd', 'fcn', '5L', args, CONFIGS).model,
        LeanLossEncoderDecoder)


def test_lean_loss_sweep_names_its_rows():
    """``--lean-loss off on``: every method twice, the ``on`` rows named
    so, each compared with its own lean loss's first lean mode."""
    args = parse_speed_args(['--methods', 'hosvd', '--lean-loss', 'off',
                             'on', 'on', '--device', 'cpu'])
    assert args.lean_loss == [False, True]

    class Timed:
        def __init__(self, method, lean_loss, step):
            self.method, self.lean_loss = method, lean_loss
            self.lean_backward = 'exact'
            self.last_stats = {}
            self.times = dict(forward=[step], backward=[step],
                              optimizer=[step], step=[step])

        def ranks_label(self):
            return '-'

    from mmseg_hosvd.bench.speed import step_rows
    rows = step_rows([Timed('vanilla', False, 1.0),
                      Timed('vanilla', True, 0.5),
                      Timed('hosvd', False, 2.0),
                      Timed('hosvd', True, 1.0)], args)
    assert [r['method'] for r in rows] == [
        'vanilla', 'vanilla, lean loss', 'hosvd (eps 0.8)',
        'hosvd (eps 0.8), lean loss']
    assert [r['step_ratio'] for r in rows] == [1.0, 0.5, 2.0, 1.0]
    assert [r['lean_ratio'] for r in rows] == [1.0] * 4
