"""Bad data in flight: NaN/Inf inputs, all-zero inputs, a batch of one and
crops smaller than the kernel.

With ``non_finite='skip'`` (the hook's default) a NaN/Inf batch trains
through: the step is skipped (weights and momentum bit-identical), logged,
and counted in ``activation_memory.json``; with ``'raise'`` HOSVD fails
naming the layer. At the op level, degenerate shapes and zero inputs give the
exact gradients at ``eps=1``.
"""
import glob
import json
import math
import os.path as osp
from typing import Dict, Optional

import pytest
import torch
import torch.nn as nn
from mmengine.config import Config
from mmengine.hooks import Hook
from mmengine.runner import Runner

from conftest import tiny_run_cfg
from mmseg_hosvd.ops import CompressedConv2d, non_finite_layers
from test_training import leaf_config

METHODS = ['vanilla', 'gradient_filter', 'svd', 'hosvd', 'asi']
#: FCN-R18 5L: the compressed (or counted) convs
LAYERS = {
    'backbone.layer4.1.conv1', 'backbone.layer4.1.conv2',
    'decode_head.convs.0.conv', 'decode_head.convs.1.conv',
    'decode_head.conv_cat.conv'
}
#: 0-based iteration -> value written into one pixel of the first image
POISON = {0: float('nan'), 2: float('inf')}
ITERS = 4


class PoisonHook(Hook):
    """Writes ``plan[iteration]`` into one pixel of the first image after
    the data preprocessor (so the value reaches the float input), and
    snapshots the trainable parameters and SGD momentum after each
    iteration."""

    priority = 'LOWEST'

    def __init__(self, plan: Dict[int, float]) -> None:
        self.plan = plan
        self.value: Optional[float] = None
        self.params = []
        self.momenta = []

    def before_train(self, runner) -> None:
        runner.model.data_preprocessor.register_forward_hook(self._poison)
        self.params.append(self._trainable(runner))
        self.momenta.append(self._momentum(runner))

    def before_train_iter(self, runner, batch_idx, data_batch=None) -> None:
        self.value = self.plan.get(runner.iter)

    def _poison(self, module, args, output):
        if self.value is not None and module.training:
            output['inputs'][0, :, 5, 7] = self.value
        return output

    def after_train_iter(self, runner, batch_idx, data_batch=None,
                         outputs=None) -> None:
        self.params.append(self._trainable(runner))
        self.momenta.append(self._momentum(runner))

    @staticmethod
    def _trainable(runner) -> Dict[str, torch.Tensor]:
        return {
            n: p.detach().clone()
            for n, p in runner.model.named_parameters() if p.requires_grad
        }

    @staticmethod
    def _momentum(runner) -> Dict[str, torch.Tensor]:
        optimizer = runner.optim_wrapper.optimizer
        names = {id(p): n for n, p in runner.model.named_parameters()}
        return {
            names[id(p)]: state['momentum_buffer'].clone()
            for p, state in optimizer.state.items()
            if state.get('momentum_buffer') is not None
        }


class ZeroImages(PoisonHook):
    """Every training batch is all zeros after the data preprocessor."""

    def _poison(self, module, args, output):
        if module.training:
            output['inputs'].zero_()
        return output


def _run(tmp_path, tiny_voc, method: str, poison: PoisonHook,
         max_iters: int = ITERS, **compression) -> Runner:
    cfg = tiny_run_cfg(Config.fromfile(leaf_config('fcn', '5l', method)),
                       str(tmp_path), tiny_voc, max_iters=max_iters,
                       val=False)
    cfg.default_hooks.compression.update(compression)
    runner = Runner.from_cfg(cfg)
    runner.register_hook(poison)
    return runner


def _assert_equal(after: Dict[str, torch.Tensor],
                  before: Dict[str, torch.Tensor], what: str) -> None:
    assert after.keys() == before.keys(), what
    for name, value in after.items():
        assert torch.equal(value, before[name]), f'{what}: {name} changed'


@pytest.mark.slow
@pytest.mark.parametrize('method', METHODS)
def test_non_finite_batches_are_skipped_and_counted(tmp_path, tiny_voc,
                                                    method):
    poison = PoisonHook(POISON)
    runner = _run(tmp_path, tiny_voc, method, poison)
    runner.train()
    assert runner.iter == ITERS
    for name, param in runner.model.named_parameters():
        assert torch.isfinite(param).all(), name
    for it in range(ITERS):
        params, momenta = poison.params[it + 1], poison.momenta[it + 1]
        if it in POISON:  # nothing moved: weights, momentum, weight decay
            _assert_equal(params, poison.params[it], f'iteration {it + 1}')
            _assert_equal(momenta, poison.momenta[it], f'momentum {it + 1}')
        else:
            assert any(not torch.equal(p, poison.params[it][n])
                       for n, p in params.items()), f'iteration {it + 1}'
            assert all(torch.isfinite(m).all() for m in momenta.values())
    assert poison.momenta[1] == {}  # the skipped first step made none

    with open(osp.join(runner.work_dir, 'activation_memory.json')) as f:
        summary = json.load(f)
    assert summary['skipped_steps'] == len(POISON)
    assert summary['non_finite_iterations'] == len(POISON)
    assert summary['iterations'] == ITERS - len(POISON)
    assert set(summary['layers']) == LAYERS
    for path, layer in summary['layers'].items():
        assert layer['non_finite'] == len(POISON), path
        assert math.isfinite(layer['paper_mib']['mean']), path
        assert layer['paper_mib']['mean'] > 0, path
    hub = runner.message_hub
    assert hub.get_scalar('train/skipped_steps').current() == len(POISON)
    log = glob.glob(osp.join(runner.work_dir, '*', '*.log'))[0]
    with open(log) as f:
        warnings = [line for line in f if 'optimizer step skipped' in line]
    assert len(warnings) == len(POISON)
    for line, it in zip(warnings, sorted(POISON)):
        assert f'non-finite gradient in iteration {it + 1}:' in line
        assert 'backbone.layer4.1.conv1' in line, line


@pytest.mark.slow
def test_raise_names_the_layer(tmp_path, tiny_voc):
    runner = _run(tmp_path, tiny_voc, 'hosvd', PoisonHook({1: float('nan')}),
                  max_iters=2, non_finite='raise')
    with pytest.raises(FloatingPointError,
                       match=r"CompressedConv2d 'backbone\.layer4\.1\.conv1'"
                       r" \(method='hosvd'\): input contains NaN/Inf"):
        runner.train()
    assert runner.iter == 1
    for name, param in runner.model.named_parameters():
        assert torch.isfinite(param).all(), name


@pytest.mark.slow
def test_all_zero_images_train(tmp_path, tiny_voc):
    zero = ZeroImages({})
    runner = _run(tmp_path, tiny_voc, 'hosvd', zero, max_iters=2)
    runner.train()
    assert runner.iter == 2
    for name, param in runner.model.named_parameters():
        assert torch.isfinite(param).all(), name
    # the classifier still trains (bias), and no step was skipped
    assert not torch.equal(zero.params[-1]['decode_head.conv_seg.bias'],
                           zero.params[0]['decode_head.conv_seg.bias'])
    hook = next(h for h in runner.hooks
                if type(h).__name__ == 'NonFiniteStepGuardHook')
    assert hook.skipped_steps == 0


# ---------------------------------------------------------------------------
# op level: degenerate shapes, zero input, and the skip fallback
# ---------------------------------------------------------------------------
def _grads(conv: nn.Conv2d, x: torch.Tensor, grad_out: torch.Tensor):
    x = x.clone().requires_grad_()
    conv.zero_grad(set_to_none=True)
    out = conv(x)
    out.backward(grad_out)
    return out.detach(), x.grad, conv.weight.grad.clone(), \
        conv.bias.grad.clone()


@pytest.mark.parametrize('method', METHODS)
@pytest.mark.parametrize('shape, conv_kwargs', [
    ((1, 3, 1, 1), dict(padding=1)),  # batch of one, 1x1 < 3x3 kernel
    ((2, 3, 2, 2), dict(padding=1)),
    ((1, 3, 2, 2), dict(padding=1, stride=2)),
    ((1, 3, 2, 3), dict(padding=2, dilation=2)),
    ((1, 3, 5, 5), dict(padding=1, zero=True)),  # all-zero input
])
def test_degenerate_inputs_give_exact_gradients(method, shape, conv_kwargs):
    torch.manual_seed(0)
    conv_kwargs = dict(conv_kwargs)
    zero = conv_kwargs.pop('zero', False)
    reference = nn.Conv2d(3, 4, 3, **conv_kwargs).double()
    compressed = CompressedConv2d.from_conv(
        _copy(reference), method, eps=1.0, name='c', non_finite='skip')
    x = torch.zeros(shape) if zero else torch.randn(shape)
    x = x.double()
    grad_out = torch.randn_like(reference(x))
    expected = _grads(reference, x, grad_out)
    got = _grads(compressed, x, grad_out)
    stats = compressed.last_stats
    assert non_finite_layers({'c': stats}) == []
    for name, want, have in zip(('output', 'grad_input', 'grad_weight',
                                 'grad_bias'), expected, got):
        assert torch.isfinite(have).all(), name
        if method == 'gradient_filter' and name in ('grad_input',
                                                    'grad_weight'):
            continue  # an approximation by design (tests/test_gradient_filter)
        torch.testing.assert_close(have, want, msg=f'{method} {name}')
    if zero:  # the exact weight gradient of a zero input is zero
        assert torch.equal(got[2], torch.zeros_like(got[2]))


@pytest.mark.parametrize('method', ['svd', 'hosvd'])
def test_zero_input_below_full_energy(method):
    conv = CompressedConv2d(3, 4, 3, padding=1, method=method, eps=0.8)
    x = torch.zeros(2, 3, 6, 6, requires_grad=True)
    conv(x).sum().backward()
    assert torch.equal(conv.weight.grad, torch.zeros_like(conv.weight))
    assert torch.isfinite(x.grad).all()


@pytest.mark.parametrize('method', ['svd', 'hosvd', 'asi'])
@pytest.mark.parametrize('bad_value', [float('nan'), float('inf')])
def test_skip_keeps_nothing_and_gives_a_nan_weight_grad(method, bad_value):
    torch.manual_seed(0)
    reference = nn.Conv2d(3, 4, 3, padding=1)
    conv = CompressedConv2d.from_conv(_copy(reference), method, name='c',
                                      non_finite='skip')
    x = torch.randn(2, 3, 6, 6)
    x[1, 2, 3, 4] = bad_value
    grad_out = torch.randn(2, 4, 6, 6)
    expected = _grads(reference, x, grad_out)
    got = _grads(conv, x, grad_out)
    stats = conv.last_stats
    assert stats.non_finite is True and stats.kept_bytes == 0
    assert stats.ranks == ()
    assert torch.isnan(got[2]).all()
    # exact, including the non-finite entries, where they are equal
    torch.testing.assert_close(got[0], expected[0], equal_nan=True)
    torch.testing.assert_close(got[1], expected[1], equal_nan=True)
    # asi: the failed first step left no state; a finite input starts it
    if method == 'asi':
        assert 'c' not in conv.context.subspaces.layers
        _grads(conv, torch.randn(2, 3, 6, 6), grad_out)
        assert conv.context.subspaces.layers['c'].steps == 1


@pytest.mark.parametrize('method', ['vanilla', 'gradient_filter', 'asi'])
def test_lazy_flags_mark_non_finite_inputs(method):
    conv = CompressedConv2d(3, 4, 3, padding=1, method=method, name='c',
                            non_finite='skip')
    conv(torch.randn(2, 3, 6, 6)).sum().backward()  # asi: its first step
    finite = conv.last_stats
    x = torch.randn(2, 3, 6, 6)
    x[0, 0, 0, 0] = float('nan')
    conv(x).sum().backward()
    assert isinstance(conv.last_stats.non_finite, torch.Tensor)
    assert non_finite_layers({'a': finite, 'b': conv.last_stats}) == ['b']
    assert torch.isnan(conv.weight.grad).any()


def test_non_finite_mode_is_validated():
    with pytest.raises(ValueError,
                       match="non_finite must be one of .*got "
                       "non_finite='ignore'"):
        CompressedConv2d(3, 4, 3, non_finite='ignore')


def _copy(conv: nn.Conv2d) -> nn.Conv2d:
    clone = nn.Conv2d(conv.in_channels, conv.out_channels, conv.kernel_size,
                      stride=conv.stride, padding=conv.padding,
                      dilation=conv.dilation, bias=conv.bias is not None)
    clone.load_state_dict(conv.state_dict())
    return clone.to(conv.weight.dtype)
