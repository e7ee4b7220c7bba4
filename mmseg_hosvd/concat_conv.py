"""A conv over a channel concatenation, without the concatenation (model
surgery).

``conv_module(torch.cat(branches, 1))`` keeps the concatenation alive for
the conv's weight gradient (a compressed conv decomposes it whole) and its
gradient is as large. :func:`concat_conv` computes the same output as the
sum of one conv per branch over that branch's slice of the weight's input
channels, ``sum_i conv(branch_i, W[:, c_i:c_i + C_i]) + b``, then the
``ConvModule``'s norm and activation: the concatenation never exists, and
each branch's conv keeps that branch for backward (a compressed conv
compresses each branch on its own; an input shared with another compressed
conv is decomposed once, see :class:`~mmseg_hosvd.ops.CompressionContext`).
Output and gradients equal the concatenated computation up to float
rounding (addition order), where the conv's weight gradient is exact.

A BatchNorm applied by the conv itself (an eval-mode BatchNorm folded by
:mod:`~mmseg_hosvd.lean_backward`, or mmcv's ``efficient_conv_bn_eval``)
is affine: it is applied once, to the sum (its folded weight sliced per
branch, its folded bias added once, or its normalisation of the sum).
"""
import itertools
from contextlib import nullcontext
from typing import Callable, Iterable, List, Optional, Tuple

import torch
import torch.nn as nn
from torch import Tensor

from .checkpointing import CheckpointedModule
from .compat import prepare_mmseg
from .ops import CompressedConv2d, method_spec
from .ops.folding import NormFolding, fold_batch_norm, folding_pays

prepare_mmseg()  # before mmcv.cnn (mmcv.ops fallback)

from mmcv.cnn import ConvModule  # noqa: E402


def split_problem(conv_module: nn.Module) -> Optional[str]:
    """Why :func:`concat_conv` cannot split ``conv_module``, or None.

    Supported: an mmcv ``ConvModule`` whose conv is an ``nn.Conv2d`` with
    ``groups=1``, with no norm or activation before the conv in its
    ``order``, whose conv is not compressed by a method that keeps one
    state per layer (``asi``: its subspaces are per layer, not per branch).
    A :class:`~mmseg_hosvd.checkpointing.CheckpointedModule` is computed on
    the concatenation (it keeps only its input anyway), so it is fine too.
    """
    if isinstance(conv_module, CheckpointedModule):
        return None
    if not isinstance(conv_module, ConvModule):
        return f'{type(conv_module).__name__} is not an mmcv ConvModule'
    conv = conv_module.conv
    if not isinstance(conv, nn.Conv2d):
        return f'its conv is a {type(conv).__name__}, not an nn.Conv2d'
    if conv.groups != 1:
        return f'its conv has groups={conv.groups}'
    before = conv_module.order[:list(conv_module.order).index('conv')]
    if ('norm' in before and conv_module.with_norm) or (
            'act' in before and conv_module.with_activation):
        return f'its order {conv_module.order} applies {before} before conv'
    if isinstance(conv, CompressedConv2d) and \
            method_spec(conv.method).stateful:
        return (f'its conv is compressed with {conv.method!r}, which keeps '
                'one state per layer')
    return None


def concat_conv(conv_module: nn.Module, branches: Iterable[Tensor]) -> Tensor:
    """``conv_module(torch.cat(branches, 1))`` as a sum of per-branch convs.

    Args:
        conv_module: a supported ``ConvModule`` (:func:`split_problem`).
        branches: ``(B, C_i, H, W)`` tensors whose ``C_i`` add up to the
            conv's input channels; an iterator (a generator) is consumed
            one branch at a time, so that a branch computed on demand is
            freed before the next one exists.

    Returns:
        ``(B, C_out, H', W')``, what the ``ConvModule`` returns for the
        concatenation. Under ``torch.no_grad()`` (inference, tracing) and
        for a checkpointed module, it is that very call.

    Raises:
        ValueError: an unsupported ``conv_module`` (naming why), or branches
            whose channels do not add up to the conv's input channels.
    """
    if not torch.is_grad_enabled() or isinstance(conv_module,
                                                 CheckpointedModule):
        return conv_module(torch.cat(list(branches), 1))
    problem = split_problem(conv_module)
    if problem is not None:
        raise ValueError(f'concat_conv: cannot split the conv: {problem}')
    order = list(conv_module.order)
    index = order.index('conv')
    inputs: Iterable[Tensor] = branches
    if conv_module.with_explicit_padding:
        inputs = (conv_module.padding_layer(x) for x in branches)
    x, norm_applied = _split_conv(conv_module, inputs,
                                  order[index + 1:index + 2] == ['norm'])
    for layer in order[index + 1:]:
        if layer == 'norm' and conv_module.with_norm and not norm_applied:
            x = conv_module.norm(x)
        elif layer == 'act' and conv_module.with_activation:
            x = conv_module.activate(x)
    return x


def _split_conv(conv_module: ConvModule, branches: Iterable[Tensor],
                norm_next: bool) -> Tuple[Tensor, bool]:
    """The conv step of ``conv_module`` on the concatenation of
    ``branches``, per branch; and whether it applied the module's norm too
    (mmcv's ``efficient_conv_bn_eval``, as ``ConvModule.forward`` does)."""
    conv = conv_module.conv
    weight, bias = conv.weight, conv.bias
    norm = conv_module.norm if conv_module.with_norm and norm_next else None
    if (norm is not None and not norm.training
            and getattr(conv_module, 'efficient_conv_bn_eval_forward',
                        None) is not None):
        weight, bias = fold_batch_norm(weight, bias, norm)
        return _sum_of_convs(conv, branches, weight, bias), True
    folding = getattr(conv, 'norm_folding', None)
    folded = folding.norm if isinstance(folding, NormFolding) else None
    normalize: Callable[[Tensor], Tensor] = _identity
    if folded is not None and not folded.training:
        branches = iter(branches)
        first = next(branches)
        branches = itertools.chain([first], branches)
        if folding_pays(conv, first):  # B, H, W as the concatenation
            weight, bias = fold_batch_norm(weight, bias, folded)
        else:
            normalize = folded.normalize
    return normalize(_sum_of_convs(conv, branches, weight, bias)), False


def _identity(x: Tensor) -> Tensor:
    return x


def _sum_of_convs(conv: nn.Conv2d, branches: Iterable[Tensor],
                  weight: Tensor, bias: Optional[Tensor]) -> Tensor:
    """``conv._conv_forward(cat(branches), weight, bias)`` as the sum of
    ``conv._conv_forward(branch_i, weight[:, slice_i], None)`` plus
    ``bias`` once, one branch at a time; a compressed conv's
    ``last_stats`` sums the calls."""
    summing = conv.summing_stats() if isinstance(
        conv, CompressedConv2d) else nullcontext()
    output = None
    channels: List[int] = []
    start = 0
    with summing:
        for x in branches:
            width = x.shape[1]
            channels.append(width)
            if start + width > weight.shape[1]:
                break
            part = conv._conv_forward(x, weight[:, start:start + width],
                                      None)
            output = part if output is None else output + part
            start += width
            del x, part
    if output is None or sum(channels) != weight.shape[1]:
        raise ValueError(f'concat_conv: branches of {channels} channels '
                         f'(sum {sum(channels)}) for a conv of '
                         f'{weight.shape[1]} input channels')
    if bias is not None:
        shape = (1, -1) + (1, ) * (output.dim() - 2)
        output = output + bias.to(output.dtype).view(shape)
    return output
