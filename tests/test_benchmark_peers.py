"""The memory benchmark's (tools/benchmark_memory.py) peers as rows: method
``checkpoint`` (exact gradients through the step path), ``--amp`` twins,
``--lean-loss``, and a measured ``step_peak_mib`` on every row."""
import csv
import json
import math
import re
import os.path as osp

import pytest
import torch

from conftest import CONFIGS, REPO
from mmseg_hosvd.bench.memory import (load_row_config, parse_memory_args,
                                      rows_of, run_memory_benchmark)
from mmseg_hosvd.bench.report import markdown_table
from mmseg_hosvd.bench.rows import DEFAULT_LEAN_BACKWARD, BenchmarkRow
from mmseg_hosvd.bench import (METHODS, TrainingStep, leaf_config_path,
                               leaf_tag, load_leaf_config, parse_leaf_tag,
                               synthetic_batches)
from mmseg_hosvd.checkpointing import CheckpointedModule
from mmseg_hosvd.engine import ActivationCompressionHook
from mmseg_hosvd.lean_loss import install_lean_loss

pytestmark = pytest.mark.usefixtures('single_thread')

B, CROP = 1, 32
ARGS = [
    '--models', 'fcn', '--setups', '5L', '--methods', 'vanilla',
    'checkpoint', 'hosvd', '--eps', '0.8', '--lean-backward', 'off',
    '--batch-size', str(B), '--crop', str(CROP), str(CROP), '--iters', '1',
    '--device', 'cpu', '--amp'
]
#: FCN 10L's per-block placement (tests/test_checkpointing.py)
FCN_10L_BLOCKS = [
    'backbone.layer3.1', 'backbone.layer4.0', 'backbone.layer4.1',
    'decode_head.convs.0', 'decode_head.convs.1', 'decode_head.conv_cat'
]


def benchmark(argv):
    """What ``tools/benchmark_memory.py ARGV`` runs: its records."""
    return run_memory_benchmark(parse_memory_args(argv), CONFIGS, REPO)


@pytest.fixture(scope='module')
def peers(tmp_path_factory):
    out = str(tmp_path_factory.mktemp('peers'))
    records = benchmark(ARGS + ['--out', out])
    return out, records


def test_every_row_has_a_positive_step_peak(peers):
    _, records = peers
    assert [(r['method'], r['amp']) for r in records] == [
        ('vanilla', False), ('vanilla', True), ('checkpoint', False),
        ('checkpoint', True), ('hosvd', False), ('hosvd', True)]
    for record in records:
        assert record['step_peak_mib'] > 0, record['method']
        # the peak holds at least the trainable parameters' gradients
        # (float32, created inside the step: set to None by zero_grad)
        assert record['step_peak_mib'] * 2**20 >= 4 * record[
            'trainable_params']
        assert record['cuda_peak_mib'] is None  # CPU run
        assert record['lean_loss'] is False


def test_checkpoint_rows_run_the_vanilla_config_checkpointed(peers):
    _, records = peers
    by_key = {(r['method'], r['amp']): r for r in records}
    checkpoint = by_key['checkpoint', False]
    vanilla = by_key['vanilla', False]
    assert checkpoint['config'] == vanilla['config']
    assert checkpoint['checkpointing'] == 'block'
    assert vanilla['checkpointing'] is None
    assert checkpoint['trainable_params'] == vanilla['trainable_params']
    # checkpointed modules keep no activation of their own for backward
    assert checkpoint['step_saved_mib_mean'] < vanilla['step_saved_mib_mean']
    # no graph walk through checkpointed modules (it would recompute them)
    assert set(checkpoint['step_saved_groups_mib'].values()) == {None}
    assert checkpoint['breakdown']['by_saved'] == {}


def test_amp_twins_are_bfloat16_on_the_cpu(peers):
    _, records = peers
    for plain, amp in zip(records[::2], records[1::2]):
        assert (plain['method'], plain['amp'], amp['amp']) == (
            amp['method'], False, True)
        # bf16 autocast: the trainable weights are cast per step, so the
        # step saves fewer of them as parameters than float32 does
        assert amp['step_saved_param_mib_mean'] < plain[
            'step_saved_param_mib_mean'] or plain['method'] == 'checkpoint'


def test_outputs_have_the_peak_column(peers):
    out, records = peers
    table = markdown_table(records)
    header = [cell.strip() for cell in table.splitlines()[0].split('|')]
    column = header.index('step peak MiB')
    assert header[column - 1] == 'step saved MiB'
    for line, record in zip(table.splitlines()[2:], records):
        cells = [cell.strip() for cell in line.split('|')]
        assert cells[column] == f"{record['step_peak_mib']:.1f}"
    assert '| fcn | 5L | checkpoint, amp |' in re.sub(' +', ' ', table)
    with open(osp.join(out, 'results.csv')) as f:
        rows = list(csv.DictReader(f))
    assert [float(row['step_peak_mib']) for row in rows] == pytest.approx(
        [r['step_peak_mib'] for r in records])
    with open(osp.join(out, 'results.json')) as f:
        assert [r['step_peak_mib'] for r in json.load(f)] == [
            r['step_peak_mib'] for r in records]


def test_lean_loss_argument_reaches_the_hook_config():
    args = parse_memory_args(['--lean-loss', 'off', 'on'])
    assert args.lean_loss == [False, True]
    rows = rows_of(args)
    assert [row.lean_loss for row in rows[:2]] == [False, True]
    cfg, _ = load_row_config(CONFIGS, 'fcn', '5L', 'checkpoint', None,
                             (CROP, CROP), 'exact', lean_loss=True)
    assert cfg.default_hooks.compression.method == 'vanilla'
    assert cfg.default_hooks.compression.lean_loss is True
    cfg, _ = load_row_config(CONFIGS, 'fcn', '5L', 'hosvd', 0.8,
                             (CROP, CROP))
    assert 'lean_loss' not in cfg.default_hooks.compression


def test_lean_loss_rows(tmp_path):
    records = benchmark([
        '--models', 'fcn', '--setups', '5L', '--methods', 'checkpoint',
        'hosvd', '--eps', '0.8', '--lean-backward', 'all', '--lean-loss',
        'off', 'on', '--batch-size', '2', '--crop', '64', '64', '--iters',
        '1', '--device', 'cpu', '--out', str(tmp_path)
    ])
    assert [(r['method'], r['lean_loss']) for r in records] == [
        ('checkpoint', False), ('checkpoint', True), ('hosvd', False),
        ('hosvd', True)]
    for off, on in zip(records[::2], records[1::2]):
        assert on['step_peak_mib'] > 0
        assert on['step_saved_mib_mean'] < off['step_saved_mib_mean']


def _step(checkpointing=None, lean_loss=False):
    """FCN 10L vanilla step path in float64."""
    from mmseg.utils import register_all_modules
    register_all_modules()
    cfg = load_leaf_config(CONFIGS, 'fcn', '10L', 'vanilla',
                           crop=(CROP, CROP))
    cfg.model.backbone.init_cfg = None
    step = TrainingStep.from_config(cfg, seed=3,
                                    activation_checkpointing=checkpointing)
    if lean_loss:
        install_lean_loss(step.model)
    step.model.double()
    return step


@pytest.mark.parametrize('lean_loss', [False, True])
def test_checkpoint_gradients_equal_vanilla(lean_loss):
    data = next(synthetic_batches(2, (CROP, CROP), 21, seed=5))
    expected = _step().gradients(data)
    step = _step('block', lean_loss)
    paths = [p for p, m in step.model.named_modules()
             if isinstance(m, CheckpointedModule)]
    assert paths == FCN_10L_BLOCKS
    result = step.gradients(data)
    assert result.keys() == expected.keys() and len(expected) > 0
    for name in expected:
        torch.testing.assert_close(result[name], expected[name],
                                   rtol=1e-6, atol=1e-9, msg=name)



def test_which_to_pick_preset_rows():
    """``--preset which-to-pick``: the rows of docs/benchmarks.md's "Which to
    pick" table, per model and setup, whatever --methods/--lean-backward/--amp
    say."""
    args = parse_memory_args(['--preset', 'which-to-pick', '--models', 'fcn',
                          'upernet', '--setups', '10L', '--methods',
                          'svd', '--amp'])
    rows = rows_of(args)
    expected = [
        ('vanilla', None, 'off', False, False),
        ('vanilla', None, 'exact', True, False),
        ('checkpoint', None, 'off', False, False),
        ('vanilla', None, 'off', False, True),
        ('gradient_filter', None, 'exact', False, False),
        ('hosvd', 0.8, 'exact', False, False),
        ('hosvd', 0.8, 'all', True, False),
        ('asi', 0.8, 'all', True, False),
        ('hosvd', 0.8, 'all', True, True),
    ]
    assert [(r.method, r.eps, r.lean_backward, r.lean_loss, r.amp)
            for r in rows] == expected * 2
    assert [r.model for r in rows] == ['fcn'] * 9 + ['upernet'] * 9
    assert {r.setup for r in rows} == {'10L'}


def test_asi_rows_run_the_asi_leaf(tmp_path):
    records = benchmark([
        '--models', 'fcn', '--setups', '5L', '--methods', 'asi', '--eps',
        '0.8', '--batch-size', '2', '--crop', '32', '32', '--iters', '1',
        '--device', 'cpu', '--out', str(tmp_path)
    ])
    record, = records
    assert record['method'] == 'asi' and record['eps'] == 0.8
    assert record['config'].endswith(
        'fcn_r18-d8_5l-asi-eps0.8_1xb8-20k_voc12aug-512x512.py')
    assert record['step_peak_mib'] > 0
    # the factors are smaller than the float32 inputs they stand for
    input_mib = sum(4 * math.prod(layer['input_shape'])
                    for layer in record['layers'].values()) / 2**20
    assert 0 < record['kept_mib_mean'] < input_mib
    assert all(layer['method'] == 'asi'
               for layer in record['layers'].values())


def test_per_round_ratios_by_hand():
    from mmseg_hosvd.bench import per_round_ratios
    times = [[2.0, 4.0, 1.0], [3.0, 4.0, 3.0], [1.0, 1.0, 0.25]]
    # row 1: 1.5, 1.0, 3.0 -> 1.5; row 2: 0.5, 0.25, 0.25 -> 0.25
    assert per_round_ratios(times) == [1.0, 1.5, 0.25]
    assert per_round_ratios(times, reference=1)[1] == 1.0


def test_rows_of_a_table_carry_their_per_round_time_ratio(peers):
    _, records = peers
    assert records[0]['step_time_ratio_per_round'] == 1.0
    for record in records:
        assert len(record['step_time_s']) == record['iters'] == 1
        first = records[0]['step_time_s'][0]
        assert record['step_time_ratio_per_round'] == pytest.approx(
            record['step_time_s'][0] / first)


def test_short_preset_is_a_subset_of_which_to_pick():
    from mmseg_hosvd.bench.rows import PRESETS
    short, full = PRESETS['which-to-pick-short'], PRESETS['which-to-pick']
    assert len(short) == 5 and set(short) <= set(full)
    # in the full preset's order
    assert [full.index(row) for row in short] == sorted(
        full.index(row) for row in short)


def test_comparison_table_by_hand():
    from mmseg_hosvd.bench.report import comparison_table
    base = dict(setup='10L', eps=None, lean_backward='off')
    records = [
        dict(base, model='fcn', method='vanilla', step_peak_mib=400.0,
             step_saved_mib_mean=200.0, step_time_ratio_per_round=1.0),
        dict(base, model='fcn', method='hosvd', eps=0.8,
             lean_backward='all', lean_loss=True, step_peak_mib=100.0,
             step_saved_mib_mean=20.0, step_time_ratio_per_round=1.1,
             floor_mib=50.0, peak_over_floor=2.0),
        dict(base, model='upernet', method='vanilla', step_peak_mib=50.0,
             step_saved_mib_mean=10.0, step_time_ratio_per_round=None),
    ]
    lines = comparison_table(records).splitlines()
    cells = [[c.strip() for c in line.strip('|').split('|')]
             for line in lines[2:]]
    assert cells[1][2:] == ['hosvd eps=0.8, lean all, lean loss', '100.0',
                            '0.250', '20.0', '0.100', '50.0', '2.00',
                            '1.10']
    # each model is compared with its own first row; no floor: '-'
    assert cells[2][3:] == ['50.0', '1.000', '10.0', '1.000', '-', '-',
                            '-']


def test_one_lean_backward_default():
    """The rows, the command line and the method labels default to the
    compression hook's ``lean_backward``."""
    hook_default = ActivationCompressionHook(num_layers=1).config
    assert DEFAULT_LEAN_BACKWARD == hook_default.lean_backward == 'exact'
    assert BenchmarkRow('hosvd', 0.8).lean_backward == 'exact'
    assert parse_memory_args([]).lean_backward == ['exact']
    from mmseg_hosvd.bench.report import method_label
    assert method_label(dict(method='hosvd')) == 'hosvd, lean exact'


def test_leaf_tags_come_from_the_method_registry():
    assert {m: leaf_tag(m, 0.8) for m in METHODS} == {
        'vanilla': 'vanilla', 'gradient_filter': 'gradient-filter',
        'svd': 'svd-eps0.8', 'hosvd': 'hosvd-eps0.8', 'asi': 'asi-eps0.8'}
    for method in METHODS:
        assert parse_leaf_tag(leaf_tag(method, 0.9)) == (
            method, 0.9 if method in ('svd', 'hosvd', 'asi') else None)
    assert parse_leaf_tag('hosvd-eps0.8-lean-all') == ('hosvd', 0.8)
    with pytest.raises(ValueError, match="leaf tag 'lora'"):
        parse_leaf_tag('lora')
    with pytest.raises(ValueError, match='needs an eps'):
        leaf_tag('svd')
    with pytest.raises(ValueError, match="got method='lora'"):
        leaf_config_path(CONFIGS, 'fcn', '5L', 'lora')


@pytest.mark.parametrize('placement', [None, 'block'])
def test_hook_key_checkpointing_turns_the_graph_walk_off(placement):
    """The hook's ``activation_checkpointing`` key, as the fit tool's
    checkpointing candidate sets it: no graph walk through the checkpointed
    modules (it would run their recomputation outside backward)."""
    from mmseg_hosvd.bench import MemoryRow
    cfg = load_leaf_config(CONFIGS, 'fcn', '10L', 'vanilla',
                           crop=(CROP, CROP))
    cfg.default_hooks.compression.update(activation_checkpointing=placement)
    cfg.default_hooks.activation_memory = dict(type='ActivationMemoryHook')
    row = MemoryRow(cfg, synthetic_batches(B, (CROP, CROP), 21, 0),
                    torch.device('cpu'))
    checkpointed = [p for p, m in row.step.model.named_modules()
                    if isinstance(m, CheckpointedModule)]
    assert checkpointed == (FCN_10L_BLOCKS if placement else [])
    assert row.probe.breakdown is (placement is None)
    row.close()
