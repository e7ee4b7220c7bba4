"""Activation checkpointing of the trainable modules (model surgery).

The peer of activation compression: a checkpointed module keeps only its
input for backward and runs its forward again there (exact gradients, about
one extra forward of the checkpointed modules).

:func:`checkpoint_modules` replaces each module at the given paths by a
:class:`CheckpointedModule` that registers the original's child modules
under the same names (so parameter names, state dicts and the optimizer's
parameters stay the same; checkpoints load into plain mmseg with
``strict=True``) and calls the original module under
``torch.utils.checkpoint.checkpoint(..., use_reentrant=False)``.

Why not mmengine's ``activation_checkpointing`` runner key: it replaces the
modules' ``forward`` by ``checkpoint(forward, *args)`` without
``use_reentrant``, which PyTorch (2.x) answers with a warning and the
*reentrant* variant. The reentrant variant runs the forward under
``no_grad`` and gives its parameters gradients only through inputs that
require grad: the first trainable block after a frozen backbone gets an
input that does not, so its parameters get no gradient at all (PyTorch warns
"None of the inputs have requires_grad=True"); it also drops keyword
arguments. The non-reentrant variant used here has neither problem.

BatchNorm layers in training mode would update their running statistics a
second time while backward recomputes the forward; the recomputation runs
under :class:`KeepNormStats`, which restores them, so running statistics
also equal a run without checkpointing.

Placements (:func:`checkpoint_paths`): ``'block'`` checkpoints each block
(each child of a trainable ``nn.Sequential`` such as a ResNet stage, each
module of a decode head) separately; ``'segment'`` checkpoints the largest
trainable modules (a whole stage) as one piece.
"""
import contextlib
from operator import attrgetter
from typing import Iterator, List, Optional, Sequence, Tuple

import torch
import torch.nn as nn
from torch.nn.modules.batchnorm import _BatchNorm
from torch.utils.checkpoint import checkpoint

PLACEMENTS = ('block', 'segment')


class KeepNormStats:
    """Context manager: BatchNorm running statistics (``running_mean``,
    ``running_var``, ``num_batches_tracked``) of ``module`` are the same on
    exit as on entry."""

    def __init__(self, module: nn.Module) -> None:
        self.module = module
        self._saved: List[Tuple[torch.Tensor, torch.Tensor]] = []

    def __enter__(self) -> 'KeepNormStats':
        self._saved = [(buf, buf.clone())
                       for norm in self.module.modules()
                       if isinstance(norm, _BatchNorm) and norm.training
                       for buf in norm.buffers()]
        return self

    def __exit__(self, *exc_info) -> None:
        with torch.no_grad():
            for buf, value in self._saved:
                buf.copy_(value)
        self._saved = []


class CheckpointedModule(nn.Module):
    """Runs ``module`` under non-reentrant activation checkpointing.

    Registers ``module``'s children under their own names (no parameter is
    renamed); ``module`` itself is kept unregistered in :attr:`inner` and
    called as before (its hooks still run).

    Args:
        module: a module that holds its parameters and buffers in child
            modules (e.g. a ResNet block, a ``ConvModule``, a Sequential).
        preserve_rng_state: replay the RNG state in the recomputation
            (needed for dropout).

    Raises:
        ValueError: ``module`` has direct parameters or buffers, or is
            already checkpointed.
    """

    def __init__(self, module: nn.Module,
                 preserve_rng_state: bool = True) -> None:
        super().__init__()
        if isinstance(module, CheckpointedModule):
            raise ValueError('module is already checkpointed')
        direct = [name for name, _ in module.named_parameters(recurse=False)]
        direct += [name for name, _ in module.named_buffers(recurse=False)]
        if direct:
            raise ValueError(f'cannot checkpoint a {type(module).__name__} '
                             'with direct parameters or buffers '
                             f'{direct}: checkpoint the module around it')
        for name, child in module.named_children():
            self.add_module(name, child)
        self.__dict__['inner'] = module  # unregistered: no duplicate names
        self.preserve_rng_state = preserve_rng_state
        self.training = module.training

    def train(self, mode: bool = True) -> 'CheckpointedModule':
        super().train(mode)
        self.inner.training = mode
        return self

    def _contexts(self):
        return contextlib.nullcontext(), KeepNormStats(self.inner)

    def forward(self, *args, **kwargs):
        if not torch.is_grad_enabled():  # inference: nothing to save
            return self.inner(*args, **kwargs)
        return checkpoint(self.inner, *args, use_reentrant=False,
                          context_fn=self._contexts,
                          preserve_rng_state=self.preserve_rng_state,
                          **kwargs)


def _parent_and_name(model: nn.Module, path: str) -> Tuple[nn.Module, str]:
    parent_path, _, name = path.rpartition('.')
    parent = attrgetter(parent_path)(model) if parent_path else model
    return parent, name


def checkpoint_modules(model: nn.Module, paths: Sequence[str],
                       preserve_rng_state: bool = True) -> List[str]:
    """Replace each module at ``paths`` by a :class:`CheckpointedModule`.

    Returns the paths, in order. Raises ValueError naming a path that does
    not exist, is the model itself, or cannot be checkpointed.
    """
    for path in paths:
        if not path:
            raise ValueError('cannot checkpoint the whole model (path "")')
        try:
            module = attrgetter(path)(model)
        except AttributeError:
            raise ValueError(f'no module {path!r} to checkpoint') from None
        try:
            wrapped = CheckpointedModule(module, preserve_rng_state)
        except ValueError as error:
            raise ValueError(f'{path}: {error}') from None
        parent, name = _parent_and_name(model, path)
        setattr(parent, name, wrapped)
    return list(paths)


def remove_checkpointing(model: nn.Module,
                         paths: Optional[Sequence[str]] = None) -> int:
    """Put the original modules back (those at ``paths``; None: every
    :class:`CheckpointedModule`); returns how many were replaced."""
    found = [(path, module) for path, module in model.named_modules()
             if isinstance(module, CheckpointedModule)
             and (paths is None or path in paths)]
    for path, module in found:
        parent, name = _parent_and_name(model, path)
        setattr(parent, name, module.inner)
    return len(found)


NORMS = (_BatchNorm, nn.GroupNorm, nn.LayerNorm)


def _has_trainable(module: nn.Module) -> bool:
    return any(p.requires_grad for p in module.parameters())


def _trainable(module: nn.Module) -> bool:
    """Whether ``module`` trains as a whole: it holds a trainable parameter
    and every child with parameters does too, or is a normalization layer
    (frozen norms inside trainable blocks are usual)."""
    if not _has_trainable(module):
        return False
    return all(
        _has_trainable(child) or isinstance(child, NORMS)
        or not any(True for _ in child.parameters())
        for child in module.children())


def _has_direct_state(module: nn.Module) -> bool:
    return any(True for _ in module.named_parameters(recurse=False)) or any(
        True for _ in module.named_buffers(recurse=False))


def _segments(module: nn.Module, prefix: str,
              top: bool) -> Iterator[Tuple[str, nn.Module]]:
    """Largest trainable modules that can be checkpointed. The model and
    its direct children (backbone, heads: called through methods other
    than ``forward``) and ModuleLists are never taken whole."""
    for name, child in module.named_children():
        path = f'{prefix}{name}'
        whole = (not top and _trainable(child)
                 and not _has_direct_state(child)
                 and not isinstance(child, nn.ModuleList))
        if whole:
            yield path, child
        elif _has_trainable(child):
            yield from _segments(child, f'{path}.', False)


def checkpoint_paths(model: nn.Module, placement: str = 'block') -> List[str]:
    """Paths of the modules to checkpoint in a partially frozen model.

    Args:
        model: the model with its frozen parameters already frozen
            (``requires_grad=False``).
        placement: ``'segment'``: the largest trainable modules (e.g.
            ``backbone.layer4`` whole; a module whose parameterized children
            all hold trainable parameters, frozen norm layers aside);
            ``'block'``: those, with each ``nn.Sequential`` split into its
            children (``backbone.layer4.0``, ``backbone.layer4.1``).

    Trainable modules with direct parameters (e.g. a head's final
    ``conv_seg``) are not checkpointed.
    """
    if placement not in PLACEMENTS:
        raise ValueError(f'placement must be one of {PLACEMENTS}, got '
                         f'{placement!r}')
    paths = []
    for path, module in _segments(model, '', True):
        if placement == 'block' and isinstance(module, nn.Sequential):
            paths += [f'{path}.{name}' for name, child in
                      module.named_children() if not _has_direct_state(child)]
        else:
            paths.append(path)
    return paths
