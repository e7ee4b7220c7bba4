"""Autograd Functions of the compressed linear.

Layer 2 under :class:`~.linear.CompressedLinear`. The Functions compute the
exact ``F.linear`` in forward and save only what their backward needs:

* :class:`_LowRankLinearFunction`: the weight and what the decomposition
  kept of the input's natural 4-D view (:func:`~.linear_gradients.
  natural_view`): Tucker or SVD factors, or the whole input where no
  factorisation is smaller; grad_weight from them (:mod:`.linear_gradients`);
* :class:`_NonFiniteLinearFunction`: the weight only (a non-finite input
  skipped by ``non_finite='skip'``); grad_weight is NaN.

grad_input (``grad_output @ weight``) and grad_bias (the sum over all
leading dims) are exact. Half-precision saved tensors are used in float32.
"""
from dataclasses import dataclass
from typing import Dict, Optional, Sequence, Tuple, Type

import torch.nn.functional as F
from torch import Tensor
from torch.autograd import Function
from torch.autograd.function import once_differentiable

from ..decomposition import SVDFactors, TuckerFactors
from .linear_gradients import (dense_linear_weight_grad, linear_bias_grad,
                               linear_input_grad, natural_view,
                               svd_linear_weight_grad,
                               tucker_linear_weight_grad)
from .saved_weight_grads import nan_weight_grad, saved_weight_grads, upcast


@dataclass(frozen=True)
class LinearLowRankSpec:
    """The type of the saved factors and the natural 4-D view shape ``(D0,
    D1, D2, C)`` of the decomposed input."""
    factors_type: Type
    view_shape: Tuple[int, ...]


class _LowRankLinearFunction(Function):
    """Exact linear; saves the weight and HOSVD/SVD/ASI factors of the
    input's natural 4-D view."""

    @staticmethod
    def forward(ctx, input: Tensor, weight: Tensor, bias: Optional[Tensor],
                spec: LinearLowRankSpec, *factor_tensors: Tensor) -> Tensor:
        ctx.spec = spec
        ctx.has_bias = bias is not None
        ctx.save_for_backward(weight, *factor_tensors)
        return F.linear(input, weight, bias)

    @staticmethod
    @once_differentiable
    def backward(ctx, grad_output: Tensor) -> Tuple[Optional[Tensor], ...]:
        spec: LinearLowRankSpec = ctx.spec
        weight, *factor_tensors = ctx.saved_tensors
        grads = saved_weight_grads(
            ctx, grad_output, weight, linear_input_grad,
            lambda grad, weight: _low_rank_linear_weight_grad(
                spec, factor_tensors, natural_view(grad)), linear_bias_grad)
        return grads + (None, ) * (1 + len(factor_tensors))


def _low_rank_linear_weight_grad(spec: LinearLowRankSpec,
                                 factor_tensors: Sequence[Tensor],
                                 grad_view: Tensor) -> Tensor:
    factors = spec.factors_type.from_tensors(upcast(factor_tensors),
                                             spec.view_shape)
    if isinstance(factors, TuckerFactors):
        return tucker_linear_weight_grad(factors, grad_view)
    if isinstance(factors, SVDFactors):
        return svd_linear_weight_grad(factors, grad_view)
    return dense_linear_weight_grad(factors.tensor, grad_view)


class _NonFiniteLinearFunction(Function):
    """Exact linear of a non-finite input that keeps nothing of it:
    grad_input and grad_bias are exact, grad_weight is NaN."""

    @staticmethod
    def forward(ctx, input: Tensor, weight: Tensor,
                bias: Optional[Tensor]) -> Tensor:
        ctx.has_bias = bias is not None
        ctx.save_for_backward(weight)
        return F.linear(input, weight, bias)

    @staticmethod
    @once_differentiable
    def backward(ctx, grad_output: Tensor) -> Tuple[Optional[Tensor], ...]:
        weight, = ctx.saved_tensors
        return saved_weight_grads(ctx, grad_output, weight, linear_input_grad,
                                  nan_weight_grad, linear_bias_grad)


#: autograd node name -> index in ``saved_tensors`` of the saved weight
#: (merged into :data:`~.conv_autograd.COMPRESSED_BACKWARD_NODES`)
LINEAR_BACKWARD_NODES: Dict[str, int] = {
    f'{_LowRankLinearFunction.__name__}Backward': 0,
}
