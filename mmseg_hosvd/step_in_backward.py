"""Take the optimizer step inside backward, one parameter at a time, so
that no parameter's gradient outlives its own update (model surgery).

At micro-batch 1 a compressed step's peak is the trainable parameters'
gradients, all alive at the end of backward (fp32: 4 bytes per trainable
weight, e.g. ~80 MiB for FCN-R18 with 10 trainable layers).
:func:`install_step_in_backward` registers a
``Tensor.register_post_accumulate_grad_hook`` on every trainable parameter
of the optimizer. When backward has accumulated a parameter's gradient,
the hook calls the (single, shared) optimizer's ``step()`` while that
parameter is the only one with a ``.grad``, then sets ``param.grad =
None``. Torch's optimizers skip parameters whose ``grad`` is None, and
the ones listed in :data:`PER_PARAMETER_OPTIMIZERS` update each parameter
from its own gradient and state only (momentum buffer, Adam's moments and
per-parameter ``step`` count, weight decay), so the result equals the
normal step's exactly; ``clip_grad=dict(type='value', ...)`` is
element-wise and is applied to each gradient before its step.

mmengine's ``update_params`` (backward, then ``step``, then ``zero_grad``)
works unchanged: backward steps every parameter, the wrapper's ``step()``
then finds no gradient and changes nothing (a torch optimizer step with
no ``.grad`` is a no-op), and ``zero_grad`` has nothing left to free.
A param scheduler is fine: it edits the same optimizer's ``param_groups``
between iterations.

Refused, with a ``ValueError`` naming ``step_in_backward`` and the reason,
where the result could not be exact: several optimizers
(``OptimWrapperDict``), an optim wrapper that scales the loss or otherwise
changes ``backward``/``step`` (``AmpOptimWrapper``), gradient accumulation
(``accumulative_counts > 1``), ``clip_grad`` by norm (the global norm
needs every gradient), an optimizer not known to be per-parameter
(``LBFGS``, a custom class), a distributed run (DDP averages the
gradients over ranks after the local backward has produced them).

The hook fires once per parameter and backward, after every use of the
parameter has added to its gradient; a weight whose gradient is
accumulated in several passes of one backward (shared by two reentrant
``torch.utils.checkpoint`` segments) would be stepped on part of it
(mmseg's segmentors share no weights).

Non-finite gradients: a step cannot be skipped once the parameters
backward reached first have been updated, so each gradient is checked
before its own step (``check_finite``) and a non-finite one raises
``FloatingPointError`` naming the parameter and those already stepped in
this backward; a run must use ``non_finite='raise'``
(:class:`~mmseg_hosvd.compression.CompressionConfig` checks it). When the
first gradient of a backward is non-finite (nothing stepped yet), the
optimizer's step pre-hooks run first with no gradient (a step that
changes nothing), so that a ``NonFiniteStepGuardHook`` raises as in a
normal step, naming the non-finite input batch, loss or layer input.
"""
from contextlib import contextmanager
from typing import Dict, Iterator, List, Optional, Union

import torch
import torch.distributed as dist
import torch.nn as nn
from mmengine.optim import AmpOptimWrapper, OptimWrapper, OptimWrapperDict
from torch.optim import Optimizer
from torch.utils.hooks import RemovableHandle

#: the config key (every refusal names it)
KEY = 'step_in_backward'

#: torch optimizers whose ``step`` skips parameters without ``.grad`` and
#: updates each parameter from its own gradient and state only (exact type)
PER_PARAMETER_OPTIMIZERS = (
    torch.optim.SGD, torch.optim.Adam, torch.optim.AdamW, torch.optim.Adamax,
    torch.optim.Adagrad, torch.optim.Adadelta, torch.optim.RMSprop,
    torch.optim.NAdam, torch.optim.RAdam, torch.optim.Rprop)

OptimizerLike = Union[Optimizer, OptimWrapper]


class StepInBackward:
    """The installed per-parameter steps: a removable handle.

    Args:
        optimizer: the one optimizer of every hooked parameter.
        params: the hooked parameters by name.
        clip_value: ``torch.nn.utils.clip_grad_value_`` keyword arguments
            applied to each gradient before its step, or None.
        check_finite: raise ``FloatingPointError`` on a non-finite gradient
            before its step.

    Attributes:
        stepped: names of the parameters stepped in the current backward
            (cleared by the next optimizer step taken outside backward,
            e.g. the optim wrapper's own ``step()``).
    """

    def __init__(self, optimizer: Optimizer, params: Dict[str, nn.Parameter],
                 clip_value: Optional[dict] = None,
                 check_finite: bool = True) -> None:
        self.optimizer = optimizer
        self.params = params
        self.clip_value = clip_value
        self.check_finite = check_finite
        self.stepped: List[str] = []
        self.enabled = True
        self._stepping = False
        self._names = {id(p): n for n, p in params.items()}
        self._all_params = [p for group in optimizer.param_groups
                            for p in group['params']]
        self._handles: List[RemovableHandle] = [
            p.register_post_accumulate_grad_hook(self._step_one)
            for p in params.values()]
        self._handles.append(
            optimizer.register_step_pre_hook(self._outside_step))

    def remove(self) -> None:
        """Remove every hook; steps happen after backward again."""
        for handle in self._handles:
            handle.remove()
        self._handles = []

    @contextmanager
    def suspended(self) -> Iterator[None]:
        """Backward keeps its gradients inside the block (no step), e.g. to
        read the gradients of one forward/backward."""
        enabled, self.enabled = self.enabled, False
        try:
            yield
        finally:
            self.enabled = enabled

    def _outside_step(self, optimizer, args, kwargs) -> None:
        """Optimizer step pre-hook: a step not taken by a hook ends the
        backward's list of stepped parameters."""
        if not self._stepping:
            self.stepped = []

    def _step_one(self, param: nn.Parameter) -> None:
        """Post-accumulate-grad hook: step ``param`` alone, free its grad."""
        if not self.enabled:
            return
        name = self._names[id(param)]
        if self.check_finite and not bool(torch.isfinite(param.grad).all()):
            if not self.stepped:
                self._step_without_gradient(param)
            raise FloatingPointError(self._non_finite_message(name))
        others = [self._names.get(id(p), '?') for p in self._all_params
                  if p is not param and p.grad is not None]
        if others:
            raise RuntimeError(
                f'{KEY}: parameter(s) {others[:3]} already hold a gradient '
                f'when {name!r} is stepped (gradients kept from an earlier '
                'backward, or zero_grad(set_to_none=False)): the step would '
                'update them too; set their .grad to None before backward')
        if self.clip_value is not None:
            torch.nn.utils.clip_grad_value_([param], **self.clip_value)
        self._stepping = True
        try:
            self.optimizer.step()
        finally:
            self._stepping = False
        param.grad = None
        self.stepped.append(name)

    def _step_without_gradient(self, param: nn.Parameter) -> None:
        """An optimizer step with no ``.grad`` (it changes nothing), so
        that its step pre-hooks see this backward before any parameter
        changed: a step guard (``NonFiniteStepGuardHook``) then raises
        naming the non-finite input batch, loss or layer input."""
        grad, param.grad = param.grad, None
        self._stepping = True
        try:
            self.optimizer.step()
        finally:
            self._stepping = False
            param.grad = grad

    def _non_finite_message(self, name: str) -> str:
        done = (f'{len(self.stepped)} parameter(s) whose gradients came '
                f'earlier in this backward were already updated '
                f'({", ".join(self.stepped[:5])}'
                f'{", ..." if len(self.stepped) > 5 else ""}); resume from '
                'the last checkpoint' if self.stepped else
                'no parameter was updated in this backward (weights '
                'unchanged)')
        return (f'{KEY}: non-finite gradient of {name!r} before its '
                f'optimizer step; {done}')


def install_step_in_backward(model: nn.Module,
                             optimizer: Union[OptimizerLike,
                                              OptimWrapperDict],
                             check_finite: bool = True) -> StepInBackward:
    """Step every trainable parameter of ``optimizer`` inside backward
    (see the module docstring).

    Args:
        model: the unwrapped model (for the parameter names).
        optimizer: a torch optimizer or an mmengine ``OptimWrapper`` (whose
            ``clip_grad`` by value is applied per parameter).
        check_finite: check each gradient before its step.

    Returns:
        the handle (``remove()``, ``suspended()``).

    Raises:
        ValueError: naming ``step_in_backward`` and why the in-backward
            step could not equal the normal step.
    """
    optimizer, clip_value = _checked_optimizer(optimizer)
    if isinstance(model, nn.parallel.DistributedDataParallel) or (
            dist.is_available() and dist.is_initialized()
            and dist.get_world_size() > 1):
        raise ValueError(
            f'{KEY}: a distributed run averages the gradients over ranks '
            'after the local backward; a per-parameter step inside '
            'backward would use the local gradient')
    in_optimizer = {id(p) for group in optimizer.param_groups
                    for p in group['params']}
    params = {name: param for name, param in model.named_parameters()
              if param.requires_grad and id(param) in in_optimizer}
    if not params:
        raise ValueError(f'{KEY}: the optimizer holds no trainable parameter '
                         'of the model: nothing to step')
    return StepInBackward(optimizer, params, clip_value, check_finite)


def _checked_optimizer(optimizer: Union[OptimizerLike, OptimWrapperDict]):
    """``(torch optimizer, clip_grad_value_ kwargs or None)``, or a
    ``ValueError`` naming why a step inside backward would not be exact."""
    clip_value = None
    if isinstance(optimizer, OptimWrapperDict):
        raise ValueError(
            f'{KEY}: more than one optimizer (OptimWrapperDict '
            f'{list(optimizer.keys())}); it needs the one optimizer of '
            'every trainable parameter')
    if isinstance(optimizer, AmpOptimWrapper):
        raise ValueError(
            f'{KEY}: AmpOptimWrapper scales the loss and unscales, checks '
            'and skips the step only after the whole backward (GradScaler); '
            'use amp=False / a plain OptimWrapper')
    if isinstance(optimizer, OptimWrapper):
        wrapper = optimizer
        _check_wrapper(wrapper)
        if wrapper.clip_grad_kwargs:
            if wrapper.clip_func is not torch.nn.utils.clip_grad_value_:
                raise ValueError(
                    f'{KEY}: clip_grad by norm needs the global norm of every '
                    "gradient before any step; use clip_grad=dict(type="
                    "'value', ...) (element-wise, applied per parameter) or "
                    'no clip_grad')
            clip_value = dict(wrapper.clip_grad_kwargs)
        optimizer = wrapper.optimizer
    if type(optimizer) not in PER_PARAMETER_OPTIMIZERS:
        raise ValueError(
            f'{KEY}: optimizer {type(optimizer).__name__} is not known to '
            'update each parameter from its own gradient only; supported: '
            f'{", ".join(c.__name__ for c in PER_PARAMETER_OPTIMIZERS)}')
    return optimizer, clip_value


def _check_wrapper(wrapper: OptimWrapper) -> None:
    """Refuse gradient accumulation and wrappers that change backward or
    step."""
    kind = type(wrapper)
    changed = [name for name in ('backward', 'step', 'update_params')
               if getattr(kind, name) is not getattr(OptimWrapper, name)]
    if changed:
        raise ValueError(
            f'{KEY}: optim wrapper {kind.__name__} overrides '
            f'{", ".join(changed)} of OptimWrapper; only a plain backward '
            'and step can be moved into backward exactly')
    if wrapper._accumulative_counts > 1:
        raise ValueError(
            f'{KEY}: accumulative_counts={wrapper._accumulative_counts} '
            'accumulates gradients over several backwards before one step; '
            'it needs accumulative_counts=1')
