"""Test-only support for CPU DDP, imported through ``custom_imports`` by
tests/test_ddp.py in every process that ``torch.distributed.run`` starts.

* mmengine 0.10.7's ``--launcher pytorch`` calls ``torch.cuda.set_device``
  unconditionally, which a CPU-only torch build lacks. The Runner skips its
  own ``init_dist`` when a process group already exists, so on import this
  module initialises the gloo process group from torchrun's environment.
* :class:`RankDumpHook` saves each rank's trainable weights after every
  training iteration, and its state dict after the run.
"""
import os
import os.path as osp

import torch
import torch.distributed as dist
from mmengine.dist import get_rank
from mmengine.hooks import Hook
from mmengine.model import is_model_wrapper
from mmengine.registry import HOOKS


if int(os.environ.get('WORLD_SIZE', '1')) > 1 and not dist.is_initialized():
    dist.init_process_group('gloo')


@HOOKS.register_module()
class RankDumpHook(Hook):
    """Writes ``rank<r>.pth`` to the work_dir: ``steps`` (the trainable
    parameters after each training iteration, in order), ``state_dict``
    (after the run), ``wrapped``, ``compressed`` (number of
    CompressedConv2d) and ``iter``."""

    priority = 'LOWEST'

    def before_train(self, runner) -> None:
        self.steps = []

    def after_train_iter(self, runner, batch_idx, data_batch=None,
                         outputs=None) -> None:
        model = runner.model
        model = model.module if is_model_wrapper(model) else model
        self.steps.append({
            name: param.detach().clone()
            for name, param in model.named_parameters()
            if param.requires_grad
        })

    def after_run(self, runner) -> None:
        model = runner.model
        wrapped = is_model_wrapper(model)
        model = model.module if wrapped else model
        compressed = sum(
            type(m).__name__ == 'CompressedConv2d' for m in model.modules())
        torch.save(
            dict(state_dict=model.state_dict(), wrapped=wrapped,
                 compressed=compressed, iter=runner.iter, steps=self.steps),
            osp.join(runner.work_dir, f'rank{get_rank()}.pth'))
