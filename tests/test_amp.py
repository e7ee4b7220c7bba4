"""Mixed precision: compressed training under autocast matches float32.

mmengine's ``AmpOptimWrapper`` asserts a GPU at construction; what it does
to the model is run forward and loss under ``autocast`` in its
``optim_context``. On the CPU the test does exactly that with bfloat16 (the
CPU autocast dtype), through an ``OptimWrapper`` whose ``optim_context``
enters ``mmengine.runner.autocast``; on a GPU the real ``AmpOptimWrapper``
(float16) is used.
"""
from contextlib import contextmanager

import pytest
import torch
from mmengine.config import Config
from mmengine.optim import OptimWrapper
from mmengine.registry import OPTIM_WRAPPERS
from mmengine.hooks import Hook
from mmengine.runner import Runner, autocast

from conftest import tiny_run_cfg
from mmseg_hosvd.ops import CompressedConv2d
from test_training import leaf_config

AMP_DTYPE = torch.float16 if torch.cuda.is_available() else torch.bfloat16
#: relative L2 error allowed between the AMP and float32 gradient of every
#: trainable parameter, ``||g_amp - g_fp32|| / ||g_fp32||`` (docs/reliability.md,
#: "Mixed precision")
GRAD_RTOL = 0.05


@OPTIM_WRAPPERS.register_module(force=True)
class CPUAutocastOptimWrapper(OptimWrapper):
    """OptimWrapper whose ``optim_context`` runs under CPU bf16 autocast."""

    @contextmanager
    def optim_context(self, model):
        with super().optim_context(model), autocast(
                device_type='cpu', dtype=torch.bfloat16):
            yield


class GradRecorder(Hook):
    """Keeps a float32 copy of every gradient the optimizer steps with, and
    the compressed layers' stats of the (only) iteration."""

    def before_train(self, runner) -> None:
        self.grads = {}
        self.names = {id(p): n for n, p in runner.model.named_parameters()}
        runner.optim_wrapper.optimizer.register_step_pre_hook(self.record)
        self.output_dtypes = {}
        for name, module in runner.model.named_modules():
            if isinstance(module, CompressedConv2d):
                module.register_forward_hook(
                    lambda mod, args, out, name=name: self.output_dtypes.
                    __setitem__(name, out.dtype))

    def record(self, optimizer, args, kwargs) -> None:
        for group in optimizer.param_groups:
            for param in group['params']:
                if param.grad is not None:
                    self.grads[self.names[id(param)]] = \
                        param.grad.detach().float().clone()

    def after_train_iter(self, runner, batch_idx, data_batch=None,
                         outputs=None) -> None:
        self.stats = {
            name: module.last_stats
            for name, module in runner.model.named_modules()
            if isinstance(module, CompressedConv2d)
        }


def _one_step(tmp_path, tiny_voc, method, amp) -> GradRecorder:
    cfg = tiny_run_cfg(Config.fromfile(leaf_config('deeplabv3', '10l', method)),
                       str(tmp_path), tiny_voc, max_iters=1, val=False)
    cfg.optim_wrapper.pop('clip_grad', None)
    if amp and torch.cuda.is_available():
        cfg.optim_wrapper.update(type='AmpOptimWrapper', dtype='float16')
    elif amp:
        cfg.optim_wrapper.type = 'CPUAutocastOptimWrapper'
    runner = Runner.from_cfg(cfg)
    recorder = GradRecorder()
    runner.register_hook(recorder, priority='VERY_HIGH')
    runner.train()
    return recorder


@pytest.mark.slow
@pytest.mark.parametrize('method',
                         ['vanilla', 'gradient_filter', 'svd', 'hosvd', 'asi'])
def test_autocast_gradients_match_float32(tmp_path, tiny_voc, method):
    fp32 = _one_step(tmp_path / 'fp32', tiny_voc, method, amp=False)
    amp = _one_step(tmp_path / 'amp', tiny_voc, method, amp=True)
    assert fp32.grads.keys() == amp.grads.keys() and fp32.grads
    for name, grad in fp32.grads.items():
        error = (amp.grads[name] - grad).norm() / grad.norm().clamp(min=1e-12)
        assert error < GRAD_RTOL, f'{name}: relative error {error:.3g}'
    # the layers really ran in the AMP dtype, and kept factors in it
    assert set(amp.output_dtypes.values()) == {AMP_DTYPE}
    assert set(fp32.output_dtypes.values()) == {torch.float32}
    for name, stats in amp.stats.items():
        assert stats is not None, name
        if method in ('svd', 'hosvd', 'asi'):  # factors in the AMP dtype
            assert stats.kept_bytes == 2 * stats.paper_elements, name
