"""mmseg_hosvd.bench.frontier: families, Pareto fronts, the fastest
configuration per budget, and the frontier plot, on records shaped as
tools/benchmark_memory.py writes them."""
import os.path as osp

from mmseg_hosvd.bench.frontier import (budget_table, family,
                                        fastest_fitting, frontier_plot,
                                        is_plugin, pareto_front)


def record(method, micro, peak, time, **flags):
    base = dict(model='fcn', setup='10L', method=method, eps=None,
                lean_backward='off', lean_loss=False, amp=False,
                micro_batch=micro, batch=8, step_peak_mib=peak,
                step_time_ratio_per_round=time, floor_mib=300.0,
                crop=[512, 512], init='random', data='synthetic')
    base.update(flags)
    return base


RECORDS = [
    record('vanilla', 8, 1400.0, 1.0),
    record('vanilla', 1, 190.0, 1.3),
    record('vanilla', 2, 370.0, 1.1),
    record('checkpoint', 8, 800.0, 1.4),
    record('checkpoint', 1, 185.0, 1.9),
    record('hosvd', 8, 450.0, 1.05, eps=0.8, lean_backward='all',
           lean_loss=True),
    record('hosvd', 1, 110.0, 1.5, eps=0.8, lean_backward='all',
           lean_loss=True),
]


def test_families_and_plugin():
    assert family(RECORDS[0]) == family(RECORDS[1]) == 'vanilla'
    assert family(RECORDS[5]) == 'hosvd eps=0.8, lean all, lean loss'
    assert [is_plugin(r) for r in RECORDS] == [False] * 5 + [True] * 2
    assert is_plugin(record('vanilla', 8, 1.0, 1.0, lean_loss=True))


def test_pareto_front_drops_dominated_points():
    # checkpoint at 1 (185 MiB, x1.9) and at 8 (800, x1.4) are beaten by
    # hosvd at 1 (110, x1.5) and by vanilla at 2 (370, x1.1)
    front = pareto_front(RECORDS)
    assert [(r['method'], r['micro_batch']) for r in front] == [
        ('hosvd', 1), ('vanilla', 1), ('vanilla', 2),
        ('hosvd', 8), ('vanilla', 8)]


def test_fastest_fitting_and_budget_table():
    assert fastest_fitting(RECORDS, 100.0) is None
    assert fastest_fitting(RECORDS, 200.0)['method'] == 'vanilla'
    assert fastest_fitting(RECORDS, 500.0)['method'] == 'hosvd'
    table = budget_table(RECORDS, [128, 256, 512])
    lines = table.splitlines()
    assert len(lines) == 2 + 3
    assert 'none fits' in lines[2] and 'plugin (only one that fits)' in lines[2]
    assert lines[3].rstrip(' |').endswith('plain')  # vanilla m1 beats hosvd m1
    assert lines[4].rstrip(' |').endswith('plugin')  # hosvd m8 x1.05


def test_frontier_plot_writes_a_png(tmp_path):
    path = str(tmp_path / 'frontier.png')
    frontier_plot(RECORDS, path)
    assert osp.getsize(path) > 10_000


def test_plain_rows_switch_the_plugins_default_options_off():
    from mmseg_hosvd.bench.rows import PRESETS, memory_rows
    rows = memory_rows(['fcn'], ['10L'], preset='frontier',
                       micro_batches=[1, 8])
    assert len(rows) == 2 * len(PRESETS['frontier'])
    plain = [r for r in rows if r.plain]
    assert {r.method for r in plain} == {'vanilla', 'checkpoint'}
    assert all(r.hook_options() == {'release_unused_features': False}
               for r in plain)
    hosvd = [r for r in rows if r.method == 'hosvd']
    assert all(r.hook_options() == {'split_concat': True} for r in hosvd)
    crossed = memory_rows(['fcn'], ['5L'], ['vanilla', 'hosvd'], [0.8],
                          ['off', 'all'], options=(('frozen_chunk', 1), ))
    assert [(r.method, r.lean_backward, r.hook_options()) for r in crossed
            ] == [('vanilla', 'off', {'release_unused_features': False}),
                  ('vanilla', 'all', {'frozen_chunk': 1}),
                  ('hosvd', 'off', {'frozen_chunk': 1}),
                  ('hosvd', 'all', {'frozen_chunk': 1})]


def test_labels_of_rows_and_records_with_options():
    import dataclasses

    from mmseg_hosvd.bench.report import method_label
    from mmseg_hosvd.bench.rows import PRESETS
    row = PRESETS['frontier'][3].at('fcn', '10L', 1)
    expected = 'hosvd eps=0.8, lean all, lean loss, split_concat'
    assert method_label({**dataclasses.asdict(row), 'batch': 8}) == (
        expected + ', micro-batch 1')
    record = dict(method='hosvd', eps=0.8, lean_backward='all',
                  lean_loss=True, options={'split_concat': True,
                                           'frozen_chunk': 1},
                  micro_batch=8, batch=8)
    assert method_label(record) == expected + ', frozen_chunk=1'
