"""Model surgery: find layers by path, freeze, install compression, BN eval.

Everything here works on a plain ``nn.Module`` (the unwrapped model); it
knows nothing about runners or hooks. Layer paths are module paths as in
``model.named_modules()``; what a path stands for (convs, linears,
attention out-projections, and the blocks that contain them: ConvModule,
ResNet BasicBlock, MultiheadAttention, FFN, Swin and MiT blocks) is defined
in :mod:`mmseg_hosvd.layer_paths` (re-exported here).

Installing compression replaces each ``nn.Conv2d`` by a
:class:`~mmseg_hosvd.ops.CompressedConv2d` and each ``nn.Linear`` by a
:class:`~mmseg_hosvd.ops.CompressedLinear`, sharing the *same* Parameter
objects, so parameter names, state-dict keys and the optimizer's references
are unchanged. The out-projection of an ``nn.MultiheadAttention`` is applied
functionally by ``F.multi_head_attention_forward``; compressing it also
switches the attention's class to
:class:`~mmseg_hosvd.ops.attention.CompressedMultiheadAttention` (no new
parameter; set back by :func:`remove_compression`), which calls
``out_proj`` as a module. The in-projection of the attention is not
compressed.

The installed layers of a model share one
:class:`~mmseg_hosvd.ops.CompressionContext` (a plain attribute of each):
an input read by several of them is decomposed once, and the ``asi`` method
keeps its per-layer state there (:func:`compression_state_dict` /
:func:`load_compression_state_dict` move it in and out of checkpoints).
"""
from typing import Any, Dict, Iterable, List, Optional, Sequence, Tuple, Union

import torch.nn as nn
from mmengine.utils import is_seq_of
from torch.nn.modules.activation import NonDynamicallyQuantizableLinear
from torch.nn.modules.batchnorm import _BatchNorm

from .layer_paths import LayerSpec, get_module, is_mha_out_proj
from .ops import (LINEAR_METHODS, CompressedConv2d, CompressedLinear,
                  CompressionContext, SubspaceTracker)
from .ops.attention import CompressedMultiheadAttention
from .ops.context import ClearAfterForward

CompressedLayer = Union[CompressedConv2d, CompressedLinear]


def apply_freeze(model: nn.Module, freeze: Iterable[str],
                 key: str = 'freeze') -> None:
    """Apply ``freeze`` in order: ``path`` freezes, ``~path`` unfreezes."""
    for entry in freeze:
        unfreeze = isinstance(entry, str) and entry.startswith('~')
        path = entry[1:] if unfreeze else entry
        module = get_module(model, path, key)
        for param in module.parameters():
            param.requires_grad_(unfreeze)


def freeze_all_but(model: nn.Module, trainable: Iterable[str]) -> None:
    """Freeze every parameter, then unfreeze the modules at ``trainable``."""
    model.requires_grad_(False)
    for path in trainable:
        model.get_submodule(path).requires_grad_(True)


def check_trainable(model: nn.Module, specs: Sequence[LayerSpec],
                    key: str = 'layers') -> None:
    """Every listed layer must have a trainable weight (else nothing to
    compress for)."""
    for spec in specs:
        for layer_path in spec.layer_paths:
            layer = model.get_submodule(layer_path)
            if not layer.weight.requires_grad:
                kind = 'conv' if isinstance(layer, nn.Conv2d) else 'linear'
                raise ValueError(
                    f'{key}: {spec.path!r} is listed as compressed but its '
                    f'{kind} {layer_path!r} is frozen by `freeze`')


def check_methods(model: nn.Module, specs: Sequence[LayerSpec], method: str,
                  key: str = 'layers') -> None:
    """Each listed linear's method (the entry's own, else ``method``) must be
    one :class:`~mmseg_hosvd.ops.CompressedLinear` supports; the error for
    the Gradient Filter suggests the per-entry override."""
    for index, spec in enumerate(specs):
        layer_method = spec.method or method
        for layer_path in spec.layer_paths:
            if not isinstance(model.get_submodule(layer_path), nn.Linear) \
                    or layer_method in LINEAR_METHODS:
                continue
            raise ValueError(
                f'{key}: {layer_path!r} (from {spec.path!r}) is an nn.Linear'
                f', and method={layer_method!r} is for convs only; linears '
                f'take one of {LINEAR_METHODS}: list it as dict(path='
                f"{layer_path!r}, method='vanilla') (or another of those "
                'methods), or leave it out of the compressed layers')


def _replace_module(model: nn.Module, path: str, new: nn.Module) -> None:
    parent_path, _, attr = path.rpartition('.')
    parent = model.get_submodule(parent_path) if parent_path else model
    setattr(parent, attr, new)


def _compressed(model: nn.Module, path: str, spec: LayerSpec, method: str,
                non_finite: str) -> CompressedLayer:
    """The compressed twin of the layer at ``path`` (same Parameters)."""
    layer = model.get_submodule(path)
    if isinstance(layer, (CompressedConv2d, CompressedLinear)):
        raise ValueError(
            f'layers: {path!r} is already a {type(layer).__name__} (two '
            'compression hooks in one config?)')
    if isinstance(layer, nn.Conv2d):
        compressed = CompressedConv2d.from_conv(
            layer, method, eps=spec.eps, radius=spec.radius, name=path,
            non_finite=non_finite)
    else:
        compressed = CompressedLinear.from_linear(
            layer, method, eps=spec.eps, name=path, non_finite=non_finite)
    compressed.train(layer.training)
    return compressed


def install_compression(model: nn.Module,
                        specs: Sequence[LayerSpec],
                        method: str,
                        share_inputs: bool = True,
                        subspaces: Optional[SubspaceTracker] = None,
                        non_finite: str = 'raise'
                        ) -> Dict[str, CompressedLayer]:
    """Replace each listed conv by a :class:`CompressedConv2d` and each
    listed linear by a :class:`CompressedLinear` sharing its Parameters
    (an ``nn.MultiheadAttention``'s ``out_proj``: also switch the attention
    to :class:`CompressedMultiheadAttention`); return them by path.
    ``vanilla`` installs layers that compress nothing but still record the
    paper's memory count. Each spec's own ``method`` overrides ``method``.

    All installed layers get one new :class:`~mmseg_hosvd.ops.
    CompressionContext`; a forward hook on ``model`` clears its cache of
    decompositions after every forward, so no entry outlives the forward.
    Everything is checked before the model is changed.

    Args:
        share_inputs: decompose an input read by several installed layers
            once (same method and eps); False decomposes per layer.
        subspaces: the ``asi`` state (ranks rule, budget, seed); a default
            :class:`~mmseg_hosvd.ops.SubspaceTracker` if None.
        non_finite: what the layers do with a NaN/Inf input, ``'raise'`` or
            ``'skip'`` (see :class:`~mmseg_hosvd.ops.CompressedConv2d`).
    """
    check_methods(model, specs, method)
    context = CompressionContext(share_inputs=share_inputs,
                                 subspaces=subspaces)
    replacements = [(path, _compressed(model, path, spec, spec.method
                                       or method, non_finite))
                    for spec in specs for path in spec.layer_paths]
    installed = {}
    for path, compressed in replacements:
        compressed.context = context
        if is_mha_out_proj(model, path):
            attention = model.get_submodule(path.rpartition('.')[0])
            if type(attention) is nn.MultiheadAttention:
                attention.__class__ = CompressedMultiheadAttention
            elif not isinstance(attention, CompressedMultiheadAttention):
                raise ValueError(
                    f'layers: {path!r} is the out_proj of a '
                    f'{type(attention).__name__}, a subclass of '
                    'nn.MultiheadAttention whose forward the plugin does not'
                    ' know; only plain nn.MultiheadAttention is supported')
        _replace_module(model, path, compressed)
        installed[path] = compressed
    if installed and share_inputs:
        context.hook_handle = model.register_forward_hook(
            ClearAfterForward(context))
    return installed


def compression_context(model: nn.Module) -> Optional[CompressionContext]:
    """The context shared by the installed layers of ``model`` (None if no
    layer is installed); ValueError if they do not share one."""
    contexts = {id(c.context): c.context
                for c in compressed_layers(model).values()}
    if len(contexts) > 1:
        raise ValueError(f'the compressed layers of {type(model).__name__} '
                         f'use {len(contexts)} different contexts')
    return next(iter(contexts.values()), None)


def compression_state_dict(model: nn.Module) -> Dict[str, Any]:
    """The compression state of ``model`` (``asi`` ranks and bases), tensors
    only, as nested dicts; ``{}`` without installed layers."""
    context = compression_context(model)
    return {} if context is None else context.state_dict()


def load_compression_state_dict(model: nn.Module,
                                state: Dict[str, Any]) -> None:
    """Restore :func:`compression_state_dict` output; the tensors go to the
    device of the first installed layer."""
    context = compression_context(model)
    if context is None:
        raise ValueError('load_compression_state_dict: the model has no '
                         'installed compressed layer')
    device = next(iter(compressed_layers(model).values())).weight.device
    context.load_state_dict(state, device=device)


def _plain_linear(model: nn.Module, path: str,
                  compressed: CompressedLinear) -> nn.Linear:
    """``compressed.to_linear()``; an attention's ``out_proj`` gets back
    its own class, ``NonDynamicallyQuantizableLinear``."""
    if not is_mha_out_proj(model, path):
        return compressed.to_linear()
    linear = NonDynamicallyQuantizableLinear(
        compressed.in_features, compressed.out_features,
        bias=compressed.bias is not None, device='meta')
    linear.weight, linear.bias = compressed.weight, compressed.bias
    linear.train(compressed.training)
    return linear


def remove_compression(model: nn.Module) -> int:
    """Put plain ``nn.Conv2d`` s, ``nn.Linear`` s and
    ``nn.MultiheadAttention`` s back; return how many layers were
    replaced."""
    layers = compressed_layers(model)
    for path, layer in layers.items():
        handle = layer.context.hook_handle
        if handle is not None:
            handle.remove()
            layer.context.hook_handle = None
        plain = layer.to_conv() if isinstance(layer, CompressedConv2d) \
            else _plain_linear(model, path, layer)
        _replace_module(model, path, plain)
    for module in model.modules():
        if type(module) is CompressedMultiheadAttention:
            module.__class__ = nn.MultiheadAttention
    return len(layers)


def compressed_layers(model: nn.Module) -> Dict[str, CompressedLayer]:
    """The installed :class:`CompressedConv2d` s and
    :class:`CompressedLinear` s of ``model`` by path."""
    return {
        name: module
        for name, module in model.named_modules()
        if isinstance(module, (CompressedConv2d, CompressedLinear))
    }


def batch_norms(model: nn.Module) -> List[_BatchNorm]:
    """All BatchNorm layers (incl. SyncBatchNorm) of ``model``."""
    return [m for m in model.modules() if isinstance(m, _BatchNorm)]


def set_norm_eval(norms: Iterable[_BatchNorm]) -> None:
    """Put BatchNorm layers in eval mode (running statistics frozen)."""
    for norm in norms:
        norm.eval()


def optional_list(value: Optional[Sequence], key: str,
                  item_types: Tuple[type, ...] = (object, )) -> List:
    """Config lists: ``None`` -> ``[]``; reject a bare string and items
    that are not of ``item_types``."""
    if value is None:
        return []
    if isinstance(value, (str, bytes)) or not is_seq_of(value, object):
        raise ValueError(f'{key}: expected a list, got {value!r}')
    if not is_seq_of(value, item_types):
        names = ' or '.join(t.__name__ for t in item_types)
        raise ValueError(f'{key}: expected a list of {names}, got {value!r}')
    return list(value)
