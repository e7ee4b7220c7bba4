"""Release the feature maps no head reads (model surgery).

An mmseg ``EncoderDecoder`` keeps every output of its backbone (or neck)
in one tuple until its heads have computed the loss, e.g. ResNetV1c's four
stages (``out_indices=(0, 1, 2, 3)``), although FCN's head reads only the
last one (``in_index=3``): at batch 8, 512x512, FCN-R18-d8's three unread
stage outputs hold 80 MiB through the whole forward and loss (plain
inference too). A decode head of mmseg reads ``inputs[in_index]`` through
``BaseDecodeHead._transform_inputs``, some heads more (DeepLabV3+ reads
``inputs[0]`` for its c1 decoder): :data:`KNOWN_READERS` lists the heads whose reads are
known.

:func:`install_feature_release` works on the module the heads read from
(the neck if there is one, else the backbone), in training mode only (a
training step; evaluation and direct calls in eval mode see every
output). A stage backbone (:data:`STAGE_BACKBONES`) keeps an output in a
list while its later stages run, so a pair of hooks switches its
``out_indices`` attribute to the read stages before each training forward
(the unread outputs are never kept) and expands the result back to the
original positions with ``None`` at the others; any other module's output
tuple gets ``None`` at the unread positions when it returns.
Nothing is computed differently: the heads see the same tensors, autograd
keeps what it saved. It applies only when every head is one of :data:`KNOWN_READERS` (or a
class of this plugin derived from one, e.g. a split-concat head);
otherwise it does nothing and says why (:attr:`FeatureRelease.reason`).
The hook is removable (:func:`remove_feature_release`).
"""
from dataclasses import dataclass, field
from typing import (Any, Callable, Dict, Iterable, List, Optional, Set,
                    Tuple)

import torch.nn as nn
from torch.utils.hooks import RemovableHandle

from .compat import prepare_mmseg

prepare_mmseg()  # before mmseg.models (mmcv.ops fallback)

# isort: off
from mmseg.models.backbones import (  # noqa: E402
    MixVisionTransformer, MobileNetV2, ResNet)
from mmseg.models.decode_heads import (  # noqa: E402
    ASPPHead, DepthwiseSeparableASPPHead, FCNHead, PSPHead, SegformerHead,
    UPerHead)
# isort: on

#: backbones that append stage ``i``'s output when ``i in out_indices``
#: (ResNetV1c/V1d derive from ResNet)
STAGE_BACKBONES = (ResNet, MobileNetV2, MixVisionTransformer)



def _none(head: nn.Module) -> Tuple[int, ...]:
    return ()


def _c1_input(head: nn.Module) -> Tuple[int, ...]:
    """DeepLabV3+ reads ``inputs[0]`` for its c1 decoder."""
    return (0, ) if head.c1_bottleneck is not None else ()


#: mmseg heads known to read their inputs only at ``in_index``, and the
#: other positions each reads
KNOWN_READERS: Dict[type, Callable[[nn.Module], Tuple[int, ...]]] = {
    FCNHead: _none,
    PSPHead: _none,
    ASPPHead: _none,
    UPerHead: _none,
    SegformerHead: _none,
    DepthwiseSeparableASPPHead: _c1_input,
}


@dataclass
class FeatureRelease:
    """What :func:`install_feature_release` did.

    Attributes:
        source: the path of the module whose outputs are thinned
            (``'backbone'`` or ``'neck'``), None when nothing was done.
        read: the output positions the heads read (negative: from the
            end); every other one is set to None.
        reason: why nothing was done (None when something was).
        handles: the hooks.
        stages: the ``out_indices`` switch of a stage backbone, if used.
    """
    source: Optional[str] = None
    read: Tuple[int, ...] = ()
    reason: Optional[str] = None
    handles: List[RemovableHandle] = field(default_factory=list)
    stages: Optional['_StageOutputs'] = None

    def summary(self) -> str:
        if self.reason is not None:
            return f'unused features kept ({self.reason})'
        return (f'{self.source} outputs other than {list(self.read)} '
                'released in training (no head reads them)')


def _heads(model: nn.Module) -> List[Tuple[str, nn.Module]]:
    heads = []
    for name in ('decode_head', 'auxiliary_head'):
        head = getattr(model, name, None)
        if isinstance(head, nn.ModuleList):
            heads += [(f'{name}.{i}', h) for i, h in enumerate(head)]
        elif head is not None:
            heads.append((name, head))
    return heads


def _indices(value: Any) -> Iterable[int]:
    return value if isinstance(value, (list, tuple)) else [value]


def read_indices(model: nn.Module) -> Tuple[Optional[Set[int]],
                                            Optional[str]]:
    """``(positions the heads read, None)``, or ``(None, why not known)``
    when a head is not a plain ``BaseDecodeHead`` reader."""
    heads = _heads(model)
    if not heads:
        return None, 'no decode head'
    read: Set[int] = set()
    for path, head in heads:
        base = next(cls for cls in type(head).__mro__
                    if not cls.__module__.startswith(__package__))
        if base not in KNOWN_READERS:
            return None, (f'{path}: {base.__name__} is not known to read '
                          'only in_index')
        read.update(int(i) for i in _indices(head.in_index))
        read.update(KNOWN_READERS[base](head))
    return read, None


class _StageOutputs:
    """Hooks that keep a stage backbone from collecting unread outputs:
    before each training forward its ``out_indices`` are only the read
    ones (the unread stages' outputs are then never kept in its list),
    after it the output is expanded back to the original positions with
    ``None`` at the others; in eval mode the original ``out_indices``."""

    def __init__(self, module: nn.Module, readable: Set[int]) -> None:
        self.module = module
        self.original = tuple(module.out_indices)
        self.kept = tuple(index for position, index in
                          enumerate(self.original) if position in readable)

    def before(self, module: nn.Module, args: Any) -> None:
        module.out_indices = self.kept if module.training else self.original

    def after(self, module: nn.Module, args: Any, outputs: Any) -> Any:
        if not module.training:
            return None
        kept = list(outputs) if isinstance(outputs, (tuple, list)) else [
            outputs]  # MobileNetV2 returns a lone output bare
        found = iter(kept)
        return tuple(next(found) if index in self.kept else None
                     for index in self.original)

    def restore(self) -> None:
        self.module.out_indices = self.original


def _thin(read: Set[int]) -> Callable:
    """A forward hook: the output tuple with None where no head reads."""

    def thin(module: nn.Module, args: Any, outputs: Any) -> Any:
        if not module.training or not isinstance(outputs, (tuple, list)):
            return None
        count = len(outputs)
        readable = {i % count for i in read if -count <= i < count}
        if len(readable) == count:
            return None
        return type(outputs)(out if i in readable else None
                             for i, out in enumerate(outputs))

    return thin


def install_feature_release(model: nn.Module) -> FeatureRelease:
    """Release the backbone's (or neck's) outputs that no head reads (see
    the module docstring); nothing if that is not known."""
    read, reason = read_indices(model)
    source = 'neck' if getattr(model, 'neck', None) is not None else (
        'backbone')
    module = getattr(model, source, None)
    if reason is None and module is None:
        reason = f'no {source}'
    if reason is not None:
        return FeatureRelease(reason=reason)
    handles = []
    stages = None
    if isinstance(module, STAGE_BACKBONES):
        count = len(module.out_indices)
        readable = {i % count for i in read if -count <= i < count}
        if len(readable) < count:
            stages = _StageOutputs(module, readable)
            handles.append(module.register_forward_pre_hook(stages.before))
            handles.append(module.register_forward_hook(stages.after))
    else:
        handles.append(module.register_forward_hook(_thin(read)))
    return FeatureRelease(source=source, read=tuple(sorted(read)),
                          handles=handles, stages=stages)


def remove_feature_release(release: FeatureRelease) -> None:
    """Remove the hooks of :func:`install_feature_release` and restore
    the backbone's ``out_indices``."""
    for handle in release.handles:
        handle.remove()
    release.handles = []
    if release.stages is not None:
        release.stages.restore()
        release.stages = None
