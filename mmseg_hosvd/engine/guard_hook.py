"""Stop or skip optimizer steps with a non-finite input, loss or gradient."""
from functools import partial
from typing import Dict, List, Optional

import torch
import torch.distributed as dist
from mmengine.dist import get_rank, get_world_size
from mmengine.hooks import Hook
from mmengine.model import is_model_wrapper
from mmengine.optim import OptimWrapperDict
from mmengine.registry import HOOKS
from torch import Tensor
from torch.utils.hooks import RemovableHandle

from ..ops import NON_FINITE_MODES
from ..surgery import compressed_layers
from .distributed import all_ranks_objects


@HOOKS.register_module()
class NonFiniteStepGuardHook(Hook):
    """Check every optimizer step for NaN/Inf and stop or skip it, on every
    rank alike.

    Before each optimizer step (an optimizer step pre-hook on every
    optimizer of the run, each of an ``OptimWrapperDict``) it checks the
    step's tensors: the model's input batch and its losses (recorded by a
    forward hook on the model), the inputs of the compressed layers (their
    ``last_stats.non_finite``) and the gradients. Under DDP the per-rank
    flags are summed by one ``all_reduce``, so every rank takes the same
    decision. One host synchronisation per step.

    * ``'raise'``: ``FloatingPointError`` before the step (no weight,
      momentum or weight decay changed), naming the iteration, the rank(s)
      and the non-finite tensors in forward order: the input batch, the
      first compressed layer with a non-finite input, the losses, the first
      parameter with a non-finite gradient.
    * ``'skip'``: every ``.grad`` of that optimizer is set to None, so the
      step changes nothing; counted in :attr:`skipped_steps` and logged as
      a warning naming the same tensors.

    :class:`~.compression_hook.ActivationCompressionHook` registers this
    hook itself when the run has none, and sets its ``non_finite``; it also
    guards a run without compression (then ``non_finite`` None means
    ``'skip'``).

    Args:
        non_finite: ``'raise'``, ``'skip'`` or None (the compression hook's
            choice, else ``'skip'``).

    Attributes:
        skipped_steps: optimizer steps skipped so far.
    """

    priority = 'VERY_HIGH'

    def __init__(self, non_finite: Optional[str] = None) -> None:
        if non_finite is not None and non_finite not in NON_FINITE_MODES:
            raise ValueError(f'non_finite: expected one of '
                             f'{NON_FINITE_MODES} or None, got {non_finite!r}')
        self.non_finite = non_finite
        self.skipped_steps = 0
        self._handles: List[RemovableHandle] = []
        self._forward_flags: Dict[str, Tensor] = {}

    def before_train(self, runner) -> None:
        """Guard every optimizer of the run and record the model's input
        and loss flags.

        Args:
            runner (Runner): The runner of the training process.
        """
        wrapper = runner.optim_wrapper
        wrappers = (list(wrapper.values())
                    if isinstance(wrapper, OptimWrapperDict) else [wrapper])
        for optim_wrapper in wrappers:
            self._handles.append(
                optim_wrapper.optimizer.register_step_pre_hook(
                    partial(self._check_step, runner)))
        self._handles.append(_unwrap(runner.model).register_forward_hook(
            self._record_forward, with_kwargs=True))

    def after_train(self, runner) -> None:
        """Remove the step and forward hooks.

        Args:
            runner (Runner): The runner of the training process.
        """
        self.remove_step_guards()

    def after_run(self, runner) -> None:
        """Remove the step and forward hooks (also after a failed run).

        Args:
            runner (Runner): The runner of the training process.
        """
        self.remove_step_guards()

    def remove_step_guards(self) -> None:
        """Remove the hooks of :meth:`before_train`."""
        for handle in self._handles:
            handle.remove()
        self._handles = []

    def _record_forward(self, module, args, kwargs, output) -> None:
        """Forward hook: in a ``mode='loss'`` forward, one flag (a 0-dim
        bool tensor, no synchronisation) per input batch and loss."""
        if kwargs.get('mode') != 'loss' or not isinstance(output, dict):
            return
        flags = {}
        inputs = kwargs.get('inputs', args[0] if args else None)
        if isinstance(inputs, Tensor) and inputs.is_floating_point():
            flags['the input batch'] = ~torch.isfinite(inputs).all()
        for name, value in output.items():
            if 'loss' in name and isinstance(value, Tensor):
                flags[f'loss {name!r}'] = ~torch.isfinite(value).all()
        self._forward_flags = flags

    def _check_step(self, runner, optimizer: torch.optim.Optimizer, args,
                    kwargs) -> None:
        """Optimizer step pre-hook: raise or skip a non-finite step."""
        params = [
            param for group in optimizer.param_groups
            for param in group['params'] if param.grad is not None
        ]
        model = _unwrap(runner.model)
        flags = dict(self._forward_flags)
        self._forward_flags = {}
        flags.update(_layer_flags(model))
        grads = [~torch.isfinite(p.grad).all() for p in params]
        device = params[0].grad.device if params else torch.device('cpu')
        local = torch.stack([_any(list(flags.values()), device),
                             _any(grads, device)])
        ranks = _bad_ranks(local)
        if not ranks:
            return
        names = {id(p): n for n, p in model.named_parameters()}
        found = [what for what, flag in flags.items() if bool(flag)]
        bad_grad = next((names.get(id(p), '?') for p, flag in
                         zip(params, grads) if bool(flag)), None)
        if bad_grad is not None:
            found.append(f'the gradient of {bad_grad!r}')
        where = (f'iteration {runner.iter + 1} on rank(s) '
                 f'{", ".join(map(str, ranks))} (this is rank {get_rank()})')
        # every rank is here (``ranks`` is global): gather what each found
        by_rank = all_ranks_objects(found)
        what = '; '.join(
            found if len(by_rank) == 1 else
            [f'rank {rank}: {", ".join(items)}'
             for rank, items in enumerate(by_rank) if items])
        if (self.non_finite or 'skip') == 'raise':
            raise FloatingPointError(
                f"non_finite='raise': non-finite tensors in {where}: {what}"
                '; the optimizer step was not taken (weights unchanged)')
        for param in params:
            param.grad = None
        self.skipped_steps += 1
        layers = sorted({item for items in by_rank for item in items
                         if item.startswith('Compressed')})
        runner.logger.warning(
            f'{type(self).__name__}: non-finite gradient in iteration '
            f'{runner.iter + 1}: optimizer step skipped on every rank (no '
            f'parameter, momentum or weight decay update); non-finite in '
            f'{where}: {what}; compressed layers with non-finite input: '
            f'{", ".join(layers) or "none"}; {self.skipped_steps} step(s) '
            'skipped so far')


def _unwrap(model: torch.nn.Module) -> torch.nn.Module:
    return model.module if is_model_wrapper(model) else model


def _any(flags: List[Tensor], device: torch.device) -> Tensor:
    """Whether any 0-dim flag is set: a 0-dim bool tensor on ``device``."""
    if not flags:
        return torch.zeros((), dtype=torch.bool, device=device)
    return torch.stack([f.to(device) for f in flags]).any()


def _layer_flags(model: torch.nn.Module) -> Dict[str, Tensor]:
    """``'<Layer> <path> (method=..): input contains NaN/Inf'`` -> flag of
    the compressed layers' latest forward, in module order."""
    flags = {}
    for path, layer in compressed_layers(model).items():
        stats = layer.last_stats
        if stats is None:
            continue
        flags[f'{type(layer).__name__} {path!r} (method={layer.method!r}): '
              'input contains NaN/Inf'] = torch.as_tensor(stats.non_finite)
    return flags


def _bad_ranks(local: Tensor) -> List[int]:
    """The ranks whose (source, gradient) flags ``local`` (2,) are set;
    one ``all_reduce`` under DDP, one host synchronisation."""
    world = get_world_size()
    table = torch.zeros(world, 2, device=local.device)
    table[get_rank()] = local.float()
    if world > 1 and dist.is_available() and dist.is_initialized():
        backend = dist.get_backend()
        device = torch.device('cuda', torch.cuda.current_device()) \
            if backend == 'nccl' else torch.device('cpu')
        table = table.to(device)
        dist.all_reduce(table)  # sum over ranks
    return [rank for rank, row in enumerate(table.tolist()) if any(row)]


def step_guard(runner) -> Optional[NonFiniteStepGuardHook]:
    """The :class:`NonFiniteStepGuardHook` registered in ``runner``, or
    None."""
    return next((hook for hook in runner.hooks
                 if isinstance(hook, NonFiniteStepGuardHook)), None)
