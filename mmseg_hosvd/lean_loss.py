"""The decode heads' loss without full-resolution logits (model surgery).

mmseg's ``BaseDecodeHead.loss_by_feat`` upsamples the head's logits
``(B, K, h, w)`` to the label size with ``resize`` and hands them to its
``CrossEntropyLoss``: the upsampled logits and the log-softmax that autograd
keeps are both ``(B, K, H, W)`` (168 MiB each in float32 at batch 8,
512x512, 21 classes). :func:`lean_loss_by_feat` returns the same dict
(``loss_ce`` etc. and ``acc_seg``) from
:func:`mmseg_hosvd.ops.resize_cross_entropy.resize_cross_entropy`, which
keeps only the low-resolution logits.

How it is installed, and why this way: the resize happens inside
``loss_by_feat`` *before* ``loss_decode`` is called, so no module that the
head calls can avoid it; the call that must change is the segmentor's
``decode_head.loss(...)``. :class:`LeanLossEncoderDecoder` is a registered
``EncoderDecoder`` that overrides exactly the two methods making that call
(``_decode_head_forward_train``, ``_auxiliary_head_forward_train``) and adds
no module or parameter, so state dicts are the same as ``EncoderDecoder``'s
(checkpoints load into plain mmseg with ``strict=True``). Use it from a
config (``model = dict(type='LeanLossEncoderDecoder', ...)``), or call
:func:`install_lean_loss` on a built ``EncoderDecoder``: it sets the
model's class to that registered subclass, the mechanism
``torch.nn.utils.parametrize`` uses for parametrized modules (no method of
any instance is replaced; :func:`remove_lean_loss` sets it back).

Supported heads: any ``BaseDecodeHead`` whose ``loss`` is ``forward`` then
``loss_by_feat`` (FCNHead, PSPHead, ASPPHead, DepthwiseSeparableASPPHead,
UPerHead, ...) with no pixel sampler and only softmax ``CrossEntropyLoss``
terms with reduction ``'mean'`` or ``'sum'``. Anything else is refused by
name.
"""
from typing import Dict, List, Optional

import torch
import torch.nn as nn
from torch import Tensor

from .compat import prepare_mmseg
from .ops.resize_cross_entropy import resize_cross_entropy

prepare_mmseg()  # before mmseg.models (mmcv.ops fallback)

# isort: off
from mmseg.models.decode_heads.decode_head import (  # noqa: E402
    BaseDecodeHead)
from mmseg.models.losses import CrossEntropyLoss  # noqa: E402
from mmseg.models.segmentors import EncoderDecoder  # noqa: E402
from mmseg.registry import MODELS  # noqa: E402
from mmseg.utils import add_prefix  # noqa: E402
# isort: on

EPS = torch.finfo(torch.float32).eps  # mmseg's guard against a 0 divisor


def loss_terms(head: nn.Module) -> List[CrossEntropyLoss]:
    """The head's ``loss_decode`` terms, checked to be supported.

    Raises:
        ValueError: naming the head and the unsupported part (not a
            ``BaseDecodeHead``, a pixel sampler, a loss other than
            ``CrossEntropyLoss``, ``use_sigmoid``/``use_mask``, or
            reduction ``'none'``).
    """
    name = type(head).__name__
    if not isinstance(head, BaseDecodeHead):
        raise ValueError(f'lean loss: {name} is not an mmseg BaseDecodeHead')
    if head.sampler is not None:
        raise ValueError(f'lean loss: {name} uses a pixel sampler '
                         f'({type(head.sampler).__name__}); not supported')
    terms = (list(head.loss_decode)
             if isinstance(head.loss_decode, nn.ModuleList) else
             [head.loss_decode])
    for term in terms:
        term_name = type(term).__name__
        if type(term) is not CrossEntropyLoss:
            raise ValueError(f'lean loss: {name} uses {term_name}; only '
                             'CrossEntropyLoss is supported')
        if term.use_sigmoid or term.use_mask:
            raise ValueError(f'lean loss: {name}.{term.loss_name} is a '
                             'CrossEntropyLoss with use_sigmoid or use_mask;'
                             ' only the softmax cross-entropy is supported')
        if term.reduction not in ('mean', 'sum'):
            raise ValueError(f'lean loss: {name}.{term.loss_name} has '
                             f"reduction {term.reduction!r}; only 'mean' "
                             "and 'sum' are supported")
    return terms


def _divisor(term: CrossEntropyLoss, labels: Tensor,
             class_weight: Optional[Tensor], ignore_index: int) -> Tensor:
    """mmseg's ``avg_factor`` + eps for reduction 'mean' (see
    ``mmseg.models.losses.cross_entropy``)."""
    valid = labels.ne(ignore_index)
    if class_weight is None:
        count = valid.sum() if term.avg_non_ignore else labels.numel()
        return torch.as_tensor(count, dtype=torch.float64) + EPS
    if not bool(valid.all()) and not term.avg_non_ignore:
        # mmseg indexes class_weight with ignore_index here and fails
        raise ValueError(
            f'lean loss: {term.loss_name} has class_weight, ignored pixels '
            f'(label {ignore_index}) and avg_non_ignore=False: mmseg cannot '
            'weight ignored pixels either; set avg_non_ignore=True')
    target = torch.where(valid, labels, torch.zeros_like(labels))
    return (class_weight[target] * valid).sum() + EPS


def lean_loss_by_feat(head: BaseDecodeHead, seg_logits: Tensor,
                      batch_data_samples: list, chunk: int = 1) -> dict:
    """What ``head.loss_by_feat(seg_logits, batch_data_samples)`` returns,
    from low-resolution logits only.

    Args:
        head: a supported decode head (see :func:`loss_terms`).
        seg_logits: (B, K, h, w) logits of ``head.forward``.
        batch_data_samples: the samples with ``gt_sem_seg`` (1, H, W).
        chunk: samples upsampled at once.

    Returns:
        ``{loss_name: loss, ..., 'acc_seg': (1,) tensor in percent}``.
    """
    terms = loss_terms(head)
    labels = torch.stack([sample.gt_sem_seg.data
                          for sample in batch_data_samples]).squeeze(1)
    ignore = head.ignore_index
    losses: Dict[str, Tensor] = {}
    correct = None
    for term in terms:
        class_weight = (None if term.class_weight is None else
                        seg_logits.new_tensor(term.class_weight))
        total, correct = resize_cross_entropy(seg_logits, labels,
                                              class_weight, ignore,
                                              head.align_corners, chunk)
        if term.reduction == 'mean':
            total = total / _divisor(term, labels, class_weight,
                                     ignore).to(total)
        value = term.loss_weight * total
        name = term.loss_name
        losses[name] = losses[name] + value if name in losses else value
    num_valid = int(labels.ne(ignore).sum())
    acc = (correct.float().reshape(1) + EPS) * (100.0 / (num_valid + EPS))
    losses['acc_seg'] = acc
    return losses


@MODELS.register_module()
class LeanLossEncoderDecoder(EncoderDecoder):
    """``EncoderDecoder`` whose decode/auxiliary heads' losses come from
    :func:`lean_loss_by_feat` (same values and gradients, no
    full-resolution logits). Same modules and parameter names.

    Args:
        lean_loss_chunk: samples upsampled at once in the loss.
        *args, **kwargs: ``EncoderDecoder``'s.
    """

    def __init__(self, *args, lean_loss_chunk: int = 1, **kwargs) -> None:
        super().__init__(*args, **kwargs)
        self.lean_loss_chunk = lean_loss_chunk
        check_lean_loss_heads(self)

    def _head_loss(self, head: BaseDecodeHead, inputs: List[Tensor],
                   data_samples: list) -> dict:
        return lean_loss_by_feat(head, head.forward(inputs), data_samples,
                                 self.lean_loss_chunk)

    def _decode_head_forward_train(self, inputs: List[Tensor],
                                   data_samples: list) -> dict:
        loss = self._head_loss(self.decode_head, inputs, data_samples)
        return add_prefix(loss, 'decode')

    def _auxiliary_head_forward_train(self, inputs: List[Tensor],
                                      data_samples: list) -> dict:
        if isinstance(self.auxiliary_head, nn.ModuleList):
            losses = {}
            for idx, head in enumerate(self.auxiliary_head):
                loss = self._head_loss(head, inputs, data_samples)
                losses.update(add_prefix(loss, f'aux_{idx}'))
            return losses
        loss = self._head_loss(self.auxiliary_head, inputs, data_samples)
        return add_prefix(loss, 'aux')


def lean_loss_heads(model: EncoderDecoder) -> List[BaseDecodeHead]:
    """The decode head and every auxiliary head of ``model``."""
    heads = [model.decode_head]
    if getattr(model, 'auxiliary_head', None) is not None:
        aux = model.auxiliary_head
        heads += list(aux) if isinstance(aux, nn.ModuleList) else [aux]
    return heads


def check_lean_loss_heads(model: EncoderDecoder) -> None:
    """Raise ValueError naming the first unsupported head or loss."""
    for head in lean_loss_heads(model):
        loss_terms(head)


def install_lean_loss(model: nn.Module, chunk: int = 1) -> nn.Module:
    """Make an mmseg ``EncoderDecoder`` compute its heads' losses with
    :func:`lean_loss_by_feat` (see the module docstring); returns it.

    Args:
        model: an ``EncoderDecoder`` (exactly that class) or a
            ``LeanLossEncoderDecoder`` (then only ``chunk`` changes).
        chunk: samples upsampled at once in the loss (>= 1).

    Raises:
        TypeError: another segmentor class (its own training methods would
            be bypassed).
        ValueError: an unsupported head or loss (named), or a bad chunk.
    """
    if type(model) not in (EncoderDecoder, LeanLossEncoderDecoder):
        raise TypeError('install_lean_loss needs an mmseg EncoderDecoder, '
                        f'got {type(model).__name__}')
    if not isinstance(chunk, int) or chunk < 1:
        raise ValueError(f'chunk must be a positive int, got {chunk!r}')
    check_lean_loss_heads(model)
    model.__class__ = LeanLossEncoderDecoder
    model.lean_loss_chunk = chunk
    return model


def remove_lean_loss(model: nn.Module) -> nn.Module:
    """Undo :func:`install_lean_loss` (a no-op for a plain
    ``EncoderDecoder``); returns the model."""
    if type(model) is LeanLossEncoderDecoder:
        model.__class__ = EncoderDecoder
        del model.lean_loss_chunk
    return model
