"""The backward shared by the autograd Functions that save the weight.

Layer 2 under :mod:`.conv_autograd` and :mod:`.linear_autograd`: a Function
whose forward takes ``(input, weight, bias, ...)``, sets ``ctx.has_bias``
and saves the weight (instead of the input) computes its three gradients
with :func:`saved_weight_grads`; grad_input and grad_bias are exact,
grad_weight is whatever its ``weight_grad`` makes of what was saved.
"""
from typing import Callable, Optional, Tuple

import torch
from torch import Tensor

#: ``(grad_input, grad_weight, grad_bias)``, None where not needed
Grads = Tuple[Optional[Tensor], Optional[Tensor], Optional[Tensor]]


def saved_weight_grads(ctx, grad_output: Tensor, weight: Tensor,
                       input_grad: Callable[[Tensor, Tensor], Tensor],
                       weight_grad: Callable[[Tensor, Tensor], Tensor],
                       bias_grad: Callable[[Tensor], Tensor]) -> Grads:
    """The gradients ``ctx.needs_input_grad`` asks for (grad_bias only with
    ``ctx.has_bias``), in this order: ``input_grad(grad_output, weight)``,
    ``weight_grad(grad_output, weight)`` in ``weight``'s dtype and strides,
    ``bias_grad(grad_output)``."""
    grad_input = grad_weight = grad_bias = None
    if ctx.needs_input_grad[0]:
        grad_input = input_grad(grad_output, weight)
    if ctx.needs_input_grad[1]:
        grad_weight = weight_grad(grad_output, weight).to(weight.dtype)
        if grad_weight.stride() != weight.stride():
            # the weight's layout, as DDP's gradient buckets expect
            grad_weight = torch.empty_like(weight).copy_(grad_weight)
    if ctx.has_bias and ctx.needs_input_grad[2]:
        grad_bias = bias_grad(grad_output)
    return grad_input, grad_weight, grad_bias


def nan_weight_grad(grad_output: Tensor, weight: Tensor) -> Tensor:
    """grad_weight of a non-finite input that was not kept: NaN, the
    weight's shape and dtype (an optimizer guard then skips the step)."""
    return torch.full_like(weight, float('nan'))


def gradient_dtype(dtype: torch.dtype) -> torch.dtype:
    """The dtype gradients are computed in from tensors of ``dtype``:
    float32 for half types (accuracy), otherwise ``dtype``."""
    return torch.float32 if dtype in (torch.float16,
                                      torch.bfloat16) else dtype


def upcast(tensors):
    """``tensors`` in :func:`gradient_dtype` (float32 for half types)."""
    return [tensor.to(gradient_dtype(tensor.dtype)) for tensor in tensors]
