"""ReLU and ReLU6 that keep a 1-bit mask for backward instead of a tensor.

Their gradient only needs where the output lies strictly inside the linear
range (ReLU: ``y > 0``; ReLU6: ``0 < y < 6``, as torch's own backward), so
the mask is packed 8 elements per byte: 1/32 of a float32 output. Exact.
Pure torch.
"""
import sys
from typing import Optional, Tuple

import torch
import torch.nn as nn
from torch import Tensor
from torch.autograd import Function
from torch.autograd.function import once_differentiable

_SHIFTS = (0, 1, 2, 3, 4, 5, 6, 7)
#: gathers the low bit of byte i of an int64 into bit 56 + i (no carries)
_GATHER = 0x0102040810204080


def pack_bits(mask: Tensor) -> Tensor:
    """A bool tensor of N elements as ``ceil(N / 8)`` uint8 (element
    ``8 * j + i`` is bit ``i`` of byte ``j``)."""
    flat = mask.reshape(-1)
    pad = (-flat.numel()) % 8
    if pad:
        flat = torch.cat([flat, flat.new_zeros(pad)])
    octets = flat.view(torch.uint8).view(-1, 8)
    if sys.byteorder != 'little':
        packed = octets[:, 0].clone()
        for shift in _SHIFTS[1:]:
            packed |= octets[:, shift] << shift
        return packed
    # one int64 multiply per 8 elements (wraps; only the top byte is kept)
    words = octets.view(torch.int64).view(-1)
    return (((words * _GATHER) >> 56) & 0xFF).to(torch.uint8)


def unpack_bits(packed: Tensor, numel: int) -> Tensor:
    """Inverse of :func:`pack_bits`: a flat bool tensor of ``numel``."""
    shifts = torch.tensor(_SHIFTS, dtype=torch.uint8, device=packed.device)
    bits = (packed.unsqueeze(1) >> shifts) & 1
    return bits.view(-1)[:numel].view(torch.bool)


class _MaskedClamp(Function):
    """``clamp(x, 0, upper)`` saving a packed mask of where it passes
    gradient."""

    @staticmethod
    def forward(ctx, input: Tensor, upper: Optional[float],
                inplace: bool) -> Tensor:
        if inplace:
            output = input.clamp_(min=0, max=upper)
            ctx.mark_dirty(input)
        else:
            output = input.clamp(min=0, max=upper)
        passes = output > 0
        if upper is not None:
            passes &= output < upper
        ctx.shape = output.shape
        ctx.save_for_backward(pack_bits(passes))
        return output

    @staticmethod
    @once_differentiable
    def backward(ctx, grad_output: Tensor) -> Tuple[Optional[Tensor], ...]:
        packed, = ctx.saved_tensors
        passes = unpack_bits(packed, grad_output.numel()).view(ctx.shape)
        return torch.where(passes, grad_output, 0), None, None


def masked_clamp(input: Tensor, upper: Optional[float] = None,
                 inplace: bool = False) -> Tensor:
    """ReLU (``upper=None``) or ReLU6 (``upper=6``); keeps a 1-bit mask when
    ``input`` requires grad, nothing otherwise."""
    if not (torch.is_grad_enabled() and input.requires_grad):
        return input.clamp_(min=0, max=upper) if inplace else input.clamp(
            min=0, max=upper)
    return _MaskedClamp.apply(input, upper, inplace)


class MaskedReLU(nn.ReLU):
    """``nn.ReLU`` whose backward keeps a 1-bit mask (1/32 of a float32
    output) instead of its output."""

    def forward(self, input: Tensor) -> Tensor:
        return masked_clamp(input, None, self.inplace)


class MaskedReLU6(nn.ReLU6):
    """``nn.ReLU6`` whose backward keeps a 1-bit mask."""

    def forward(self, input: Tensor) -> Tensor:
        return masked_clamp(input, 6.0, self.inplace)
