"""Model surgery: find layers by path, freeze, install compression, BN eval.

Everything here works on a plain ``nn.Module`` (the unwrapped model); it
knows nothing about runners or hooks. Layer paths are module paths as in
``model.named_modules()``:

* an ``nn.Conv2d`` path means that conv;
* a ``ConvModule`` path (mmcv) means its ``.conv``;
* a ResNet ``BasicBlock`` path (mmseg) means its ``conv1`` and ``conv2``
  (not the downsample).

Installing compression replaces each conv by a :class:`CompressedConv2d`
that shares the *same* Parameter objects, so parameter names, state-dict
keys and the optimizer's references are unchanged. The installed convs of a
model share one :class:`~mmseg_hosvd.ops.CompressionContext` (a plain
attribute of each conv): an input read by several of them is decomposed
once, and the ``asi`` method keeps its per-layer state there
(:func:`compression_state_dict` / :func:`load_compression_state_dict` move
it in and out of checkpoints).
"""
from dataclasses import dataclass
from typing import (Any, Callable, Dict, Iterable, List, Optional,
                    Sequence, Tuple, Union)

import torch.nn as nn
from mmcv.cnn import ConvModule
from mmengine.utils import is_seq_of
from mmseg.models.backbones.resnet import BasicBlock
from torch.nn.modules.batchnorm import _BatchNorm

from .ops import CompressedConv2d, CompressionContext, SubspaceTracker
from .ops.context import ClearAfterForward

CLASSIFIER_NAME = 'conv_seg'


@dataclass(frozen=True)
class LayerSpec:
    """One entry of a hook's ``layers``: a path and its own settings.

    Args:
        path: module path as written in the config.
        conv_paths: the ``nn.Conv2d`` paths that ``path`` stands for.
        eps: explained-variance threshold for HOSVD/SVD on these convs.
        radius: Gradient Filter patch size on these convs.
    """
    path: str
    conv_paths: Tuple[str, ...]
    eps: float
    radius: int


def get_module(model: nn.Module, path: str, key: str) -> nn.Module:
    """``model.get_submodule(path)`` with an error that names the config key."""
    if not isinstance(path, str) or not path:
        raise ValueError(f'{key}: expected a module path string, got {path!r}')
    try:
        return model.get_submodule(path)
    except AttributeError:
        raise ValueError(f'{key}: path {path!r} does not exist in the model '
                         f'({type(model).__name__})') from None


def expand_conv_paths(model: nn.Module, path: str,
                      key: str = 'layers') -> Tuple[str, ...]:
    """Return the ``nn.Conv2d`` paths that a layer path stands for."""
    module = get_module(model, path, key)
    if isinstance(module, nn.Conv2d):
        return (path, )
    if isinstance(module, ConvModule):
        return (f'{path}.conv', )
    if isinstance(module, BasicBlock):
        return (f'{path}.conv1', f'{path}.conv2')
    raise ValueError(f'{key}: {path!r} is a {type(module).__name__}, not an '
                     'nn.Conv2d, ConvModule or ResNet BasicBlock')


def resolve_layers(model: nn.Module,
                   layers: Sequence[Union[str, dict]],
                   eps: float,
                   radius: int,
                   key: str = 'layers') -> List[LayerSpec]:
    """Turn config entries (paths or ``dict(path=, eps=, radius=)``) into
    :class:`LayerSpec` s; reject unknown keys and convs listed twice."""
    specs, seen = [], {}
    for index, entry in enumerate(layers):
        if isinstance(entry, str):
            entry = dict(path=entry)
        if not isinstance(entry, dict) or 'path' not in entry:
            raise ValueError(f'{key}[{index}]: expected a path string or a '
                             f'dict with a "path" key, got {entry!r}')
        unknown = set(entry) - {'path', 'eps', 'radius'}
        if unknown:
            raise ValueError(f'{key}[{index}]: unknown key(s) '
                             f'{sorted(unknown)} in {entry!r}; allowed: '
                             'path, eps, radius')
        path = entry['path']
        conv_paths = expand_conv_paths(model, path, f'{key}[{index}]')
        for conv_path in conv_paths:
            if conv_path in seen:
                raise ValueError(
                    f'{key}[{index}]: conv {conv_path!r} (from {path!r}) is '
                    f'already listed by {seen[conv_path]!r}')
            if conv_path.split('.')[-1] == CLASSIFIER_NAME:
                raise ValueError(f'{key}[{index}]: {path!r} is the classifier'
                                 f' {CLASSIFIER_NAME}, which is never '
                                 'compressed')
            seen[conv_path] = path
        specs.append(
            LayerSpec(path, conv_paths, entry.get('eps', eps),
                      entry.get('radius', radius)))
    return specs


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
    """Every listed conv must have a trainable weight (else nothing to
    compress for)."""
    for spec in specs:
        for conv_path in spec.conv_paths:
            if not model.get_submodule(conv_path).weight.requires_grad:
                raise ValueError(
                    f'{key}: {spec.path!r} is listed as compressed but its '
                    f'conv {conv_path!r} is frozen by `freeze`')


def conv_execution_order(model: nn.Module,
                         forward: Callable[[], object]) -> List[str]:
    """Paths of the ``nn.Conv2d`` s of ``model`` in the order ``forward()``
    first runs them (each path once)."""
    order: List[str] = []
    handles = []
    for name, module in model.named_modules():
        if isinstance(module, nn.Conv2d):
            handles.append(
                module.register_forward_pre_hook(
                    lambda mod, args, name=name: order.append(name)))
    try:
        forward()
    finally:
        for handle in handles:
            handle.remove()
    return list(dict.fromkeys(order))


def last_conv_paths(execution_order: Sequence[str], num_layers: int,
                    key: str = 'num_layers') -> List[str]:
    """The ``num_layers`` convs nearest the loss, classifier excluded."""
    candidates = [
        p for p in execution_order if p.split('.')[-1] != CLASSIFIER_NAME
    ]
    if num_layers > len(candidates):
        raise ValueError(f'{key}={num_layers} but the model runs only '
                         f'{len(candidates)} convs besides {CLASSIFIER_NAME}')
    return candidates[-num_layers:]


def classifier_paths(model: nn.Module) -> List[str]:
    """Paths of the modules named ``conv_seg`` (the segmentation classifier)."""
    return [
        name for name, _ in model.named_modules()
        if name.split('.')[-1] == CLASSIFIER_NAME
    ]


def _replace_module(model: nn.Module, path: str, new: nn.Module) -> None:
    parent_path, _, attr = path.rpartition('.')
    parent = model.get_submodule(parent_path) if parent_path else model
    setattr(parent, attr, new)


def install_compression(model: nn.Module,
                        specs: Sequence[LayerSpec],
                        method: str,
                        share_inputs: bool = True,
                        subspaces: Optional[SubspaceTracker] = None,
                        non_finite: str = 'raise'
                        ) -> Dict[str, CompressedConv2d]:
    """Replace each listed conv by a :class:`CompressedConv2d` sharing its
    Parameters; return them by conv path. ``vanilla`` installs convs that
    compress nothing but still record the paper's memory count.

    All installed convs get one new :class:`~mmseg_hosvd.ops.
    CompressionContext`; a forward hook on ``model`` clears its cache of
    decompositions after every forward, so no entry outlives the forward.

    Args:
        share_inputs: decompose an input read by several installed convs
            once (same method and eps); False decomposes per conv.
        subspaces: the ``asi`` state (ranks rule, budget, seed); a default
            :class:`~mmseg_hosvd.ops.SubspaceTracker` if None.
        non_finite: what the convs do with a NaN/Inf input, ``'raise'`` or
            ``'skip'`` (see :class:`~mmseg_hosvd.ops.CompressedConv2d`).
    """
    context = CompressionContext(share_inputs=share_inputs,
                                 subspaces=subspaces)
    installed = {}
    for spec in specs:
        for conv_path in spec.conv_paths:
            conv = model.get_submodule(conv_path)
            if isinstance(conv, CompressedConv2d):
                raise ValueError(
                    f'layers: conv {conv_path!r} is already a '
                    'CompressedConv2d (two compression hooks in one config?)')
            compressed = CompressedConv2d.from_conv(
                conv, method, eps=spec.eps, radius=spec.radius,
                name=conv_path, non_finite=non_finite)
            compressed.train(conv.training)
            compressed.context = context
            _replace_module(model, conv_path, compressed)
            installed[conv_path] = compressed
    if installed and share_inputs:
        context.hook_handle = model.register_forward_hook(
            ClearAfterForward(context))
    return installed


def compression_context(model: nn.Module) -> Optional[CompressionContext]:
    """The context shared by the installed convs of ``model`` (None if no
    conv is installed); ValueError if they do not share one."""
    contexts = {id(c.context): c.context
                for c in compressed_convs(model).values()}
    if len(contexts) > 1:
        raise ValueError(f'the compressed convs of {type(model).__name__} '
                         f'use {len(contexts)} different contexts')
    return next(iter(contexts.values()), None)


def compression_state_dict(model: nn.Module) -> Dict[str, Any]:
    """The compression state of ``model`` (``asi`` ranks and bases), tensors
    only, as nested dicts; ``{}`` without installed convs."""
    context = compression_context(model)
    return {} if context is None else context.state_dict()


def load_compression_state_dict(model: nn.Module,
                                state: Dict[str, Any]) -> None:
    """Restore :func:`compression_state_dict` output; the tensors go to the
    device of the first installed conv."""
    context = compression_context(model)
    if context is None:
        raise ValueError('load_compression_state_dict: the model has no '
                         'installed compressed conv')
    device = next(iter(compressed_convs(model).values())).weight.device
    context.load_state_dict(state, device=device)


def remove_compression(model: nn.Module) -> int:
    """Put plain ``nn.Conv2d`` s back; return how many were replaced."""
    paths = [
        name for name, module in model.named_modules()
        if isinstance(module, CompressedConv2d)
    ]
    for path in paths:
        handle = model.get_submodule(path).context.hook_handle
        if handle is not None:
            handle.remove()
        _replace_module(model, path, model.get_submodule(path).to_conv())
    return len(paths)


def compressed_convs(model: nn.Module) -> Dict[str, CompressedConv2d]:
    """The installed :class:`CompressedConv2d` s of ``model`` by path."""
    return {
        name: module
        for name, module in model.named_modules()
        if isinstance(module, CompressedConv2d)
    }


def batch_norms(model: nn.Module) -> List[_BatchNorm]:
    """All BatchNorm layers (incl. SyncBatchNorm) of ``model``."""
    return [m for m in model.modules() if isinstance(m, _BatchNorm)]


def set_norm_eval(norms: Iterable[_BatchNorm]) -> None:
    """Put BatchNorm layers in eval mode (running statistics frozen)."""
    for norm in norms:
        norm.eval()


def trainable_parameter_names(model: nn.Module) -> List[str]:
    return [n for n, p in model.named_parameters() if p.requires_grad]


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
