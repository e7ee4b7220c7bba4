"""step_in_backward: the optimizer step taken inside backward, parameter by
parameter, equals the normal step, lowers the step's peak, refuses what it
cannot do exactly, and runs in a Runner."""
import copy
import functools

import pytest
import torch
import torch.nn as nn
from mmengine.config import Config
from mmengine.hooks import Hook
from mmengine.optim import AmpOptimWrapper, OptimWrapper, OptimWrapperDict
from mmengine.runner import Runner

from conftest import CONFIGS, tiny_run_cfg
from test_bad_data import PoisonHook
from mmseg_hosvd.bench import (TrainingStep, load_leaf_config,
                               synthetic_batches)
from mmseg_hosvd.compression import CompressionConfig
from mmseg_hosvd.peak_memory import PeakMemoryMeter
from mmseg_hosvd.step_in_backward import install_step_in_backward

pytestmark = pytest.mark.usefixtures('single_thread', 'memoised_mmseg_bases')

CROP = (32, 32)
SGD = dict(type='SGD', lr=0.1, momentum=0.9, weight_decay=0.01)
ADAMW = dict(type='AdamW', lr=0.01, weight_decay=0.05)


@functools.lru_cache(maxsize=None)
def fcn_5l() -> Config:
    from mmseg.utils import register_all_modules
    register_all_modules()
    return load_leaf_config(CONFIGS, 'fcn', '5L', 'hosvd', crop=CROP)


def leaf(step_in_backward, optimizer=SGD, clip_grad=None):
    """FCN-R18 5L hosvd 0.8 at 32x32 with the given optimizer."""
    cfg = copy.deepcopy(fcn_5l())
    cfg.optim_wrapper.optimizer = optimizer
    cfg.optim_wrapper.clip_grad = clip_grad
    cfg.default_hooks.compression.non_finite = 'raise'
    cfg.default_hooks.compression.step_in_backward = step_in_backward
    return cfg


def batches(count, batch_size=1):
    source = synthetic_batches(batch_size, CROP, 21, 0)
    return [next(source) for _ in range(count)]


@pytest.mark.parametrize('optimizer, clip_grad', [
    (SGD, None), (ADAMW, None),
    (SGD, dict(type='value', clip_value=1e-3))],
    ids=['sgd-momentum-wd', 'adamw', 'sgd-clip-by-value'])
def test_three_steps_equal_the_normal_steps(optimizer, clip_grad):
    steps = [TrainingStep.from_config(leaf(flag, optimizer, clip_grad),
                                      seed=0) for flag in (False, True)]
    normal, fused = steps
    assert normal.step_in_backward is None
    assert set(fused.step_in_backward.params) == {
        n for n, p in fused.model.named_parameters() if p.requires_grad}
    before = {n: p.detach().clone()
              for n, p in normal.model.named_parameters()}
    for data in batches(3):
        for step in steps:
            step.run(data)
    assert all(p.grad is None for p in fused.model.parameters())
    fused_params = dict(fused.model.named_parameters())
    changed = 0
    for name, param in normal.model.named_parameters():
        torch.testing.assert_close(fused_params[name], param, rtol=1e-5,
                                   atol=1e-7, msg=name)
        changed += not torch.equal(param, before[name])
    assert changed == len(fused.step_in_backward.params)
    states = [step.optim_wrapper.optimizer.state for step in steps]
    for param, fused_param in zip(normal.model.parameters(),
                                  fused.model.parameters()):
        for key, value in states[0][param].items():
            torch.testing.assert_close(states[1][fused_param][key], value)
        if optimizer is ADAMW and param.requires_grad:
            assert int(states[1][fused_param]['step']) == 3


def test_lower_step_peak():
    data = batches(2)
    peaks = {}
    for flag in (False, True):
        step = TrainingStep.from_config(leaf(flag), seed=0)
        step.run(data[0])  # the optimizer's state exists before the meter
        with PeakMemoryMeter('cpu') as meter:
            step.run(data[1])
        peaks[flag] = meter.peak_bytes
    grad_bytes = sum(p.numel() * 4 for p in step.trainable_parameters())
    assert peaks[False] >= grad_bytes  # every gradient alive at once
    assert peaks[True] <= peaks[False] - grad_bytes // 4, (peaks, grad_bytes)


def test_gradients_of_a_step_are_kept_when_suspended():
    step = TrainingStep.from_config(leaf(True), seed=0)
    before = {n: p.detach().clone() for n, p in step.model.named_parameters()}
    grads = step.gradients(batches(1)[0])
    assert set(grads) == set(step.step_in_backward.params)
    for name, param in step.model.named_parameters():
        assert torch.equal(param, before[name]), name


def two_linears():
    torch.manual_seed(0)
    return nn.Sequential(nn.Linear(4, 3), nn.Linear(3, 2))


def test_non_finite_gradient_raises_naming_the_parameter():
    model = two_linears()
    handle = install_step_in_backward(
        model, torch.optim.SGD(model.parameters(), lr=0.1))
    first = model[0].weight.detach().clone()
    loss = model(torch.randn(5, 4)).sum() + (
        model[0].weight * torch.tensor(float('nan'))).sum()
    with pytest.raises(FloatingPointError,
                       match=r"non-finite gradient of '0\.weight'.*already "
                       r'updated \(1\.weight, 1\.bias|1\.bias, 1\.weight'):
        loss.backward()
    assert torch.equal(model[0].weight, first)
    handle.remove()


def test_non_finite_first_gradient_lets_step_pre_hooks_see_it_first():
    """A NaN loss: every gradient is NaN; before raising, the optimizer's
    step pre-hooks (a step guard's) run once with no gradient set."""
    model = two_linears()
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1)
    seen = []
    optimizer.register_step_pre_hook(lambda opt, args, kwargs: seen.append(
        [p.grad is None for p in model.parameters()]))
    install_step_in_backward(model, optimizer)
    before = [p.detach().clone() for p in model.parameters()]
    loss = model(torch.randn(5, 4)).sum() * torch.tensor(float('nan'))
    with pytest.raises(FloatingPointError,
                       match='no parameter was updated in this backward'):
        loss.backward()
    assert seen == [[True] * 4]
    assert all(torch.equal(p, b) for p, b in zip(model.parameters(), before))


def test_gradient_kept_from_an_earlier_backward_is_refused():
    model = two_linears()
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1)
    model(torch.randn(5, 4)).sum().backward()  # grads, no step
    handle = install_step_in_backward(model, optimizer)
    with pytest.raises(RuntimeError, match='already hold a gradient'):
        model(torch.randn(5, 4)).sum().backward()
    handle.remove()


def test_removed_hooks_step_after_backward_again():
    model = two_linears()
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1)
    install_step_in_backward(model, optimizer).remove()
    model(torch.randn(5, 4)).sum().backward()
    assert all(p.grad is not None for p in model.parameters())


def wrapper(**kwargs):
    model = two_linears()
    return model, OptimWrapper(torch.optim.SGD(model.parameters(), lr=0.1),
                               **kwargs)


class ScalingOptimWrapper(OptimWrapper):
    def backward(self, loss, **kwargs):
        super().backward(loss * 2, **kwargs)


@pytest.mark.parametrize('build, match', [
    (lambda: wrapper(accumulative_counts=2), 'accumulative_counts=2'),
    (lambda: wrapper(clip_grad=dict(max_norm=1.0)), 'clip_grad by norm'),
    (lambda: (lambda m, w: (m, OptimWrapperDict(a=w)))(*wrapper()),
     'more than one optimizer'),
    # the check reads the type only (AmpOptimWrapper needs CUDA to build)
    (lambda: (two_linears(), AmpOptimWrapper.__new__(AmpOptimWrapper)),
     'AmpOptimWrapper scales the loss'),
    (lambda: (lambda m: (m, ScalingOptimWrapper(torch.optim.SGD(
        m.parameters(), lr=0.1))))(two_linears()), 'overrides backward'),
    (lambda: (lambda m: (m, torch.optim.LBFGS(m.parameters())))(
        two_linears()), 'optimizer LBFGS is not known'),
    (lambda: (lambda m: (m, torch.optim.SGD(
        nn.Linear(2, 2).parameters(), lr=0.1)))(two_linears()),
     'no trainable parameter'),
])
def test_refusals_name_the_key_and_the_reason(build, match):
    model, optimizer = build()
    with pytest.raises(ValueError, match=f'^step_in_backward: .*{match}'):
        install_step_in_backward(model, optimizer)
    assert not any(p._post_accumulate_grad_hooks for p in model.parameters())


def test_config_needs_non_finite_raise():
    with pytest.raises(ValueError,
                       match="step_in_backward: needs non_finite='raise'"):
        CompressionConfig(num_layers=2, step_in_backward=True)
    with pytest.raises(ValueError, match='step_in_backward: expected True'):
        CompressionConfig(num_layers=2, step_in_backward=1,
                          non_finite='raise')
    assert CompressionConfig(num_layers=2).step_in_backward is False
    cfg = leaf(True, clip_grad=dict(max_norm=1.0))
    with pytest.raises(ValueError, match='step_in_backward: clip_grad'):
        TrainingStep.from_config(cfg, seed=0)


class ParamsAtEnd(Hook):
    """Records the parameters before and after training, whether the
    in-backward steps are installed while training and the gradients left
    after an iteration."""

    priority = 'LOWEST'

    def before_train(self, runner):
        self.start = {n: p.detach().clone()
                      for n, p in runner.model.named_parameters()}
        self.trainable = {n for n, p in runner.model.named_parameters()
                          if p.requires_grad}

    def after_train_iter(self, runner, batch_idx, data_batch=None,
                         outputs=None):
        hook = next(h for h in runner.hooks
                    if type(h).__name__ == 'ActivationCompressionHook')
        self.installed = hook.step_in_backward is not None
        self.grads = [p.grad for p in runner.model.parameters()
                      if p.grad is not None]

    def after_train(self, runner):
        self.params = {n: p.detach().clone()
                       for n, p in runner.model.named_parameters()}


def make_runner(tmp_path, tiny_voc, step_in_backward, hook, max_iters=2):
    base = leaf(step_in_backward)
    cfg = Config.fromfile(
        f'{CONFIGS}/fcn/fcn_r18-d8_5l-hosvd-eps0.8_1xb8-20k_voc12aug-'
        '512x512.py')
    cfg.optim_wrapper = copy.deepcopy(base.optim_wrapper)
    cfg.default_hooks.compression = copy.deepcopy(
        base.default_hooks.compression)
    cfg = tiny_run_cfg(cfg, str(tmp_path / str(step_in_backward)), tiny_voc,
                       max_iters=max_iters, batch_size=1, val=False)
    runner = Runner.from_cfg(cfg)
    runner.register_hook(hook)
    return runner


def runner_run(tmp_path, tiny_voc, step_in_backward):
    record = ParamsAtEnd()
    runner = make_runner(tmp_path, tiny_voc, step_in_backward, record)
    runner.train()
    return runner, record


@pytest.mark.slow
def test_runner_steps_inside_backward_as_it_would_after(tmp_path, tiny_voc):
    _, normal = runner_run(tmp_path, tiny_voc, False)
    runner, fused = runner_run(tmp_path, tiny_voc, True)
    hook = next(h for h in runner.hooks
                if type(h).__name__ == 'ActivationCompressionHook')
    assert fused.installed and not normal.installed
    assert fused.grads == [] and normal.grads == []  # zero_grad as usual
    assert hook.step_in_backward is None  # removed after training
    guard = next(h for h in runner.hooks
                 if type(h).__name__ == 'NonFiniteStepGuardHook')
    assert guard.non_finite == 'raise'
    moved = set()
    for name, param in normal.params.items():
        assert torch.equal(fused.start[name], normal.start[name]), name
        torch.testing.assert_close(fused.params[name], param, rtol=1e-5,
                                   atol=1e-7, msg=name)
        if not torch.equal(fused.params[name], fused.start[name]):
            moved.add(name)
    assert moved == fused.trainable and moved


@pytest.mark.slow
def test_runner_nan_input_raises_before_any_parameter_changed(tmp_path,
                                                              tiny_voc):
    """The step guard (non_finite='raise') still names a NaN input batch
    and layer input at the first in-backward step, before any update."""
    poison = PoisonHook({1: float('nan')})
    runner = make_runner(tmp_path, tiny_voc, True, poison, max_iters=3)
    with pytest.raises(FloatingPointError) as error:
        runner.train()
    message = str(error.value)
    assert 'iteration 2 on rank(s) 0' in message, message
    assert 'the input batch' in message, message
    assert "CompressedConv2d 'backbone.layer4.1.conv1'" in message, message
    assert 'the optimizer step was not taken' in message, message
    assert runner.iter == 1
    assert len(poison.params) == 2  # before training, after iteration 1
    trainable = {n: p for n, p in runner.model.named_parameters()
                 if p.requires_grad}
    for name, param in trainable.items():  # as after iteration 1
        assert torch.equal(param, poison.params[-1][name]), name
    assert any(not torch.equal(param, poison.params[0][name])
               for name, param in trainable.items())  # iteration 1 stepped
