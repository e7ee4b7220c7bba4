"""Autograd Functions and weight-gradient maths of the compressed linear.

Layer 2 under :class:`~.linear.CompressedLinear`. A linear input
``(..., C)`` (2 to 4 dims) is decomposed as the 4-D tensor of its own
memory order, channel last (:func:`natural_view`, a view, never a copy):
``(M, C) -> (M, 1, 1, C)``, ``(D0, D1, C) -> (D0, D1, 1, C)``, ``(B, H, W,
C)`` as is. The Functions compute the exact ``F.linear`` in forward and save
only what their backward needs:

* :class:`_LowRankLinearFunction`: the weight and the HOSVD/SVD/ASI factors
  of that 4-D view; grad_weight from the factors
  (:func:`tucker_linear_weight_grad`, :func:`svd_linear_weight_grad`);
* :class:`_NonFiniteLinearFunction`: the weight only (a non-finite input
  skipped by ``non_finite='skip'``); grad_weight is NaN.

grad_input (``grad_output @ weight``) and grad_bias (the sum over all
leading dims) are exact.
"""
import itertools
from dataclasses import dataclass
from typing import Dict, Optional, Sequence, Tuple

import torch
import torch.nn.functional as F
from torch import Tensor
from torch.autograd import Function
from torch.autograd.function import once_differentiable

from .backward import nan_weight_grad, saved_weight_grads
from .decomposition import (SVDFactors, TuckerFactors, check_eps,
                            decomposition_dtype, leading_gram_eigenvectors,
                            truncated_svd)
from .eigen import single_threaded_lapack
from .methods import ASI
from .unfolding import (cheapest_mode_order, mode_chain_flops,
                        multi_mode_product)

#: dims of the inputs a compressed linear accepts: (M, C), (D0, D1, C),
#: (B, H, W, C)
LINEAR_INPUT_DIMS = (2, 3, 4)
#: mode order of the natural 4-D view ``(D0, D1, D2, C)`` that lists it
#: channel first, ``(D0, C, D1, D2)``, as a conv's ``(B, C, H, W)``
CHANNEL_FIRST = (0, 3, 1, 2)


def check_linear_input(input: Tensor, name: str = '') -> None:
    """ValueError (naming layer ``name``) unless ``input`` has 2 to 4 dims
    (:data:`LINEAR_INPUT_DIMS`)."""
    if input.dim() not in LINEAR_INPUT_DIMS:
        layer = f'CompressedLinear {name!r}: ' if name else ''
        raise ValueError(
            f'{layer}expected an input (M, C), (B, N, C) or (B, H, W, C) '
            f'with 2 to 4 dims, got shape {tuple(input.shape)} '
            f'({input.dim()} dims)')


def natural_view(tensor: Tensor) -> Tensor:
    """The 4-D view ``(D0, D1, D2, C)`` of a ``(..., C)`` tensor with 2 to 4
    dims, singleton modes inserted before the channels (no copy)."""
    if tensor.dim() == 2:
        return tensor[:, None, None, :]
    if tensor.dim() == 3:
        return tensor.unsqueeze(2)
    return tensor


def channel_first(values: Sequence[int]) -> Tuple[int, ...]:
    """Per-mode ``values`` of the natural view in the channel-first order
    ``(D0, C, D1, D2)`` (:data:`CHANNEL_FIRST`)."""
    return tuple(values[mode] for mode in CHANNEL_FIRST)


def row_truncated_svd(x: Tensor, eps: float) -> SVDFactors:
    """Truncated SVD of the ``(D0, D1*D2*C)`` reshape of the natural view
    ``x`` at ``eps``, through the smaller of its two Gram matrices.

    :func:`~.decomposition.truncated_svd` (the ``D0 x D0`` row Gram) when
    ``D0`` is at most the column count; otherwise (an ``(M, C)`` input with
    many rows) the column Gram gives the leading right singular vectors
    ``V``, and ``left`` is the orthonormalised ``X V`` (QR), ``right =
    left^T X``: the same truncation, rank at most ``min(D0, D1*D2*C)``
    (``eps == 1`` keeps that many, exactly). One host synchronisation.
    Raises FloatingPointError if ``x`` contains NaN/Inf.
    """
    rows = x.shape[0]
    columns = x.numel() // max(rows, 1)
    if rows <= columns:
        return truncated_svd(x, eps)
    eps = check_eps(eps)
    data = x.detach().to(decomposition_dtype(x.dtype))
    matrix = data.reshape(rows, columns)
    leading = leading_gram_eigenvectors(matrix.T @ matrix, eps)  # (cols, K)
    with single_threaded_lapack(data.device):
        left = torch.linalg.qr(matrix @ leading).Q.contiguous()
    return SVDFactors(left=left, right=left.T @ matrix,
                      shape=tuple(data.shape))


# ---------------------------------------------------------------------------
# weight-gradient maths
# ---------------------------------------------------------------------------
def tucker_split_flops(ranks: Sequence[int], shape: Sequence[int],
                       out_features: int,
                       projected: Sequence[int]) -> int:
    """FLOPs of :func:`tucker_linear_weight_grad` when grad_output is
    projected on the bases of the modes ``projected`` (a subset of 0..2) and
    the core expanded along the other non-channel modes."""
    grad_shape = tuple(shape[:3]) + (out_features, )
    to_rank = {mode: ranks[mode] for mode in projected}
    expanded = {
        mode: shape[mode]
        for mode in range(3) if mode not in projected
    }
    grad_flops = mode_chain_flops(grad_shape, to_rank,
                                  cheapest_mode_order(grad_shape, to_rank))
    core_flops = mode_chain_flops(ranks, expanded,
                                  cheapest_mode_order(ranks, expanded))
    middle = 1
    for mode in range(3):
        middle *= ranks[mode] if mode in projected else shape[mode]
    rank_c = ranks[3]
    return (grad_flops + core_flops + 2 * middle * out_features * rank_c +
            2 * out_features * rank_c * shape[3])


def cheapest_tucker_split(ranks: Sequence[int], shape: Sequence[int],
                          out_features: int) -> Tuple[int, ...]:
    """The modes to project grad_output on, with the fewest FLOPs
    (:func:`tucker_split_flops`)."""
    subsets = [subset for size in range(4)
               for subset in itertools.combinations(range(3), size)]
    return min(subsets,
               key=lambda subset: tucker_split_flops(ranks, shape,
                                                     out_features, subset))


def tucker_linear_weight_grad(factors: TuckerFactors,
                              grad_output: Tensor,
                              projected: Optional[Sequence[int]] = None
                              ) -> Tensor:
    """grad_weight ``(O, C)`` from the Tucker factors of the natural view
    ``(D0, D1, D2, C)`` of the input and grad_output's view ``(D0, D1, D2,
    O)``, in the factors' dtype, without rebuilding the input.

    ``sum_d g[d, o] x[d, c]``: grad_output is projected on the bases of some
    modes, the core expanded along the others (the split with the fewest
    FLOPs), both are contracted over those three modes into ``(O, K_C)``,
    then mapped to the channels by ``U_C``. ``projected`` forces the modes
    grad_output is projected on (a subset of 0..2; None: the cheapest).
    """
    core, *bases = factors.tensors()
    grad = grad_output.to(core.dtype)
    out_features = grad.shape[-1]
    if projected is None:
        projected = cheapest_tucker_split(factors.ranks, factors.shape,
                                          out_features)
    grad_part = multi_mode_product(grad,
                                   {mode: bases[mode] for mode in projected})
    core_part = multi_mode_product(core, {
        mode: bases[mode].T
        for mode in range(3) if mode not in projected
    })
    core_grad = grad_part.reshape(-1, out_features).T @ core_part.reshape(
        -1, core.shape[3])
    return core_grad @ bases[3].T


def svd_linear_weight_grad(factors: SVDFactors, grad_output: Tensor) -> Tensor:
    """grad_weight ``(O, C)`` from the SVD ``left @ right`` of the ``(D0,
    D1*D2*C)`` reshape of the input and grad_output's view ``(D0, D1, D2,
    O)``: grad_output contracted with ``left`` over the rows, then with
    ``right`` over the rank and the middle modes (no rebuilt input)."""
    grad = grad_output.to(factors.left.dtype)
    rows, out_features = grad.shape[0], grad.shape[-1]
    grad_batch = factors.left.T @ grad.reshape(rows, -1)  # (K, D1*D2*O)
    channels = factors.shape[-1]
    return grad_batch.reshape(-1, out_features).T @ factors.right.reshape(
        -1, channels)


# ---------------------------------------------------------------------------
# autograd Functions
# ---------------------------------------------------------------------------
@dataclass(frozen=True)
class LinearLowRankSpec:
    """Method and the natural 4-D view shape ``(D0, D1, D2, C)`` of the
    decomposed input."""
    method: str
    view_shape: Tuple[int, ...]


def linear_input_grad(grad_output: Tensor, weight: Tensor) -> Tensor:
    """Exact grad_input ``(..., C)``: ``grad_output @ weight``."""
    return grad_output @ weight


def linear_bias_grad(grad_output: Tensor) -> Tensor:
    """Exact grad_bias ``(O,)``: grad_output summed over its leading dims."""
    return grad_output.sum(dim=tuple(range(grad_output.dim() - 1)))


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
    if spec.method in ('hosvd', ASI):
        core, *bases = factor_tensors
        tucker = TuckerFactors(core=core, factors=tuple(bases))
        return tucker_linear_weight_grad(tucker, grad_view)
    left, right = factor_tensors
    svd = SVDFactors(left=left, right=right, shape=spec.view_shape)
    return svd_linear_weight_grad(svd, grad_view)


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
#: (merged into :data:`~.functions.COMPRESSED_BACKWARD_NODES`)
LINEAR_BACKWARD_NODES: Dict[str, int] = {
    f'{_LowRankLinearFunction.__name__}Backward': 0,
}
