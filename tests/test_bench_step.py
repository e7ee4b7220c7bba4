"""mmseg_hosvd.bench: the training-step path (TrainingStep) and its probe
(StepProbe) on a small FCN-5L step."""
import pytest
import torch

from conftest import CONFIGS
from mmseg_hosvd.bench import (CPUBFloat16OptimWrapper, StepProbe,
                               TrainingStep, amp_optim_wrapper_cfg,
                               load_leaf_config, synthetic_batches)
from mmseg_hosvd.ops import CompressedConv2d
from mmseg_hosvd.profiling import SavedTensorMeter

pytestmark = pytest.mark.usefixtures('single_thread')

CROP = (32, 32)


def config(method='hosvd', **optim_wrapper):
    from mmseg.utils import register_all_modules
    register_all_modules()
    cfg = load_leaf_config(CONFIGS, 'fcn', '5L', method, crop=CROP)
    for key, value in optim_wrapper.items():
        cfg.optim_wrapper[key] = value  # replaced, not merged
    return cfg


def batch(seed=0):
    return next(synthetic_batches(2, CROP, 21, seed))


def test_builds_what_the_runner_builds():
    step = TrainingStep.from_config(config(), seed=1)
    assert type(step.optim_wrapper).__name__ == 'OptimWrapper'
    assert step.optim_wrapper.clip_grad_kwargs == dict(max_norm=1,
                                                       norm_type=2)
    assert len(step.installed) == 5
    assert all(isinstance(m, CompressedConv2d)
               for m in step.installed.values())
    trainable = {id(p) for p in step.trainable_parameters()}
    assert trainable and all(
        id(step.model.get_parameter(f'{path}.weight')) in trainable
        for path in step.installed)
    # same seed, same weights
    again = TrainingStep.from_config(config(), seed=1)
    for (name, a), (_, b) in zip(step.model.state_dict().items(),
                                 again.model.state_dict().items()):
        assert torch.equal(a, b), name


def test_clip_grad_by_value_comes_from_the_config():
    cfg = config(clip_grad=dict(type='value', clip_value=1e-6))
    step = TrainingStep.from_config(cfg, seed=0)
    seen = []
    step.optim_wrapper.optimizer.register_step_pre_hook(
        lambda opt, args, kwargs: seen.append(
            max(p.grad.abs().max().item() for g in opt.param_groups
                for p in g['params'] if p.grad is not None)))
    log_vars = step.run(batch())
    assert 'loss' in log_vars
    assert seen and seen[0] <= 1e-6


def test_probe_times_and_meters_a_real_step():
    step = TrainingStep.from_config(config(), seed=0)
    data = batch()
    before = {n: p.detach().clone()
              for n, p in step.model.named_parameters() if p.requires_grad}
    with StepProbe(step.model, step.optim_wrapper.optimizer,
                   step.trainable_parameters(), step.state_tensors(),
                   torch.device('cpu'), breakdown=True) as probe:
        measured = probe.measure(lambda: step.run(data))
    assert measured.forward_s > 0 and measured.backward_s > 0
    assert measured.optimizer_s > 0
    assert measured.step_s == pytest.approx(
        measured.forward_s + measured.backward_s + measured.optimizer_s)
    assert 'loss' in measured.result
    # the step really updated the trainable parameters
    assert any(not torch.equal(p, before[n])
               for n, p in step.model.named_parameters() if n in before)
    # the same forward, metered by hand, saves the same bytes
    step.prepare()
    meter = SavedTensorMeter(step.state_tensors())
    processed = step.model.data_preprocessor(data, True)
    with meter:
        losses = step.model(**processed, mode='loss')
    assert measured.saved_bytes == meter.activation_bytes()
    assert measured.saved_param_bytes == meter.parameter_bytes()
    assert measured.breakdown.activation_bytes == pytest.approx(
        measured.saved_bytes, rel=1e-3)
    del losses


def test_probe_names_a_step_that_did_not_happen():
    step = TrainingStep.from_config(config('vanilla'), seed=0)
    with StepProbe(step.model, step.optim_wrapper.optimizer,
                   step.trainable_parameters(), step.state_tensors(),
                   torch.device('cpu')) as probe:
        probe.arm()
        with torch.no_grad():
            step.model(torch.zeros(1, 3, *CROP), mode='tensor')
        with pytest.raises(RuntimeError, match='no backward_end'):
            probe.collect()
    with pytest.raises(RuntimeError, match='context manager'):
        probe.arm()


def test_amp_on_the_cpu_is_bfloat16_autocast():
    step = TrainingStep.from_config(config(), seed=0, amp=True)
    assert isinstance(step.optim_wrapper, CPUBFloat16OptimWrapper)
    dtypes = []
    conv = next(iter(step.installed.values()))
    handle = conv.register_forward_hook(
        lambda module, args, out: dtypes.append(out.dtype))
    log_vars = step.run(batch())
    handle.remove()
    assert dtypes == [torch.bfloat16]
    assert torch.isfinite(torch.as_tensor(log_vars['loss']))


def test_amp_refuses_an_unknown_wrapper():
    with pytest.raises(ValueError, match="'MyWrapper'"):
        amp_optim_wrapper_cfg(dict(type='MyWrapper'), torch.device('cpu'))
    cuda = amp_optim_wrapper_cfg(dict(type='OptimWrapper', clip_grad=None),
                                 torch.device('cuda'))
    assert cuda == dict(type='AmpOptimWrapper', clip_grad=None,
                        dtype='float16')


def test_activation_checkpointing_placement_is_checked():
    with pytest.raises(ValueError, match="activation_checkpointing: "
                       "expected None or one of \\('block', 'segment'\\), "
                       "got 'layer'"):
        TrainingStep.from_config(config(), activation_checkpointing='layer')
