"""Skip optimizer steps whose gradients are not all finite."""
from functools import partial
from typing import List, Optional, Sequence

import torch
from mmengine.hooks import Hook
from mmengine.model import is_model_wrapper
from mmengine.optim import OptimWrapperDict
from mmengine.registry import HOOKS
from torch.utils.hooks import RemovableHandle

from ..ops import non_finite_layers
from ..surgery import compressed_layers


@HOOKS.register_module()
class NonFiniteStepGuardHook(Hook):
    """Skip every optimizer step whose gradients are not all finite.

    In ``before_train`` it registers an optimizer step pre-hook on every
    optimizer of the run (each of an ``OptimWrapperDict``). When a gradient
    holds NaN/Inf, every ``.grad`` of that optimizer is set to None, so the
    step changes no parameter, momentum or weight decay; the skipped step is
    counted in :attr:`skipped_steps` and logged as a warning naming the
    compressed layers (:class:`~mmseg_hosvd.ops.CompressedConv2d`) whose
    input was not finite. One host synchronisation per step.

    The companion of :class:`~.compression_hook.ActivationCompressionHook`
    with ``non_finite='skip'`` (its default), whose compressed convs turn a
    NaN/Inf input into a NaN weight gradient; it guards any model (vanilla
    included).

    Attributes:
        skipped_steps: optimizer steps skipped so far.
    """

    priority = 'VERY_HIGH'

    def __init__(self) -> None:
        self.skipped_steps = 0
        self._handles: List[RemovableHandle] = []

    def before_train(self, runner) -> None:
        """Guard every optimizer of the run.

        Args:
            runner (Runner): The runner of the training process.
        """
        wrapper = runner.optim_wrapper
        wrappers = (list(wrapper.values())
                    if isinstance(wrapper, OptimWrapperDict) else [wrapper])
        for optim_wrapper in wrappers:
            self._handles.append(
                optim_wrapper.optimizer.register_step_pre_hook(
                    partial(self._skip_non_finite_step, runner)))

    def after_train(self, runner) -> None:
        """Remove the optimizer step pre-hooks.

        Args:
            runner (Runner): The runner of the training process.
        """
        self.remove_step_guards()

    def after_run(self, runner) -> None:
        """Remove the optimizer step pre-hooks (also after a failed run).

        Args:
            runner (Runner): The runner of the training process.
        """
        self.remove_step_guards()

    def remove_step_guards(self) -> None:
        """Remove the optimizer step pre-hooks of :meth:`before_train`."""
        for handle in self._handles:
            handle.remove()
        self._handles = []

    def _skip_non_finite_step(self, runner, optimizer: torch.optim.Optimizer,
                              args, kwargs) -> None:
        """Optimizer step pre-hook: if any gradient is NaN/Inf, set every
        ``.grad`` of ``optimizer`` to None and log the skipped step."""
        params = [
            param for group in optimizer.param_groups
            for param in group['params'] if param.grad is not None
        ]
        if not params or grads_are_finite(params):
            return
        for param in params:
            param.grad = None
        self.skipped_steps += 1
        layers = non_finite_layers(self._last_stats(runner.model))
        runner.logger.warning(
            f'{type(self).__name__}: non-finite gradient in iteration '
            f'{runner.iter + 1}: optimizer step skipped (no parameter, '
            f'momentum or weight decay update); compressed layers with '
            f'non-finite input: {", ".join(layers) or "none"}; '
            f'{self.skipped_steps} step(s) skipped so far')

    @staticmethod
    def _last_stats(model: torch.nn.Module) -> dict:
        """``last_stats`` of the compressed layers of ``model`` by path."""
        model = model.module if is_model_wrapper(model) else model
        return {
            path: conv.last_stats
            for path, conv in compressed_layers(model).items()
            if conv.last_stats is not None
        }


def grads_are_finite(params: Sequence[torch.Tensor]) -> bool:
    """Whether every ``.grad`` of ``params`` (all not None) is finite; one
    host synchronisation."""
    flags = [torch.isfinite(param.grad).all() for param in params]
    device = flags[0].device
    return bool(torch.stack([flag.to(device) for flag in flags]).all())


def step_guard(runner) -> Optional[NonFiniteStepGuardHook]:
    """The :class:`NonFiniteStepGuardHook` registered in ``runner``, or
    None."""
    return next((hook for hook in runner.hooks
                 if isinstance(hook, NonFiniteStepGuardHook)), None)
