"""Dropout that keeps a 1-bit mask for backward.

``nn.Dropout`` in training keeps its full mask for backward: on the CPU
``F.dropout`` computes ``input * noise`` with a float ``noise`` tensor of the
input's dtype (4 bytes per element in float32, ``MulBackward0``), on CUDA
``native_dropout`` keeps a bool mask (1 byte per element). The gradient only
needs which elements were kept, so :class:`MaskedDropout` packs that mask 8
elements per byte (:func:`~.activation.pack_bits`). It draws its random
numbers exactly as ``F.dropout`` does on that device (``bernoulli_`` on the
CPU, ``native_dropout`` on CUDA and other fused devices), so that a model
gives the same output and gradients with it as with ``nn.Dropout`` under the
same seed. With ``p=0``, in eval mode or without grad it is ``F.dropout``
itself (which then keeps nothing). Pure torch.
"""
from typing import Optional, Tuple

import torch
import torch.nn as nn
import torch.nn.functional as F
from torch import Tensor
from torch.autograd import Function
from torch.autograd.function import once_differentiable

from .activation import pack_bits, unpack_bits

#: devices on which ``F.dropout`` runs the fused ``native_dropout``
FUSED_DEVICES = ('cuda', 'xpu', 'lazy')


class _MaskedDropout(Function):
    """``F.dropout(input, p, training=True)`` saving a packed mask."""

    @staticmethod
    def forward(ctx, input: Tensor, p: float) -> Tensor:
        if input.device.type in FUSED_DEVICES:
            output, kept = torch.native_dropout(input, p, True)
        else:  # F.dropout's composite CPU path: input * (bernoulli / (1-p))
            noise = torch.empty_like(input).bernoulli_(1 - p)
            noise.div_(1 - p)
            output = input * noise
            kept = noise != 0
        ctx.p = p
        ctx.shape = input.shape
        ctx.save_for_backward(pack_bits(kept))
        return output

    @staticmethod
    @once_differentiable
    def backward(ctx, grad_output: Tensor) -> Tuple[Optional[Tensor], None]:
        packed, = ctx.saved_tensors
        kept = unpack_bits(packed, grad_output.numel()).view(ctx.shape)
        p = ctx.p
        if grad_output.device.type in FUSED_DEVICES:
            return torch.ops.aten.native_dropout_backward(
                grad_output, kept, 1.0 / (1.0 - p)), None
        noise = kept.to(grad_output.dtype).div_(1 - p)
        return grad_output * noise, None


def masked_dropout(input: Tensor, p: float, training: bool) -> Tensor:
    """``F.dropout(input, p, training)``; keeps a 1-bit mask when it drops
    (``0 < p < 1``, training) and ``input`` requires grad."""
    if not (training and 0.0 < p < 1.0 and torch.is_grad_enabled()
            and input.requires_grad and input.numel() > 0):
        return F.dropout(input, p, training)
    return _MaskedDropout.apply(input, p)


class MaskedDropout(nn.Dropout):
    """``nn.Dropout`` whose backward keeps a 1-bit mask (not in-place)."""

    def forward(self, input: Tensor) -> Tensor:
        if self.inplace:
            return super().forward(input)
        return masked_dropout(input, self.p, self.training)
