"""tools/benchmark_speed.py on a tiny FCN-5L run: the rows it writes
(``--json``) and the tables it prints."""
import json
import re

import pytest

import benchmark_speed as bs  # tools/ is on sys.path (conftest)

pytestmark = pytest.mark.usefixtures('single_thread')

#: FCN 5L vanilla keeps the inputs of its 5 counted convs (the
#: figures of tests/test_benchmark_memory.py: 1.125 MiB at batch 2, 64x64),
#: here at batch 1 and 32x32: 1/8 of it
VANILLA_KEPT_MIB = 1.125 / 8


@pytest.fixture(scope='module')
def speed(tmp_path_factory):
    path = tmp_path_factory.mktemp('speed') / 'speed.json'
    results = bs.main([
        '--models', 'fcn', '--setups', '5L', '--methods', 'hosvd',
        '--batch-size', '1', '--crop', '32', '32', '--iters', '2',
        '--warmup', '1', '--layer-repeats', '1', '--threads', '1', '--json',
        str(path)
    ])
    with open(path) as f:
        written = json.load(f)
    return results, written


def test_step_rows(speed, capsys):
    results, written = speed
    assert written == json.loads(json.dumps(results))
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
    (result, ) = speed[0]
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


def test_printed_tables(tmp_path, capsys):
    bs.main([
        '--models', 'fcn', '--setups', '5L', '--methods', 'vanilla',
        '--batch-size', '1', '--crop', '32', '32', '--iters', '1',
        '--warmup', '1', '--no-layers', '--threads', '1'
    ])
    captured = capsys.readouterr()
    lines = [line for line in captured.out.splitlines()
             if line.startswith('|')]
    assert len(lines) == 3  # header, rule, vanilla
    header = [cell.strip() for cell in lines[0].strip('|').split('|')]
    assert header == [column for _, column, _ in bs.STEP_COLUMNS]
    assert re.match(r'\| vanilla +\| exact +\|( +\d+ \|){4} +1\.000 \|',
                    lines[2])
    assert '## fcn 5L: batch 1, crop 32x32, 1 measured rounds' in captured.out
    assert 'round 2/2 measured: vanilla, lean exact' in captured.err


def test_lean_loss_reaches_every_contender():
    args = bs.parse_args(['--models', 'fcn', '--setups', '5L', '--methods',
                          'vanilla', 'hosvd', '--lean-loss', '--batch-size',
                          '1', '--crop', '32', '32', '--device', 'cpu'])
    from mmseg.utils import register_all_modules
    from mmseg_hosvd.lean_loss import LeanLossEncoderDecoder
    register_all_modules()
    for method in args.methods:
        contender = bs.Contender(method, 'fcn', '5L', args)
        assert isinstance(contender.model, LeanLossEncoderDecoder), method
    args = bs.parse_args(['--models', 'fcn', '--setups', '5L', '--crop',
                          '32', '32', '--device', 'cpu'])
    assert not isinstance(bs.Contender('hosvd', 'fcn', '5L', args).model,
                          LeanLossEncoderDecoder)
