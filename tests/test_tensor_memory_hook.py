"""TensorMemoryHook: the tensor memory of a real training run (held
between iterations + each iteration's peak) in the run's own log, and
held_bytes, what it counts as held."""
import glob
import os.path as osp

import pytest
import torch
import torch.nn as nn
from mmengine.config import Config

from conftest import CONFIGS, tiny_run_cfg
from mmseg_hosvd.engine import TensorMemoryHook
from mmseg_hosvd.engine.tensor_memory_hook import held_bytes
from mmseg_hosvd.ops import MIB

pytestmark = pytest.mark.usefixtures('single_thread')

DEMO = osp.join(CONFIGS, 'demo',
                'fcn_r18-d8_5l-hosvd-eps0.8_tiny-voc-64x64.py')


def test_held_bytes_counts_parameters_gradients_and_state_once():
    model = nn.Sequential(nn.Linear(10, 20), nn.BatchNorm1d(20))
    params = sum(p.numel() for p in model.parameters()) * 4
    buffers = sum(b.numel() * b.element_size() for b in model.buffers())
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9)
    assert held_bytes(model, optimizer) == params + buffers
    model(torch.randn(4, 10)).sum().backward()
    assert held_bytes(model, optimizer) == 2 * params + buffers
    optimizer.step()  # momentum buffers: one per parameter
    assert held_bytes(model, optimizer) == 3 * params + buffers
    optimizer.zero_grad(set_to_none=True)
    assert held_bytes(model, optimizer) == 2 * params + buffers
    assert held_bytes(model) == params + buffers


@pytest.mark.parametrize('kwargs, key', [
    (dict(interval=0), 'interval'), (dict(interval=True), 'interval'),
    (dict(begin_iters=-1), 'begin_iters'), (dict(budget_mib=0), 'budget_mib'),
])
def test_bad_arguments_are_named(kwargs, key):
    with pytest.raises(ValueError, match=f'TensorMemoryHook: {key}'):
        TensorMemoryHook(**kwargs)


@pytest.mark.slow
def test_a_run_logs_its_tensor_memory_and_warns_over_budget(tmp_path,
                                                            tiny_voc):
    from mmengine.runner import Runner
    cfg = Config.fromfile(DEMO)
    cfg.custom_hooks = list(cfg.custom_hooks) + [dict(
        type='TensorMemoryHook', interval=2, begin_iters=1, budget_mib=1)]
    cfg = tiny_run_cfg(cfg, str(tmp_path), tiny_voc, max_iters=4, val=False)
    runner = Runner.from_cfg(cfg)
    runner.train()
    meter, = [h for h in runner.hooks if isinstance(h, TensorMemoryHook)]
    hub = runner.message_hub.log_scalars
    totals, _ = hub['train/tensor_total_mib'].data
    helds, _ = hub['train/tensor_held_mib'].data
    peaks, _ = hub['train/tensor_peak_mib'].data
    assert len(totals) == 2  # iterations 0 (begin_iters) and 2 (interval)
    assert list(totals) == pytest.approx(list(helds + peaks))
    # FCN-R18 parameters, held at least; a step allocates on top
    assert min(helds) * MIB >= 12e6 * 4 and min(peaks) > 0
    assert meter.largest_total_mib == pytest.approx(max(totals))
    log, = glob.glob(str(tmp_path / '*' / '*.log'))
    assert 'OVER the budget of 1 MiB' in open(log).read()
