"""Model surgery that makes a training step keep only what backward needs.

Exact replacements, each keeping Parameter objects and ``state_dict``
keys:

* eval-mode BatchNorms as :class:`~mmseg_hosvd.ops.folding.
  LeanBatchNorm2d`, keeping no input: a frozen one keeps its per-channel
  scale only; one whose affine parameters train is folded into the conv
  before it (the conv's :class:`~mmseg_hosvd.ops.folding.NormFolding`: a
  plain conv becomes a :class:`~mmseg_hosvd.ops.folding.NormFoldingConv2d`,
  a compressed conv has one already), which then keeps the folded weight
  instead. Pairs are found structurally: mmcv ``ConvModule`` (conv then
  norm), blocks with ``conv{i}``/``norm{i}_name`` (mmseg/mmcv ResNet
  ``BasicBlock``/``Bottleneck``) and consecutive children of an
  ``nn.Sequential`` (ResNet stems and downsamples). A ``ConvModule`` with
  mmcv's own ``efficient_conv_bn_eval`` on is left to mmcv (which calls the
  conv's ``_conv_forward`` with the folded weight, so compressed convs
  compose with it);
* ``nn.ReLU``/``nn.ReLU6`` keeping a 1-bit mask
  (:mod:`~mmseg_hosvd.ops.activation`);
* ``nn.AdaptiveAvgPool2d`` keeping only its input's shape
  (:mod:`~mmseg_hosvd.ops.pooling`);
* ``nn.Dropout`` keeping a 1-bit mask when it drops (``0 < p < 1``) instead
  of its float (CPU) or bool (CUDA) mask (:mod:`~mmseg_hosvd.ops.dropout`,
  same random draws). With ``p=0`` ``F.dropout`` already returns its input
  and keeps nothing (measured with ``saved_tensors_hooks``), which the
  replacement keeps as it is.

Transformer ops keep what they keep: the attention probabilities (softmax
output, and the q, k, v that the attention products save), LayerNorm inputs
and GELU inputs are needed by their exact backward and are not touched;
:mod:`mmseg_hosvd.bench.report` names them in the whole-step breakdown.

Exactness of the folding: the BatchNorm's ``gamma`` then gets its gradient
through the folded weight, i.e. from the conv's weight gradient. That is
exact unless the conv computes its weight gradient from a compressed input
(HOSVD, SVD, ASI, Gradient Filter) and ``gamma`` is trainable; mode
``'exact'`` leaves those BatchNorms unfolded, mode ``'all'`` folds them too
(their ``gamma`` gradient then carries the method's approximation, like the
conv's weight gradient).
"""
from dataclasses import dataclass, field
from typing import Dict, Iterator, List, Optional, Tuple

import torch.nn as nn
from torch.nn.modules.batchnorm import _BatchNorm

from .compat import prepare_mmseg
from .ops import VANILLA, CompressedConv2d
from .ops.activation import MaskedReLU, MaskedReLU6
from .ops.dropout import MaskedDropout
from .ops.folding import LeanBatchNorm2d, NormFolding, NormFoldingConv2d
from .ops.pooling import ShapeOnlyAdaptiveAvgPool2d

prepare_mmseg()  # before mmcv.cnn (mmcv.ops fallback)

from mmcv.cnn import ConvModule  # noqa: E402

#: ``lean_backward`` modes: nothing, every exact replacement, or also the
#: folding of trainable BatchNorms after compressed convs
LEAN_BACKWARD_MODES = ('off', 'exact', 'all')


def check_lean_backward(mode: str) -> str:
    if mode not in LEAN_BACKWARD_MODES:
        raise ValueError(f'lean_backward: unknown mode {mode!r}; expected '
                         f'one of {LEAN_BACKWARD_MODES}')
    return mode


@dataclass
class LeanBackward:
    """What :func:`install_lean_backward` changed (module paths), and the
    replaced modules, by path, for :func:`remove_lean_backward`."""
    mode: str
    lean_norms: List[str] = field(default_factory=list)
    folded: List[Tuple[str, str]] = field(default_factory=list)
    unfolded: List[Tuple[str, str]] = field(default_factory=list)
    masked_activations: List[str] = field(default_factory=list)
    shape_only_pools: List[str] = field(default_factory=list)
    masked_dropouts: List[str] = field(default_factory=list)
    originals: Dict[str, nn.Module] = field(default_factory=dict)

    def summary(self) -> str:
        text = (f'lean_backward={self.mode!r}: {len(self.lean_norms)} '
                f'eval-mode BatchNorm(s) keeping no input, '
                f'{len(self.folded)} of them (trainable) folded into their '
                f'conv, '
                f'{len(self.masked_activations)} ReLU/ReLU6 with 1-bit '
                f'masks, {len(self.shape_only_pools)} shape-only pooling(s)'
                f', {len(self.masked_dropouts)} dropout(s) with 1-bit masks')
        if self.unfolded:
            text += (f'; {len(self.unfolded)} trainable BatchNorm(s) after a '
                     "compressed conv kept unfolded (exact; 'all' folds "
                     'them): ' + ', '.join(n for _, n in self.unfolded))
        return text


def _join(prefix: str, name: str) -> str:
    return f'{prefix}.{name}' if prefix else name


def conv_norm_pairs(model: nn.Module) -> Iterator[Tuple[str, str]]:
    """``(conv path, BatchNorm path)`` of every conv whose output goes only
    to the BatchNorm after it (found structurally, see the module doc)."""
    for path, module in model.named_modules():
        if isinstance(module, ConvModule):
            order = list(module.order)
            if (module.with_norm and isinstance(module.norm, _BatchNorm)
                    and isinstance(module.conv, nn.Conv2d)
                    and order.index('norm') == order.index('conv') + 1
                    and getattr(module, 'efficient_conv_bn_eval_forward',
                                None) is None):
                yield _join(path, 'conv'), _join(path, module.norm_name)
        elif isinstance(module, nn.Sequential):
            children = list(module.named_children())
            for (conv_name, conv), (norm_name, norm) in zip(
                    children, children[1:]):
                if isinstance(conv, nn.Conv2d) and isinstance(
                        norm, _BatchNorm):
                    yield _join(path, conv_name), _join(path, norm_name)
        else:
            for index in (1, 2, 3):
                norm_name = getattr(module, f'norm{index}_name', None)
                conv = getattr(module, f'conv{index}', None)
                if isinstance(norm_name, str) and isinstance(
                        conv, nn.Conv2d) and isinstance(
                            getattr(module, norm_name, None), _BatchNorm):
                    yield _join(path, f'conv{index}'), _join(path, norm_name)


def _approximate(conv: nn.Conv2d) -> bool:
    return isinstance(conv, CompressedConv2d) and conv.method != VANILLA


def _folding(conv: nn.Module) -> Optional[NormFolding]:
    """The conv's BatchNorm-folding component, None for a plain conv."""
    folding = getattr(conv, 'norm_folding', None)
    return folding if isinstance(folding, NormFolding) else None


def _trainable(norm: _BatchNorm) -> bool:
    return any(p is not None and p.requires_grad
               for p in (norm.weight, norm.bias))


def replace_module(model: nn.Module, path: str, new: nn.Module,
                   originals: Dict[str, nn.Module]) -> None:
    """Put ``new`` at ``path`` of ``model``; the first module replaced at
    ``path`` is kept in ``originals`` (for the undo)."""
    parent_path, _, attr = path.rpartition('.')
    parent = model.get_submodule(parent_path) if parent_path else model
    originals.setdefault(path, getattr(parent, attr))
    setattr(parent, attr, new)


def install_lean_backward(model: nn.Module, mode: str = 'exact',
                          fold_norms: bool = True) -> LeanBackward:
    """Install the replacements of the module doc in ``model`` (unwrapped);
    run it after :func:`~mmseg_hosvd.surgery.install_compression` (it needs
    to know which convs are compressed). ``'off'`` changes nothing;
    ``fold_norms=False`` (BatchNorms that train) skips the folding."""
    lean = LeanBackward(check_lean_backward(mode))
    if mode == 'off':
        return lean
    originals = lean.originals
    if any(isinstance(m, (LeanBatchNorm2d, MaskedReLU, MaskedReLU6,
                          ShapeOnlyAdaptiveAvgPool2d, MaskedDropout))
           for m in model.modules()):
        raise ValueError('lean_backward: the model already has lean '
                         'modules (two compression hooks in one config?)')
    if fold_norms:
        pairs = list(conv_norm_pairs(model))
        for path, module in list(model.named_modules()):
            if isinstance(module, (nn.BatchNorm2d, nn.SyncBatchNorm)) \
                    and module.track_running_stats:
                replace_module(model, path, LeanBatchNorm2d.from_norm(module),
                               originals)
                lean.lean_norms.append(path)
        for conv_path, norm_path in pairs:
            conv = model.get_submodule(conv_path)
            norm = model.get_submodule(norm_path)
            if not isinstance(norm, LeanBatchNorm2d) or not _trainable(norm):
                continue  # a frozen one keeps only its scale, unfolded
            if mode == 'exact' and _approximate(conv):
                lean.unfolded.append((conv_path, norm_path))
                continue
            if _folding(conv) is None:
                conv = NormFoldingConv2d.from_conv(conv)
                replace_module(model, conv_path, conv, originals)
            _folding(conv).fold(norm)
            lean.folded.append((conv_path, norm_path))
    for path, module in list(model.named_modules()):
        if type(module) is nn.ReLU:
            replace_module(model, path, MaskedReLU(module.inplace), originals)
            lean.masked_activations.append(path)
        elif type(module) is nn.ReLU6:
            replace_module(model, path, MaskedReLU6(module.inplace),
                           originals)
            lean.masked_activations.append(path)
        elif type(module) is nn.AdaptiveAvgPool2d:
            replace_module(model, path,
                           ShapeOnlyAdaptiveAvgPool2d(module.output_size),
                           originals)
            lean.shape_only_pools.append(path)
    masked: Dict[int, MaskedDropout] = {}  # one module may sit at two paths
    for path, module in list(model.named_modules(remove_duplicate=False)):
        if type(module) is nn.Dropout and 0.0 < module.p < 1.0 \
                and not module.inplace:
            if id(module) not in masked:
                masked[id(module)] = MaskedDropout(module.p)
                masked[id(module)].train(module.training)
            replace_module(model, path, masked[id(module)], originals)
            lean.masked_dropouts.append(path)
    return lean


def remove_lean_backward(model: nn.Module, lean: LeanBackward) -> None:
    """Undo :func:`install_lean_backward` (before removing compression)."""
    for conv_path, _ in lean.folded:
        folding = _folding(model.get_submodule(conv_path))
        if folding is not None:
            folding.fold(None)
    for path, original in reversed(list(lean.originals.items())):
        parent_path, _, attr = path.rpartition('.')
        parent = model.get_submodule(parent_path) if parent_path else model
        setattr(parent, attr, original)
    lean.originals.clear()
