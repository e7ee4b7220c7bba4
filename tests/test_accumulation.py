"""Gradient accumulation as a peer of compression: ``TrainingStep`` with
mmengine's ``accumulative_counts``, the benchmark row that measures an
effective batch as micro-batches, and the plain-inference floor.

With every BatchNorm in eval mode (``norm_eval=True``) and a loss averaged
over all pixels (mmseg's default ``avg_non_ignore=False``), k micro-batches
of B/k samples give the gradient of the batch of B: the step is the same.
What breaks it: ``avg_non_ignore=True`` with ignored pixels spread unevenly
(each micro-batch is averaged over its own count), and BatchNorm in train
mode (statistics of B/k samples).
"""
import pytest
import torch

from conftest import CONFIGS
from mmseg_hosvd.bench import TrainingStep, load_leaf_config, synthetic_batches
from mmseg_hosvd.bench.data import split_batch
from mmseg_hosvd.bench.floor import inference_peak_bytes
from mmseg_hosvd.bench.memory_row import MemoryRow

pytestmark = pytest.mark.usefixtures('single_thread')

CROP = (32, 32)
BATCH = 4


def config(method='vanilla', norm_eval=True, avg_non_ignore=False):
    from mmseg.utils import register_all_modules
    register_all_modules()
    cfg = load_leaf_config(CONFIGS, 'fcn', '5L', method, crop=CROP)
    cfg.default_hooks.compression.norm_eval = norm_eval
    for head in ('decode_head', 'auxiliary_head'):
        if cfg.model.get(head):
            cfg.model[head].loss_decode.avg_non_ignore = avg_non_ignore
    return cfg


def batch(ignored_in_first=0):
    """BATCH samples; the first one's top ``ignored_in_first`` rows are
    ignored (255)."""
    data = next(synthetic_batches(BATCH, CROP, 21, 0))
    if ignored_in_first:
        data['data_samples'][0].gt_sem_seg.data[:, :ignored_in_first] = 255
    return data


def step_delta(cfg, data, micro_batch=None):
    """The gradient each trainable parameter has when the optimizer steps
    on ``data``, whole or as micro-batches of ``micro_batch`` (after the
    config's clipping)."""
    counts = 1 if micro_batch is None else BATCH // micro_batch
    step = TrainingStep.from_config(cfg, seed=3, accumulative_counts=counts)
    names = {id(p): n for n, p in step.model.named_parameters()}
    steps = []

    def record(optimizer, args, kwargs):
        steps.append({names[id(p)]: p.grad.clone()
                      for group in optimizer.param_groups
                      for p in group['params'] if p.grad is not None})

    step.optim_wrapper.optimizer.register_step_pre_hook(record)
    if micro_batch is None:
        step.run(data)
    else:
        step.run_accumulated(split_batch(data, micro_batch))
    assert len(steps) == 1  # one optimizer step per effective batch
    return steps[0]


def max_relative_difference(a, b):
    return max(((a[n] - b[n]).abs().max() /
                b[n].abs().max().clamp_min(1e-12)).item() for n in a)


@pytest.mark.parametrize('micro_batch', [1, 2])
def test_accumulated_step_equals_the_full_batch_step(micro_batch):
    cfg, data = config(), batch(ignored_in_first=8)
    full = step_delta(cfg, data)
    accumulated = step_delta(cfg, data, micro_batch)
    assert max(d.abs().max().item() for d in full.values()) > 0
    assert max_relative_difference(accumulated, full) < 1e-4


def test_avg_non_ignore_with_uneven_ignored_pixels_differs():
    cfg = config(avg_non_ignore=True)
    even = batch()  # nothing ignored: every micro-batch has the same count
    assert max_relative_difference(step_delta(cfg, even, 2),
                                   step_delta(cfg, even)) < 1e-4
    uneven = batch(ignored_in_first=24)
    assert max_relative_difference(step_delta(cfg, uneven, 2),
                                   step_delta(cfg, uneven)) > 1e-2


def test_batch_norm_in_train_mode_differs():
    cfg, data = config(norm_eval=False), batch()
    assert max_relative_difference(step_delta(cfg, data, 2),
                                   step_delta(cfg, data)) > 1e-2


def test_run_accumulated_checks_the_micro_batches():
    step = TrainingStep.from_config(config(), seed=0, accumulative_counts=2)
    data = batch()
    with pytest.raises(ValueError, match='expected 2 micro-batch'):
        step.run_accumulated(split_batch(data, 1))
    step.run(split_batch(data, 2)[0])  # half an accumulation
    with pytest.raises(ValueError, match='middle of an accumulation'):
        step.run_accumulated(split_batch(data, 2))
    with pytest.raises(ValueError, match='accumulative_counts: expected'):
        TrainingStep.from_config(config(), accumulative_counts=0)


def test_split_batch():
    data = batch()
    parts = split_batch(data, 2)
    assert [len(p['inputs']) for p in parts] == [2, 2]
    assert parts[1]['data_samples'][0] is data['data_samples'][2]
    with pytest.raises(ValueError, match='micro_batch 3 does not divide'):
        split_batch(data, 3)


def test_memory_row_measures_the_effective_batch():
    """Micro-batches of 1: the gradients are kept from the first
    micro-batch to the optimizer step, so the peak of the effective step is
    at least the trainable parameters' float32 gradients, and the row's
    statistics are those of one micro-batch."""
    cfg = config('hosvd')
    rows = {micro: MemoryRow(cfg, synthetic_batches(BATCH, CROP, 21, 0),
                             torch.device('cpu'), seed=0, micro_batch=micro)
            for micro in (1, BATCH)}
    for micro, row in rows.items():
        assert row.step.accumulative_counts == BATCH // micro
        row.warm_up()
        row.timed_step()
        grads = 4 * sum(p.numel() for p in row.step.trainable_parameters())
        assert row.peak_bytes >= grads
        shapes = {s.input_shape[0] for s in row.last_stats.values()}
        assert shapes == {micro}


def test_floor_is_plain_inference_below_a_training_step():
    cfg = config()
    one, two = (inference_peak_bytes(cfg, next(synthetic_batches(
        size, CROP, 21, 0))) for size in (1, 2))
    assert 0 < one < two
    row = MemoryRow(cfg, synthetic_batches(2, CROP, 21, 0),
                    torch.device('cpu'), seed=0)
    row.warm_up()
    assert row.peak_bytes > two
