"""The tensor memory of a training run as the allocator sees it: what is
held between iterations plus each iteration's peak, in the run's own log."""
from typing import Optional

import torch
import torch.nn as nn
from mmengine.hooks import Hook
from mmengine.model import is_model_wrapper
from mmengine.registry import HOOKS

from ..ops import MIB
from ..ops.accounting import storage_keys
from ..peak_memory import PeakMemoryMeter
from ..surgery import compression_state_dict

__all__ = ['TensorMemoryHook', 'held_bytes']


def _tensors(node) -> list:
    """Every tensor of a (nested) dict / list / tuple."""
    found, stack = [], [node]
    while stack:
        node = stack.pop()
        if torch.is_tensor(node):
            found.append(node)
        elif isinstance(node, dict):
            stack.extend(node.values())
        elif isinstance(node, (list, tuple)):
            stack.extend(node)
    return found


def held_bytes(model: nn.Module,
               optimizer: Optional[torch.optim.Optimizer] = None) -> int:
    """Bytes held between iterations: the model's parameters, their
    gradients (present while gradients accumulate), buffers, the
    optimizer's state and the compression state (``asi`` bases), each
    storage counted once."""
    tensors = list(model.parameters()) + list(model.buffers())
    tensors += [p.grad for p in model.parameters() if p.grad is not None]
    if optimizer is not None:
        tensors += _tensors(list(optimizer.state.values()))
    tensors += _tensors(compression_state_dict(model))
    return sum(nbytes for _, _, nbytes in storage_keys(tensors))


@HOOKS.register_module()
class TensorMemoryHook(Hook):
    """Meter the tensor memory of training iterations (one iteration is one
    micro-batch under gradient accumulation).

    Each of the first ``begin_iters`` iterations and then every
    ``interval``-th one (counted from the first) it puts into the message
    hub (text log, TensorBoard):

    * ``tensor_held_mib``: :func:`held_bytes` at the iteration's start;
    * ``tensor_peak_mib``: the peak allocated above the iteration's start
      during it (:class:`~mmseg_hosvd.peak_memory.PeakMemoryMeter`: the
      CPU allocator's events through ``torch.profiler``, which slows the
      metered iteration; on CUDA ``max_memory_allocated``);
    * ``tensor_total_mib``: their sum, the figure ``tools/fit_memory.py``
      fits into a budget.

    After training it logs the largest total and, with ``budget_mib``, warns
    if that total is over the budget. MiB = 2**20 bytes.

    Args:
        interval: meter every ``interval``-th iteration (1: every one, the
            optimizer steps of accumulated micro-batches included).
        begin_iters: also meter each of the first ``begin_iters``
            iterations (e.g. the micro-batches of the first two optimizer
            steps, the first of which creates the optimizer's state).
        budget_mib: the budget the run was fitted to, or None.
    """
    priority = 'VERY_HIGH'  # the meter wraps the other hooks' iteration work

    def __init__(self, interval: int = 1, begin_iters: int = 0,
                 budget_mib: Optional[float] = None) -> None:
        for key, value, least in (('interval', interval, 1),
                                  ('begin_iters', begin_iters, 0)):
            if isinstance(value, bool) or not isinstance(
                    value, int) or value < least:
                raise ValueError(f'TensorMemoryHook: {key}: expected an int '
                                 f'>= {least}, got {value!r}')
        if budget_mib is not None and not budget_mib > 0:
            raise ValueError('TensorMemoryHook: budget_mib: expected None or'
                             f' > 0, got {budget_mib!r}')
        self.interval = interval
        self.begin_iters = begin_iters
        self.budget_mib = budget_mib
        self.largest_total_mib: Optional[float] = None
        self._meter: Optional[PeakMemoryMeter] = None
        self._held = 0

    @staticmethod
    def _model(runner) -> nn.Module:
        model = runner.model
        return model.module if is_model_wrapper(model) else model

    def before_train_iter(self, runner, batch_idx: int,
                          data_batch=None) -> None:
        if runner.iter >= self.begin_iters and runner.iter % self.interval:
            return
        model = self._model(runner)
        optimizer = getattr(runner.optim_wrapper, 'optimizer', None)
        self._held = held_bytes(model, optimizer)
        device = next(model.parameters()).device
        self._meter = PeakMemoryMeter(
            device if device.type == 'cuda' else 'cpu')
        self._meter.__enter__()

    def after_train_iter(self, runner, batch_idx: int, data_batch=None,
                         outputs=None) -> None:
        meter, self._meter = self._meter, None
        if meter is None:
            return
        meter.__exit__(None, None, None)
        held, peak = self._held / MIB, meter.peak_mib
        hub = runner.message_hub
        hub.update_scalar('train/tensor_held_mib', held)
        hub.update_scalar('train/tensor_peak_mib', peak)
        hub.update_scalar('train/tensor_total_mib', held + peak)
        self.largest_total_mib = max(held + peak,
                                     self.largest_total_mib or 0.0)

    def after_train(self, runner) -> None:
        if self.largest_total_mib is None:
            return
        message = (f'tensor memory: largest total {self.largest_total_mib:.1f}'
                   ' MiB (held + peak) over the metered iterations')
        if self.budget_mib is not None:
            over = self.largest_total_mib > self.budget_mib
            message += (f', {"OVER" if over else "within"} the budget of '
                        f'{self.budget_mib:g} MiB')
            if over:
                runner.logger.warning(message)
                return
        runner.logger.info(message)
