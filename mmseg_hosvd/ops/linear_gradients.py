"""Linear-layer gradient maths from compressed activations, and the
natural 4-D view of a linear input.

Layer 2 under :mod:`.linear_autograd`. A linear input ``(..., C)`` (2 to 4
dims) is decomposed as the 4-D tensor of its own memory order, channel last
(:func:`natural_view`, a view, never a copy): ``(M, C) -> (M, 1, 1, C)``,
``(D0, D1, C) -> (D0, D1, 1, C)``, ``(B, H, W, C)`` as is. grad_weight
``(O, C)`` comes from Tucker or SVD factors of that view without
rebuilding the input (:func:`tucker_linear_weight_grad`,
:func:`svd_linear_weight_grad`), or from the kept input itself.
"""
import itertools
from typing import Optional, Sequence, Tuple

from torch import Tensor

from ..decomposition import SVDFactors, TuckerFactors
from ..decomposition.unfolding import (cheapest_mode_order, mode_chain_flops,
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




def dense_linear_weight_grad(input_view: Tensor, grad_output: Tensor) -> Tensor:
    """Exact grad_weight ``(O, C)`` from the natural view ``(D0, D1, D2,
    C)`` of the input and grad_output's view ``(D0, D1, D2, O)``."""
    grad = grad_output.to(input_view.dtype)
    return grad.reshape(-1, grad.shape[-1]).T @ input_view.reshape(
        -1, input_view.shape[-1])


def linear_input_grad(grad_output: Tensor, weight: Tensor) -> Tensor:
    """Exact grad_input ``(..., C)``: ``grad_output @ weight``."""
    return grad_output @ weight


def linear_bias_grad(grad_output: Tensor) -> Tensor:
    """Exact grad_bias ``(O,)``: grad_output summed over its leading dims."""
    return grad_output.sum(dim=tuple(range(grad_output.dim() - 1)))
