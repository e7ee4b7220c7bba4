"""The autograd Functions of the compressed convolution.

Each computes the exact ``F.conv2d`` in forward and saves only what its
backward needs instead of the input:

* :class:`_LowRankConv2dFunction`: the weight and what the decomposition
  kept (Tucker or SVD factors, or the whole input where no factorisation
  is smaller); grad_weight from them (:mod:`.conv_gradients`);
* :class:`_NonFiniteConv2dFunction`: the weight only (a non-finite input
  skipped by ``non_finite='skip'``); grad_weight is NaN;
* :class:`_GradientFilterConv2dFunction`: the patch-summed input and the
  kernel-summed weight; Gradient Filter grad_weight and grad_input;
* :class:`_ShapeOnlyPad`: explicit non-zero padding that saves no tensor.

grad_input and grad_bias are exact except for the Gradient Filter's
grad_input. Half-precision saved tensors are used in float32. The class
names show in autograd graphs as ``<name>Backward``
(:data:`COMPRESSED_BACKWARD_NODES`).
"""
from dataclasses import dataclass
from typing import Dict, Optional, Sequence, Tuple, Type, Union

import torch
import torch.nn.functional as F
from torch import Tensor
from torch.autograd import Function
from torch.autograd.function import once_differentiable

from ..decomposition import SVDFactors, TuckerFactors, WholeInput
from .conv_gradients import (ConvGeometry, conv_input_grad,
                             conv_weight_grad, hosvd_weight_grad,
                             svd_weight_grad)
from .gradient_filter import (filter_grad_output, filtered_input_grad,
                              filtered_weight_grad)
from .linear_autograd import LINEAR_BACKWARD_NODES
from .saved_weight_grads import (gradient_dtype, nan_weight_grad,
                                 saved_weight_grads, upcast)

#: what a low-rank Function may save of the input
Factors = Union[TuckerFactors, SVDFactors, WholeInput]


@dataclass(frozen=True)
class LowRankSpec:
    """What :class:`_LowRankConv2dFunction` needs besides the tensors."""
    factors_type: Type
    geometry: ConvGeometry
    input_shape: Tuple[int, ...]
    weight_grad_path: str


class _LowRankConv2dFunction(Function):
    """Exact conv; saves the weight and the factors of the input."""

    @staticmethod
    def forward(ctx, input: Tensor, weight: Tensor, bias: Optional[Tensor],
                spec: LowRankSpec, *factor_tensors: Tensor) -> Tensor:
        geometry = spec.geometry
        ctx.spec = spec
        ctx.has_bias = bias is not None
        ctx.save_for_backward(weight, *factor_tensors)
        return F.conv2d(input, weight, bias, geometry.stride,
                        geometry.padding, geometry.dilation, geometry.groups)

    @staticmethod
    @once_differentiable
    def backward(ctx, grad_output: Tensor) -> Tuple[Optional[Tensor], ...]:
        spec: LowRankSpec = ctx.spec
        weight, *factor_tensors = ctx.saved_tensors
        grads = saved_weight_grads(
            ctx, grad_output, weight,
            lambda grad, weight: conv_input_grad(grad, spec.input_shape,
                                                 weight, spec.geometry),
            lambda grad, weight: factors_weight_grad(
                spec, factor_tensors, grad, weight.shape), conv_bias_grad)
        return grads + (None, ) * (1 + len(factor_tensors))


def factors_weight_grad(spec: LowRankSpec, factor_tensors: Sequence[Tensor],
                        grad_output: Tensor,
                        weight_shape: Sequence[int]) -> Tensor:
    """grad_weight from the saved factors (float32 for half types)."""
    factors = spec.factors_type.from_tensors(upcast(factor_tensors),
                                             spec.input_shape)
    if isinstance(factors, TuckerFactors):
        return hosvd_weight_grad(factors, grad_output, weight_shape,
                                 spec.geometry, spec.weight_grad_path)
    if isinstance(factors, SVDFactors):
        return svd_weight_grad(factors, grad_output, weight_shape,
                               spec.geometry)
    return conv_weight_grad(factors.tensor,
                            grad_output.to(factors.tensor.dtype),
                            weight_shape, spec.geometry)


class _NonFiniteConv2dFunction(Function):
    """Exact conv of a non-finite input that keeps nothing of it: grad_input
    and grad_bias are exact, grad_weight is NaN (the optimizer guard of
    :class:`~mmseg_hosvd.engine.ActivationCompressionHook` skips the step)."""

    @staticmethod
    def forward(ctx, input: Tensor, weight: Tensor, bias: Optional[Tensor],
                geometry: ConvGeometry) -> Tensor:
        ctx.geometry = geometry
        ctx.input_shape = tuple(input.shape)
        ctx.has_bias = bias is not None
        ctx.save_for_backward(weight)
        return F.conv2d(input, weight, bias, geometry.stride,
                        geometry.padding, geometry.dilation, geometry.groups)

    @staticmethod
    @once_differentiable
    def backward(ctx, grad_output: Tensor) -> Tuple[Optional[Tensor], ...]:
        weight, = ctx.saved_tensors
        grads = saved_weight_grads(
            ctx, grad_output, weight,
            lambda grad, weight: conv_input_grad(grad, ctx.input_shape,
                                                 weight, ctx.geometry),
            nan_weight_grad, conv_bias_grad)
        return grads + (None, )


def conv_bias_grad(grad_output: Tensor) -> Tensor:
    """Exact grad_bias ``(Cout,)``: grad_output summed over ``B, H, W``."""
    return grad_output.sum(dim=(0, 2, 3))


@dataclass(frozen=True)
class GradientFilterSpec:
    geometry: ConvGeometry
    input_shape: Tuple[int, ...]
    radius: int


class _GradientFilterConv2dFunction(Function):
    """Exact conv; saves the patch-summed input and kernel-summed weight
    (the exact weight when dilation >= radius)."""

    @staticmethod
    def forward(ctx, input: Tensor, weight: Tensor, bias: Optional[Tensor],
                spec: GradientFilterSpec, input_sum: Tensor,
                saved_weight: Tensor) -> Tensor:
        geometry = spec.geometry
        ctx.spec = spec
        ctx.has_bias = bias is not None
        ctx.weight_shape = tuple(weight.shape)
        ctx.save_for_backward(input_sum, saved_weight)
        return F.conv2d(input, weight, bias, geometry.stride,
                        geometry.padding, geometry.dilation, geometry.groups)

    @staticmethod
    @once_differentiable
    def backward(ctx, grad_output: Tensor) -> Tuple[Optional[Tensor], ...]:
        spec: GradientFilterSpec = ctx.spec
        geometry = spec.geometry
        input_sum, saved_weight = ctx.saved_tensors
        compute_dtype = gradient_dtype(grad_output.dtype)
        grad_mean = filter_grad_output(grad_output.to(compute_dtype),
                                       spec.radius)
        grad_input = grad_weight = grad_bias = None
        if ctx.needs_input_grad[0]:
            grad_input = filtered_input_grad(
                grad_mean, saved_weight.to(compute_dtype),
                spec.input_shape[-2:], geometry.stride, spec.radius,
                geometry.dilation, geometry.groups).to(grad_output.dtype)
        if ctx.needs_input_grad[1]:
            grad_weight = filtered_weight_grad(
                input_sum.to(compute_dtype), grad_mean, ctx.weight_shape,
                geometry.groups).to(saved_weight.dtype)
        if ctx.has_bias and ctx.needs_input_grad[2]:
            grad_bias = conv_bias_grad(grad_output)
        return grad_input, grad_weight, grad_bias, None, None, None


class _ShapeOnlyPad(Function):
    """``F.pad`` (reflect/replicate/circular) that saves no tensor.

    Autograd's own padding backward keeps the whole input alive; padding is
    linear, so its backward only needs the input shape: it is the
    vector-Jacobian product of ``F.pad`` at a zero input of that shape.
    """

    @staticmethod
    def forward(ctx, input: Tensor, pads: Tuple[int, ...],
                mode: str) -> Tensor:
        ctx.input_shape = tuple(input.shape)
        ctx.pads = pads
        ctx.mode = mode
        return F.pad(input, pads, mode=mode)

    @staticmethod
    @once_differentiable
    def backward(ctx, grad_output: Tensor) -> Tuple[Optional[Tensor], ...]:
        with torch.enable_grad():
            probe = grad_output.new_zeros(ctx.input_shape, requires_grad=True)
            padded = F.pad(probe, ctx.pads, mode=ctx.mode)
            grad_input, = torch.autograd.grad(padded, probe, grad_output)
        return grad_input, None, None


#: autograd node name -> index in ``saved_tensors`` of the weight-derived
#: tensor it saves (the other saved tensors are the compressed activation):
#: lets a memory meter tell the compressed activation from the weight; the
#: compressed linear's nodes come from :mod:`.linear_autograd`
COMPRESSED_BACKWARD_NODES: Dict[str, int] = {
    f'{_LowRankConv2dFunction.__name__}Backward': 0,
    f'{_GradientFilterConv2dFunction.__name__}Backward': 1,
    **LINEAR_BACKWARD_NODES,
}
