"""Test-only support for CPU DDP, imported through ``custom_imports`` by
tests/test_ddp.py in every process that ``torch.distributed.run`` starts.

* mmengine 0.10.7's ``--launcher pytorch`` calls ``torch.cuda.set_device``
  unconditionally, which a CPU-only torch build lacks. The Runner skips its
  own ``init_dist`` when a process group already exists, so on import this
  module initialises the gloo process group from torchrun's environment.
* :class:`RankDumpHook` saves each rank's trainable weights after every
  training iteration, and its state dict after the run.
* :class:`CommBytesHook` counts the bytes DDP all-reduces in each step (a
  DDP communication hook around the default all-reduce) and checks the
  frozen parameters against their values before training.
"""
import os
import os.path as osp

import torch
import torch.distributed as dist
from mmengine.dist import get_rank
from mmengine.hooks import Hook
from mmengine.model import is_model_wrapper
from mmengine.registry import HOOKS
from torch.distributed.algorithms.ddp_comm_hooks import default_hooks


if int(os.environ.get('WORLD_SIZE', '1')) > 1 and not dist.is_initialized():
    dist.init_process_group('gloo')


@HOOKS.register_module()
class RankDumpHook(Hook):
    """Writes ``rank<r>.pth`` to the work_dir: ``initial`` and ``steps``
    (the trainable parameters before training and after each training
    iteration, in order), ``state_dict`` (after the run), ``wrapped``,
    ``compressed`` (number of CompressedConv2d), ``iter`` and
    ``skipped_steps`` (of the run's NonFiniteStepGuardHook)."""

    priority = 'LOWEST'

    def before_train(self, runner) -> None:
        self.steps = []
        self.initial = self._trainable(runner)

    @staticmethod
    def _trainable(runner) -> dict:
        model = runner.model
        model = model.module if is_model_wrapper(model) else model
        return {
            name: param.detach().clone()
            for name, param in model.named_parameters()
            if param.requires_grad
        }

    def after_train_iter(self, runner, batch_idx, data_batch=None,
                         outputs=None) -> None:
        self.steps.append(self._trainable(runner))

    def after_run(self, runner) -> None:
        model = runner.model
        wrapped = is_model_wrapper(model)
        model = model.module if wrapped else model
        compressed = sum(
            type(m).__name__ == 'CompressedConv2d' for m in model.modules())
        skipped = sum(getattr(h, 'skipped_steps', 0) for h in runner.hooks
                      if type(h).__name__ == 'NonFiniteStepGuardHook')
        torch.save(
            dict(state_dict=model.state_dict(), wrapped=wrapped,
                 compressed=compressed, iter=runner.iter, steps=self.steps,
                 initial=self.initial, skipped_steps=skipped),
            osp.join(runner.work_dir, f'rank{get_rank()}.pth'))


@HOOKS.register_module()
class CommBytesHook(Hook):
    """Writes ``comm<r>.pth`` to the work_dir: ``step_bytes`` (bytes of the
    gradient buckets all-reduced in each iteration), ``trainable_bytes``
    (bytes of the trainable parameters' gradients), ``frozen_unchanged``
    (every frozen parameter bit-identical to its value before training),
    ``num_frozen`` and ``wrapper`` (the model wrapper's class name)."""

    priority = 'LOWEST'

    def before_train(self, runner) -> None:
        self.step_bytes = []
        runner.model.register_comm_hook(state=self, hook=self._count)
        self.frozen = {
            name: param.detach().clone()
            for name, param in runner.model.module.named_parameters()
            if not param.requires_grad
        }

    def before_train_iter(self, runner, batch_idx, data_batch=None) -> None:
        self.step_bytes.append(0)

    @staticmethod
    def _count(state, bucket):
        buffer = bucket.buffer()
        state.step_bytes[-1] += buffer.numel() * buffer.element_size()
        return default_hooks.allreduce_hook(None, bucket)

    def after_run(self, runner) -> None:
        model = runner.model.module
        params = dict(model.named_parameters())
        torch.save(
            dict(step_bytes=self.step_bytes,
                 trainable_bytes=sum(
                     p.numel() * p.element_size()
                     for p in model.parameters() if p.requires_grad),
                 frozen_unchanged=all(
                     torch.equal(params[n], value)
                     for n, value in self.frozen.items()),
                 num_frozen=len(self.frozen),
                 wrapper=type(runner.model).__name__),
            osp.join(runner.work_dir, f'comm{get_rank()}.pth'))


@HOOKS.register_module()
class RankPoisonHook(Hook):
    """Writes NaN into one pixel of the first image (after the data
    preprocessor) on rank ``rank`` in the 0-based iteration
    ``iteration``."""

    priority = 'LOWEST'

    def __init__(self, rank: int = 1, iteration: int = 0) -> None:
        self.rank = rank
        self.iteration = iteration
        self.active = False

    def before_train(self, runner) -> None:
        runner.model.module.data_preprocessor.register_forward_hook(
            self._poison)

    def before_train_iter(self, runner, batch_idx, data_batch=None) -> None:
        self.active = (runner.iter == self.iteration
                       and get_rank() == self.rank)

    def _poison(self, module, args, output):
        if self.active and module.training:
            output['inputs'][0, :, 5, 7] = float('nan')
        return output
