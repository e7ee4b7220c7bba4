"""Adaptive average pooling that keeps no tensor for backward.

Autograd's ``adaptive_avg_pool2d`` keeps its whole input, although the
operation is linear and its backward only needs the input's shape (PSPNet's
and UPerNet's pyramid pooling, DeepLabV3's image pooling all pool a
full-size feature map). Exact. Pure torch.
"""
from typing import Optional, Tuple

import torch
import torch.nn as nn
import torch.nn.functional as F
from torch import Tensor
from torch.autograd import Function
from torch.autograd.function import once_differentiable


class _ShapeOnlyAdaptiveAvgPool2d(Function):

    @staticmethod
    def forward(ctx, input: Tensor, output_size) -> Tensor:
        ctx.input_shape = tuple(input.shape)
        ctx.output_size = output_size
        return F.adaptive_avg_pool2d(input, output_size)

    @staticmethod
    @once_differentiable
    def backward(ctx, grad_output: Tensor) -> Tuple[Optional[Tensor], ...]:
        # the vector-Jacobian product of a linear map, at any point
        with torch.enable_grad():
            probe = grad_output.new_zeros(ctx.input_shape,
                                          requires_grad=True)
            pooled = F.adaptive_avg_pool2d(probe, ctx.output_size)
            grad_input, = torch.autograd.grad(pooled, probe, grad_output)
        return grad_input, None


class ShapeOnlyAdaptiveAvgPool2d(nn.AdaptiveAvgPool2d):
    """``nn.AdaptiveAvgPool2d`` that keeps only its input's shape for
    backward."""

    def forward(self, input: Tensor) -> Tensor:
        if not (torch.is_grad_enabled() and input.requires_grad):
            return super().forward(input)
        return _ShapeOnlyAdaptiveAvgPool2d.apply(input, self.output_size)
