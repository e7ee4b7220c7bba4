"""The activation-memory report: checked up front, written atomically, kept
across ``--resume``, and merged over ranks (the two-process run is in
tests/test_ddp.py)."""
import json
import os
import os.path as osp

import pytest
from mmengine.config import Config
from mmengine.runner import Runner

from conftest import tiny_run_cfg
from mmseg_hosvd.engine import memory_hook
from mmseg_hosvd.engine.memory_stats import MemoryTotals, RunningStat
from test_bad_data import PoisonHook
from test_training import leaf_config


def _cfg(work_dir, tiny_voc, max_iters=2, **kwargs):
    return tiny_run_cfg(Config.fromfile(leaf_config('fcn', '5l', 'hosvd')),
                        str(work_dir), tiny_voc, max_iters=max_iters,
                        val=False, **kwargs)


def _report(work_dir) -> dict:
    with open(osp.join(work_dir, 'activation_memory.json')) as f:
        return json.load(f)


def _flat(tree, prefix='') -> dict:
    """``{'a/b/0': leaf}`` of nested dicts and lists."""
    if isinstance(tree, dict):
        items = tree.items()
    elif isinstance(tree, list):
        items = enumerate(tree)
    else:
        return {prefix: tree}
    flat = {}
    for key, value in items:
        flat.update(_flat(value, f'{prefix}/{key}'))
    return flat


@pytest.mark.slow
def test_unwritable_out_file_fails_before_training(tmp_path, tiny_voc):
    cfg = _cfg(tmp_path / 'run', tiny_voc)
    cfg.default_hooks.activation_memory.out_file = 'no_such_dir/report.json'
    runner = Runner.from_cfg(cfg)
    with pytest.raises(ValueError,
                       match=r"ActivationMemoryHook: out_file '.*no_such_dir"
                       r"/report\.json' is not writable: directory"):
        runner.train()
    assert runner.iter == 0  # nothing trained
    (tmp_path / 'run' / 'a_dir.json').mkdir()
    with pytest.raises(ValueError, match='out_file .* is a directory'):
        memory_hook.check_writable(str(tmp_path / 'run' / 'a_dir.json'),
                                   'ActivationMemoryHook')


def test_failed_write_keeps_the_old_report(tmp_path, monkeypatch):
    path = tmp_path / 'activation_memory.json'
    path.write_text('{"old": true}')

    def full_disk(src, dst):
        raise OSError(28, 'No space left on device')

    monkeypatch.setattr(memory_hook.os, 'replace', full_disk)
    with pytest.raises(OSError, match=r'ActivationMemoryHook: could not '
                       r'write out_file .*No space left on device'):
        memory_hook.write_atomically(str(path), '{"new": true}',
                                     'ActivationMemoryHook')
    assert path.read_text() == '{"old": true}'
    assert os.listdir(tmp_path) == ['activation_memory.json']  # no temp
    monkeypatch.undo()
    memory_hook.write_atomically(str(path), '{"new": true}', 'x')
    assert json.loads(path.read_text()) == {'new': True}


@pytest.mark.slow
def test_resume_continues_the_report(tmp_path, tiny_voc):
    poison = {0: float('nan')}  # iteration 1: skipped, before the resume
    straight = Runner.from_cfg(_cfg(tmp_path / 'straight', tiny_voc, 4))
    straight.register_hook(PoisonHook(poison))
    straight.train()
    first = Runner.from_cfg(
        _cfg(tmp_path / 'run', tiny_voc, 2, checkpoint_interval=2))
    first.register_hook(PoisonHook(poison))
    first.train()
    assert _report(tmp_path / 'run')['iterations'] == 1
    cfg = _cfg(tmp_path / 'run', tiny_voc, 4, checkpoint_interval=4)
    cfg.resume = True
    cfg.load_from = str(tmp_path / 'run' / 'iter_2.pth')
    resumed = Runner.from_cfg(cfg)
    resumed.train()
    report, expected = _report(tmp_path / 'run'), _report(
        tmp_path / 'straight')
    assert report['iterations'] == 3 and report['skipped_steps'] == 1
    assert report['non_finite_iterations'] == 1
    # CPU, deterministic: the resumed report is the uninterrupted one
    assert _flat(report).keys() == _flat(expected).keys()
    for key, value in _flat(report).items():
        assert value == pytest.approx(_flat(expected)[key]), key
    for layer in report['layers'].values():
        assert layer['non_finite'] == 1
    # a plain load_from (no resume) starts a fresh report
    cfg = _cfg(tmp_path / 'fresh', tiny_voc, 1)
    cfg.load_from = str(tmp_path / 'run' / 'iter_4.pth')
    Runner.from_cfg(cfg).train()
    assert _report(tmp_path / 'fresh')['iterations'] == 1


def test_merge_of_ranks_and_resume_parts():
    def part(recorded, bad, values, skipped):
        totals = MemoryTotals(recorded=recorded, non_finite_at=set(bad),
                              skipped_steps=skipped)
        for v in values:
            totals.total_paper.add(v)
        return totals

    ranks = MemoryTotals.merged(
        [part(3, {1}, [2.0, 4.0], 1), part(3, {1, 3}, [6.0], 1)],
        sequential=False)
    assert ranks.recorded == 3 and ranks.non_finite_at == {1, 3}
    assert ranks.skipped_steps == 1  # a DDP step is skipped on every rank
    series = RunningStat()
    for v in (2.0, 4.0, 6.0):
        series.add(v)
    assert ranks.total_paper == series
    run = MemoryTotals.merged([part(2, {2}, [1.0], 1), ranks],
                              sequential=True)
    assert run.recorded == 5 and run.non_finite_at == {2, 3, 5}
    assert run.skipped_steps == 2
    assert MemoryTotals.from_state(run.state()) == run
