"""Which trainable layers a config path stands for, and their forward order.

Plain ``nn.Module`` code (no runner, no hook). A *layer* is a module whose
saved input the plugin compresses: an ``nn.Conv2d``, an ``nn.Linear``, or
the out-projection ``<mha>.out_proj`` of an ``nn.MultiheadAttention``
(applied functionally by ``F.multi_head_attention_forward``; surgery makes
the attention call it as a module, see :mod:`mmseg_hosvd.ops.attention`).

A config path may name a layer or a block that contains layers
(:data:`ACCEPTED`):

* ``nn.Conv2d``, ``nn.Linear``: itself;
* mmcv ``ConvModule``: its ``conv``; mmseg ResNet ``BasicBlock``: ``conv1``,
  ``conv2`` (not the downsample);
* ``nn.MultiheadAttention``: its ``out_proj`` (also reachable as the path
  ``<mha>.out_proj``); mmcv's ``MultiheadAttention`` wrapper and MiT's
  ``EfficientMultiheadAttention``: ``attn.out_proj`` (not MiT's spatial
  reduction conv ``sr``);
* mmcv ``FFN``: its ``nn.Linear`` s;
* Swin ``WindowMSA``: ``qkv``, ``proj``; ``ShiftWindowMSA``: ``w_msa.qkv``,
  ``w_msa.proj``; ``SwinBlock``: those and its FFN's linears;
* MiT ``MixFFN``: its convs ``layers.0`` (fc1), ``layers.1`` (depth-wise
  positional conv), ``layers.4`` (fc2); MiT ``TransformerEncoderLayer``:
  ``attn.attn.out_proj`` and those convs.
"""
from dataclasses import dataclass
from typing import Callable, Dict, List, Optional, Sequence, Tuple, Union

import torch.nn as nn

from .compat import prepare_mmseg
from .ops.methods import MODULE_METHODS

prepare_mmseg()  # before mmcv.cnn / mmseg.models (mmcv.ops fallback)

# isort: off
from mmcv.cnn import ConvModule  # noqa: E402
from mmcv.cnn.bricks.transformer import FFN  # noqa: E402
from mmcv.cnn.bricks.transformer import (  # noqa: E402
    MultiheadAttention as MMCVMultiheadAttention)
from mmseg.models.backbones.mit import MixFFN  # noqa: E402
from mmseg.models.backbones.mit import (  # noqa: E402
    TransformerEncoderLayer as MiTEncoderLayer)
from mmseg.models.backbones.resnet import BasicBlock  # noqa: E402
from mmseg.models.backbones.swin import (ShiftWindowMSA,  # noqa: E402
                                         SwinBlock, WindowMSA)
# isort: on

CLASSIFIER_NAME = 'conv_seg'
#: the per-entry keys of a ``layers`` entry given as a dict
ENTRY_KEYS = ('path', 'eps', 'radius', 'method')


def _join(prefix: str, name: str) -> str:
    return f'{prefix}.{name}' if prefix else name


def _children(*names: str) -> Callable[[nn.Module], List[str]]:
    return lambda module: list(names)


def _all_of(kind: type) -> Callable[[nn.Module], List[str]]:
    return lambda module: [
        name for name, sub in module.named_modules()
        if name and isinstance(sub, kind)
    ]


#: accepted types, checked in order: (type, how the error lists it, the
#: names of the sub-modules it stands for, each expanded again);
#: ``nn.Conv2d`` and ``nn.Linear`` are the leaves
ACCEPTED: Tuple[Tuple[type, str, Callable[[nn.Module], List[str]]], ...] = (
    (ConvModule, 'ConvModule (its conv)', _children('conv')),
    (BasicBlock, 'ResNet BasicBlock (conv1, conv2)',
     _children('conv1', 'conv2')),
    (nn.MultiheadAttention, 'nn.MultiheadAttention (its out_proj)',
     _children('out_proj')),
    (MMCVMultiheadAttention,
     'mmcv MultiheadAttention / MiT EfficientMultiheadAttention '
     '(attn.out_proj)', _children('attn')),
    (FFN, 'mmcv FFN (its nn.Linear s)', _all_of(nn.Linear)),
    (WindowMSA, 'Swin WindowMSA (qkv, proj)', _children('qkv', 'proj')),
    (ShiftWindowMSA, 'Swin ShiftWindowMSA (w_msa.qkv, w_msa.proj)',
     _children('w_msa')),
    (SwinBlock, 'SwinBlock (attn and ffn linears)', _children('attn', 'ffn')),
    (MixFFN, 'MiT MixFFN (layers.0, layers.1, layers.4)',
     _all_of(nn.Conv2d)),
    (MiTEncoderLayer,
     'MiT TransformerEncoderLayer (attn out_proj, MixFFN convs)',
     _children('attn', 'ffn')),
)
ACCEPTED_TEXT = ', '.join(['nn.Conv2d', 'nn.Linear'] +
                          [label for _, label, _ in ACCEPTED])


@dataclass(frozen=True)
class LayerSpec:
    """One entry of a hook's ``layers``: a path and its own settings.

    Args:
        path: module path as written in the config.
        layer_paths: the ``nn.Conv2d`` / ``nn.Linear`` paths ``path``
            stands for (an MHA out-projection as ``<mha>.out_proj``).
        eps: explained-variance threshold for HOSVD/SVD on these layers.
        radius: Gradient Filter patch size on these layers.
        method: the entry's own method, or None for the hook's.
    """
    path: str
    layer_paths: Tuple[str, ...]
    eps: float
    radius: int
    method: Optional[str] = None


def get_module(model: nn.Module, path: str, key: str) -> nn.Module:
    """``model.get_submodule(path)`` with an error that names the config key."""
    if not isinstance(path, str) or not path:
        raise ValueError(f'{key}: expected a module path string, got {path!r}')
    try:
        return model.get_submodule(path)
    except AttributeError:
        raise ValueError(f'{key}: path {path!r} does not exist in the model '
                         f'({type(model).__name__})') from None


def _expand(module: nn.Module, path: str, key: str,
            top: str) -> Tuple[str, ...]:
    if isinstance(module, (nn.Conv2d, nn.Linear)):
        return (path, )
    for kind, _, names in ACCEPTED:
        if isinstance(module, kind):
            paths: Tuple[str, ...] = ()
            for name in names(module):
                paths += _expand(module.get_submodule(name),
                                 _join(path, name), key, top)
            return paths
    where = '' if path == top else f' (inside {top!r})'
    raise ValueError(f'{key}: {path!r}{where} is a {type(module).__name__}, '
                     f'not an {ACCEPTED_TEXT}')


def expand_layer_paths(model: nn.Module, path: str,
                       key: str = 'layers') -> Tuple[str, ...]:
    """The ``nn.Conv2d`` / ``nn.Linear`` paths that a layer path stands for
    (see the module docstring); ValueError naming the path and its type
    otherwise."""
    return _expand(get_module(model, path, key), path, key, path)


def is_mha_out_proj(model: nn.Module, path: str) -> bool:
    """Whether ``path`` is the ``out_proj`` of an ``nn.MultiheadAttention``."""
    parent, _, attr = path.rpartition('.')
    return attr == 'out_proj' and isinstance(
        model.get_submodule(parent) if parent else model,
        nn.MultiheadAttention)


def resolve_layers(model: nn.Module,
                   layers: Sequence[Union[str, dict]],
                   eps: float,
                   radius: int,
                   key: str = 'layers') -> List[LayerSpec]:
    """Turn config entries (paths or ``dict(path=, eps=, radius=,
    method=)``) into :class:`LayerSpec` s; reject unknown keys, unknown
    methods and layers listed twice."""
    specs, seen = [], {}
    for index, entry in enumerate(layers):
        if isinstance(entry, str):
            entry = dict(path=entry)
        if not isinstance(entry, dict) or 'path' not in entry:
            raise ValueError(f'{key}[{index}]: expected a path string or a '
                             f'dict with a "path" key, got {entry!r}')
        unknown = set(entry) - set(ENTRY_KEYS)
        if unknown:
            raise ValueError(f'{key}[{index}]: unknown key(s) '
                             f'{sorted(unknown)} in {entry!r}; allowed: '
                             f'{", ".join(ENTRY_KEYS)}')
        method = entry.get('method')
        if method is not None and method not in MODULE_METHODS:
            raise ValueError(f'{key}[{index}]: unknown method {method!r}; '
                             f'expected one of {MODULE_METHODS}')
        path = entry['path']
        layer_paths = expand_layer_paths(model, path, f'{key}[{index}]')
        for layer_path in layer_paths:
            if layer_path in seen:
                kind = 'conv' if isinstance(model.get_submodule(layer_path),
                                            nn.Conv2d) else 'linear'
                raise ValueError(
                    f'{key}[{index}]: {kind} {layer_path!r} (from {path!r}) '
                    f'is already listed by {seen[layer_path]!r}')
            if layer_path.split('.')[-1] == CLASSIFIER_NAME:
                raise ValueError(f'{key}[{index}]: {path!r} is the classifier'
                                 f' {CLASSIFIER_NAME}, which is never '
                                 'compressed')
            seen[layer_path] = path
        specs.append(
            LayerSpec(path, layer_paths, entry.get('eps', eps),
                      entry.get('radius', radius), method))
    return specs


def layer_execution_order(model: nn.Module,
                          forward: Callable[[], object]) -> List[str]:
    """Paths of the layers of ``model`` (``nn.Conv2d``, ``nn.Linear`` and
    each ``nn.MultiheadAttention``'s ``out_proj``, at the attention's call)
    in the order ``forward()`` first runs them (each path once)."""
    order: List[str] = []
    out_projs: Dict[str, str] = {
        _join(name, 'out_proj'): name
        for name, module in model.named_modules()
        if isinstance(module, nn.MultiheadAttention)
    }
    handles = []
    for name, module in model.named_modules():
        if isinstance(module, nn.MultiheadAttention):
            handles.append(module.register_forward_hook(
                lambda mod, args, out, name=_join(name, 'out_proj'):
                order.append(name)))
        elif isinstance(module, (nn.Conv2d, nn.Linear)) and \
                name not in out_projs:
            handles.append(module.register_forward_pre_hook(
                lambda mod, args, name=name: order.append(name)))
    try:
        forward()
    finally:
        for handle in handles:
            handle.remove()
    return list(dict.fromkeys(order))


def last_layer_paths(execution_order: Sequence[str], num_layers: int,
                     key: str = 'num_layers') -> List[str]:
    """The ``num_layers`` layers nearest the loss, classifier excluded."""
    candidates = [
        p for p in execution_order if p.split('.')[-1] != CLASSIFIER_NAME
    ]
    if num_layers > len(candidates):
        raise ValueError(f'{key}={num_layers} but the model runs only '
                         f'{len(candidates)} layers (convs, linears, '
                         f'attention out-projections) besides '
                         f'{CLASSIFIER_NAME}')
    return candidates[-num_layers:]


def classifier_paths(model: nn.Module) -> List[str]:
    """Paths of the modules named ``conv_seg`` (the segmentation classifier)."""
    return [
        name for name, _ in model.named_modules()
        if name.split('.')[-1] == CLASSIFIER_NAME
    ]
