"""The frozen part of a fine-tuned model, run lean (model surgery).

A training step runs the frozen part of the network (a ResNet stem at half
resolution, the first stages) at the full batch: its transients (a conv's
output and the BatchNorm's output, e.g. 8x64x256x256 float32 = 128 MiB each
at batch 8, 512x512) can exceed everything compression saves. Two exact
options (up to float rounding) of :class:`~mmseg_hosvd.compression.
CompressionConfig`:

* ``frozen_chunk=N``: each maximal fully-frozen module
  (:func:`frozen_module_paths`) called in training mode with no input that
  requires grad runs under ``torch.no_grad()`` on ``N`` samples at a
  time; the outputs (a tensor, or a tuple/list of tensors, batch first) are
  written into tensors of the full batch allocated once (no list of pieces
  plus a ``torch.cat`` copy). Nothing there needs autograd (no parameter
  trains, no input needs a gradient), so values and gradients are those of
  the plain forward. In eval mode, or when an input requires grad, the
  module runs unchanged.
  Exact only when every sample is computed on its own: a BatchNorm using
  batch statistics (training mode, or ``track_running_stats=False``) or a
  dropout / drop-path with ``p > 0`` in training mode is refused, naming
  ``frozen_chunk`` and the module path, at install and at every call.
* ``fold_frozen_norms=True``: each frozen conv followed by a frozen eval-mode
  BatchNorm (the pairs of :func:`~mmseg_hosvd.lean_backward.conv_norm_pairs`:
  the conv's output goes only to that BatchNorm) computes ``conv(x, W * s,
  (b - mean) * s + beta)`` in one op, and the BatchNorm passes its input
  through: one full-size tensor instead of two. The conv becomes a
  :class:`~mmseg_hosvd.ops.folding.NormFoldingConv2d` folding ``always``
  (the folded weight is computed on the fly from the frozen Parameters), the
  BatchNorm a :class:`~mmseg_hosvd.ops.folding.LeanBatchNorm2d` (unless
  ``lean_backward`` made it one already): the same Parameter and buffer
  objects under the same names. Folding stops by itself while the BatchNorm
  is in training mode.

Both need ``norm_eval`` (the config refuses ``norm_eval=False``).

How the chunking is installed, and why this way: a forward pre-hook can
change a module's inputs and a forward hook its output, but none can run
the module several times, so hooks cannot chunk. A wrapper module holding
the original as a child would rename every parameter (``stem.0.weight`` ->
``stem.module.0.weight``). The module's class is therefore set to a
subclass (:func:`chunked_class`: ``FrozenChunk<Class>``, the original class
with :class:`FrozenChunkForward` before it, made once per class) whose
``forward`` chunks and calls the original ``forward``; this is how
``torch.nn.utils.parametrize`` and :func:`~mmseg_hosvd.lean_loss.
install_lean_loss` change a module. No method of any instance is replaced,
the Parameters, buffers and ``state_dict`` keys are the module's own, and
:func:`remove_frozen_forward` sets the class back (``torch.save`` of a whole
model object, not of its ``state_dict``, needs it removed first).
"""
import functools
from dataclasses import dataclass, field
from typing import Any, Dict, List, Optional, Tuple

import torch
import torch.nn as nn
from torch import Tensor
from torch.nn.modules.batchnorm import _BatchNorm
from torch.nn.modules.dropout import _DropoutNd

from .lean_backward import conv_norm_pairs, replace_module
from .ops.folding import LeanBatchNorm2d, NormFoldingConv2d


def check_frozen_chunk(value: Optional[int]) -> Optional[int]:
    """``frozen_chunk``: None or an int >= 1."""
    if value is not None and (isinstance(value, bool)
                              or not isinstance(value, int) or value < 1):
        raise ValueError(f'frozen_chunk: expected None or an int >= 1 '
                         f'(samples per chunk), got {value!r}')
    return value


def _join(prefix: str, name: str) -> str:
    return f'{prefix}.{name}' if prefix and name else prefix or name


def _frozen(module: nn.Module) -> bool:
    """Has parameters, none of which requires grad."""
    params = list(module.parameters())
    return bool(params) and not any(p.requires_grad for p in params)


def frozen_module_paths(model: nn.Module) -> List[str]:
    """The maximal fully-frozen modules of ``model``: modules with
    parameters, none trainable, whose parent has a trainable parameter or
    is the backbone or neck (these two, and the model, are never chunked
    themselves: their children are). Parameter-free modules (pooling,
    activations) are left out: they gain nothing from chunking."""
    containers = {id(m) for m in (getattr(model, 'backbone', None),
                                  getattr(model, 'neck', None))
                  if isinstance(m, nn.Module)}
    paths: List[str] = []

    def visit(parent: nn.Module, prefix: str) -> None:
        for name, child in parent.named_children():
            path = _join(prefix, name)
            if _frozen(child) and id(child) not in containers:
                paths.append(path)
            elif any(p.requires_grad for p in child.parameters()) or \
                    id(child) in containers:
                visit(child, path)

    visit(model, '')
    return paths


def check_chunkable(module: nn.Module, path: str, norm_eval: bool = True,
                    installing: bool = False) -> None:
    """Raise ValueError (naming ``frozen_chunk`` and the path) if a
    submodule of ``module`` couples the samples of a batch: a BatchNorm
    using batch statistics (training mode; at install only if not
    ``norm_eval``; or no running statistics) or, in training mode (at
    install: whatever the mode), a dropout or drop-path with ``p > 0``."""
    for name, sub in module.named_modules():
        where = _join(path, name)
        if isinstance(sub, _BatchNorm) and (
                sub.running_mean is None
                or (sub.training and not (installing and norm_eval))):
            raise ValueError(
                f'frozen_chunk: {where!r} is a BatchNorm using batch '
                'statistics (training mode or track_running_stats=False), '
                'which chunks of the batch would change; keep norm_eval=True '
                '(call set_norm_eval() after model.train()) or set '
                'frozen_chunk=None')
        prob = sub.p if isinstance(sub, _DropoutNd) else getattr(
            sub, 'drop_prob', 0.0)
        if prob and (sub.training or installing):
            raise ValueError(
                f'frozen_chunk: {where!r} ({type(sub).__name__}) drops '
                f'with p={prob} in training mode; its random draws would '
                'differ by chunk; set its probability to 0 or '
                'frozen_chunk=None')


def _leaves(value: Any) -> List[Tensor]:
    if isinstance(value, Tensor):
        return [value]
    if isinstance(value, (tuple, list)):
        return [t for item in value for t in _leaves(item)]
    if isinstance(value, dict):
        return [t for item in value.values() for t in _leaves(item)]
    return []


def _sliced(value: Any, start: int, stop: int) -> Any:
    """``value`` with every tensor of >= 1 dims cut to ``[start:stop]``."""
    if isinstance(value, Tensor):
        return value[start:stop] if value.dim() else value
    if isinstance(value, (tuple, list)):
        items = [_sliced(v, start, stop) for v in value]
        return type(value)(*items) if hasattr(value, '_fields') else \
            type(value)(items)
    if isinstance(value, dict):
        return {k: _sliced(v, start, stop) for k, v in value.items()}
    return value


def _batch_size(tensors: List[Tensor]) -> Optional[int]:
    """The common dim-0 size of the batched tensors, None if none or if
    they disagree (then the module runs unchanged)."""
    sizes = {t.shape[0] for t in tensors if t.dim()}
    return sizes.pop() if len(sizes) == 1 else None


def _empty_batch(piece: Tensor, batch: int) -> Tensor:
    """An uninitialised (batch, *piece.shape[1:]) tensor like ``piece``,
    channels-last if ``piece`` is."""
    channels_last = (piece.dim() == 4 and not piece.is_contiguous() and
                     piece.is_contiguous(memory_format=torch.channels_last))
    return torch.empty((batch, ) + tuple(piece.shape[1:]), dtype=piece.dtype,
                       device=piece.device,
                       memory_format=torch.channels_last
                       if channels_last else torch.contiguous_format)


def _gather(out: Any, piece: Any, start: int, batch: int, path: str) -> Any:
    """Write ``piece`` (the outputs of samples ``start:``) into ``out``
    (None: allocate it from the first piece)."""
    pieces = list(piece) if isinstance(piece, (tuple, list)) else [piece]
    if not all(isinstance(p, Tensor) and p.dim() for p in pieces):
        raise ValueError(
            f'frozen_chunk: {path!r} returned {type(piece).__name__}; only '
            'modules returning a tensor or a tuple/list of tensors (batch '
            'first) can be chunked; set frozen_chunk=None')
    if out is None:
        outs = [_empty_batch(p, batch) for p in pieces]
        out = type(piece)(outs) if isinstance(piece, (tuple, list)) \
            else outs[0]
    for target, value in zip(_leaves(out), pieces):
        target[start:start + value.shape[0]].copy_(value)
    return out


class FrozenChunkForward:
    """The ``forward`` of a frozen module, run on chunks of the batch
    (see the module docstring); the first base of :func:`chunked_class`.

    Plain attributes set by :func:`install_frozen_forward` (not in
    ``state_dict``): :attr:`frozen_chunk` (samples per chunk) and
    :attr:`frozen_chunk_path` (the module path, for errors).
    """
    frozen_chunk: int = 1
    frozen_chunk_path: str = ''

    def forward(self, *args, **kwargs):
        forward = super().forward  # the original class's
        inputs = _leaves((args, kwargs))
        if not self.training or any(t.requires_grad for t in inputs):
            return forward(*args, **kwargs)
        batch = _batch_size(inputs)
        if batch is None:
            return forward(*args, **kwargs)
        check_chunkable(self, self.frozen_chunk_path)
        chunk = self.frozen_chunk
        with torch.no_grad():
            if batch <= chunk:
                return forward(*args, **kwargs)
            out = None
            for start in range(0, batch, chunk):
                stop = min(start + chunk, batch)
                piece = forward(*_sliced(args, start, stop),
                                **_sliced(kwargs, start, stop))
                out = _gather(out, piece, start, batch,
                              self.frozen_chunk_path)
        return out


@functools.lru_cache(maxsize=None)
def chunked_class(cls: type) -> type:
    """``FrozenChunk<cls>``: :class:`FrozenChunkForward` then ``cls``
    (one class per ``cls``, so that installing twice makes no new class)."""
    return type(f'FrozenChunk{cls.__name__}', (FrozenChunkForward, cls),
                {'__module__': __name__})


@dataclass
class FrozenForward:
    """What :func:`install_frozen_forward` changed: the chunked modules'
    paths and original classes, the folded (conv, BatchNorm) paths and the
    modules they replaced (for :func:`remove_frozen_forward`)."""
    frozen_chunk: Optional[int]
    chunked: Dict[str, type] = field(default_factory=dict)
    folded: List[Tuple[str, str]] = field(default_factory=list)
    originals: Dict[str, nn.Module] = field(default_factory=dict)

    def summary(self) -> str:
        return (f'frozen_chunk={self.frozen_chunk}: {len(self.chunked)} '
                f'frozen module(s) chunked, {len(self.folded)} frozen '
                'conv+BatchNorm pair(s) folded')


def _fold_frozen_norms(model: nn.Module, frozen: FrozenForward) -> None:
    for conv_path, norm_path in list(conv_norm_pairs(model)):
        conv = model.get_submodule(conv_path)
        norm = model.get_submodule(norm_path)
        if (type(conv) is not nn.Conv2d or not _frozen(norm)
                or not _frozen(conv) or norm.running_mean is None
                or getattr(norm, 'folded', False)
                or type(norm) not in (nn.BatchNorm2d, nn.SyncBatchNorm,
                                      LeanBatchNorm2d)):
            continue
        if type(norm) is not LeanBatchNorm2d:
            norm = LeanBatchNorm2d.from_norm(norm)
            replace_module(model, norm_path, norm, frozen.originals)
        folding = NormFoldingConv2d.from_conv(conv, always=True)
        replace_module(model, conv_path, folding, frozen.originals)
        folding.fold_norm(norm)
        frozen.folded.append((conv_path, norm_path))


def install_frozen_forward(model: nn.Module, frozen_chunk: Optional[int],
                           fold_norms: bool = False,
                           norm_eval: bool = True) -> FrozenForward:
    """Fold (``fold_norms``) then chunk (``frozen_chunk``) the frozen part
    of ``model`` (unwrapped), as the module docstring says; run it after
    every other install of :func:`~mmseg_hosvd.compression.
    apply_compression` (it needs the final freezing).

    Raises:
        ValueError: a module to chunk couples samples (see
            :func:`check_chunkable`), or is chunked already.
    """
    frozen = FrozenForward(check_frozen_chunk(frozen_chunk))
    if (frozen_chunk is not None or fold_norms) and not norm_eval:
        raise ValueError('frozen_chunk / fold_frozen_norms need '
                         'norm_eval=True (BatchNorms in training mode use '
                         'batch statistics)')
    paths = frozen_module_paths(model) if frozen_chunk is not None else []
    for path in paths:
        module = model.get_submodule(path)
        if isinstance(module, FrozenChunkForward):
            raise ValueError(f'frozen_chunk: {path!r} is chunked already '
                             '(two compression hooks in one config?)')
        check_chunkable(module, path, norm_eval, installing=True)
    if fold_norms:
        _fold_frozen_norms(model, frozen)
    for path in paths:
        module = model.get_submodule(path)
        frozen.chunked[path] = type(module)
        module.__class__ = chunked_class(type(module))
        module.frozen_chunk = frozen_chunk
        module.frozen_chunk_path = path
    return frozen


def remove_frozen_forward(model: nn.Module, frozen: FrozenForward) -> None:
    """Undo :func:`install_frozen_forward` (before every other removal)."""
    for path, cls in frozen.chunked.items():
        module = model.get_submodule(path)
        module.__class__ = cls
        del module.frozen_chunk, module.frozen_chunk_path
    for conv_path, _ in frozen.folded:
        model.get_submodule(conv_path).fold_norm(None)
    for path, original in reversed(list(frozen.originals.items())):
        parent_path, _, attr = path.rpartition('.')
        parent = model.get_submodule(parent_path) if parent_path else model
        setattr(parent, attr, original)
    frozen.chunked.clear()
    frozen.folded.clear()
    frozen.originals.clear()
