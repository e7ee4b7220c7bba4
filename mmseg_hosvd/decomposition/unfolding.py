"""Mode unfoldings of a 4-D tensor: Gram matrices and mode products.

Pure torch (layer 1). Mode ``m`` of ``x`` ``(B, C, H, W)`` has size
``x.shape[m]``; its unfolding ``X_(m)`` is ``(n_m, numel / n_m)``. Nothing
here copies the whole input: unfoldings that need a copy are taken in
pieces of :data:`COPY_CHUNK_ELEMENTS` elements.
"""
import itertools
import math
from typing import Dict, Sequence, Tuple

import torch
from torch import Tensor

#: a mode of at least this size has its Gram's self-products split in two
#: row blocks: the Gram is symmetric, so 3 of its 4 blocks are computed
SYMMETRIC_BLOCK_MIN = 256
#: elements of each piece when an unfolding must be copied to be multiplied
COPY_CHUNK_ELEMENTS = 2**20


def mode_gram(x: Tensor, mode: int) -> Tensor:
    """Gram matrix ``X_(mode) @ X_(mode)^T`` of a mode unfolding, ``(n, n)``.

    No copy of ``x`` when the modes before ``mode`` are small or ``mode`` is
    the last one; otherwise (e.g. the height mode) the unfolding is copied
    in pieces of :data:`COPY_CHUNK_ELEMENTS` elements and their products
    accumulated, so no input-sized copy is ever made. Large modes (channels)
    compute three of the four blocks of the symmetric result.
    """
    n = x.shape[mode]
    outer = math.prod(x.shape[:mode])
    inner = math.prod(x.shape[mode + 1:])
    if inner == 1:
        return _symmetric_product(x.reshape(outer, n))
    slices = x.reshape(outer, n, inner)
    if outer <= inner:
        return _summed_self_products(slices)
    rows = max(1, COPY_CHUNK_ELEMENTS // (n * inner))
    gram = x.new_zeros(n, n)
    for chunk in slices.split(rows):
        piece = chunk.transpose(1, 2).reshape(-1, n)
        gram.addmm_(piece.T, piece)
    return gram


def _symmetric_product(unfolding_t: Tensor) -> Tensor:
    """``A^T A`` of ``unfolding_t`` ``(m, n)``; for ``n >=``
    :data:`SYMMETRIC_BLOCK_MIN` three of its four blocks are multiplied (on
    column views, no copy) and the fourth is the transpose of one."""
    n = unfolding_t.shape[1]
    if n < SYMMETRIC_BLOCK_MIN:
        return unfolding_t.T @ unfolding_t
    half = (n + 1) // 2
    left, right = unfolding_t[:, :half], unfolding_t[:, half:]
    gram = unfolding_t.new_empty(n, n)
    gram[:half, :half] = left.T @ left
    upper = left.T @ right
    gram[:half, half:] = upper
    gram[half:, :half] = upper.T
    gram[half:, half:] = right.T @ right
    return gram


def memory_mode_order(x: Tensor) -> Tuple[int, ...]:
    """The permutation ``order`` of ``x``'s dims by decreasing stride, such
    that ``x.permute(order)`` is contiguous (e.g. ``(0, 2, 3, 1)`` for a
    channels-last ``(B, C, H, W)`` tensor); the identity when ``x`` is
    contiguous or no permutation makes it so (then the unfoldings copy)."""
    identity = tuple(range(x.dim()))
    if x.is_contiguous():
        return identity
    order = tuple(sorted(identity, key=lambda d: (-x.stride(d), d)))
    return order if x.permute(order).is_contiguous() else identity


def _summed_self_products(slices: Tensor) -> Tensor:
    """``sum_o S_o @ S_o^T`` of ``slices`` ``(outer, n, inner)``."""
    n = slices.shape[1]
    if n < SYMMETRIC_BLOCK_MIN:
        return torch.bmm(slices, slices.transpose(1, 2)).sum(dim=0)
    half = (n + 1) // 2
    top, bottom = slices[:, :half], slices[:, half:]
    gram = slices.new_empty(n, n)
    gram[:half, :half] = torch.bmm(top, top.transpose(1, 2)).sum(dim=0)
    upper = torch.bmm(top, bottom.transpose(1, 2)).sum(dim=0)
    gram[:half, half:] = upper
    gram[half:, :half] = upper.T
    gram[half:, half:] = torch.bmm(bottom, bottom.transpose(1, 2)).sum(dim=0)
    return gram


def mode_product(tensor: Tensor, matrix: Tensor, mode: int) -> Tensor:
    """Contract ``tensor``'s ``mode`` (size n) with ``matrix`` ``(n, k)``.

    Returns a contiguous tensor whose ``mode`` has size ``k``
    (``tensor x_mode matrix^T`` in Kolda's notation).
    """
    shape = list(tensor.shape)
    n, k = matrix.shape
    outer = math.prod(shape[:mode])
    inner = math.prod(shape[mode + 1:])
    shape[mode] = k
    if inner == 1:
        return (tensor.reshape(outer, n) @ matrix).reshape(shape)
    result = torch.matmul(matrix.T, tensor.reshape(outer, n, inner))
    return result.reshape(shape)


def multi_mode_product(tensor: Tensor, matrices: Dict[int, Tensor]) -> Tensor:
    """Apply :func:`mode_product` for every ``mode: matrix`` item.

    The modes are contracted in the order with the fewest multiply-adds.
    """
    order = cheapest_mode_order(
        tensor.shape, {mode: m.shape[1] for mode, m in matrices.items()})
    for mode in order:
        tensor = mode_product(tensor, matrices[mode], mode)
    return tensor


def mode_chain_flops(shape: Sequence[int], new_sizes: Dict[int, int],
                     order: Sequence[int]) -> int:
    """FLOPs (2 per multiply-add) of successive mode products in ``order``."""
    current = list(shape)
    flops = 0
    for mode in order:
        flops += 2 * math.prod(current) * new_sizes[mode]
        current[mode] = new_sizes[mode]
    return flops


def cheapest_mode_order(shape: Sequence[int],
                        new_sizes: Dict[int, int]) -> Tuple[int, ...]:
    """Order of the modes in ``new_sizes`` that minimises the FLOPs."""
    return min(itertools.permutations(new_sizes),
               key=lambda order: mode_chain_flops(shape, new_sizes, order))


def dual_mode_gram(x: Tensor, mode: int) -> Tensor:
    """``X_(mode)^T @ X_(mode)`` ``(m, m)``, ``m = numel / n`` (one copy of
    the unfolding, which is small when this is used)."""
    unfolding = x.movedim(mode, 0).reshape(x.shape[mode], -1)
    return unfolding.T @ unfolding


def float64_mode_gram(x: Tensor, mode: int, dual: bool = False) -> Tensor:
    """:func:`mode_gram` (or :func:`dual_mode_gram` if ``dual``) of ``x``
    computed in float64, from float64 copies of pieces of about
    :data:`COPY_CHUNK_ELEMENTS` elements (never of the whole input).

    The Gram is a sum over the pieces of ``x`` along another mode (along
    ``mode`` itself for the dual Gram), whose unfoldings split the columns
    (rows) of the unfolding.
    """
    split = mode if dual else (1 if mode == 0 else 0)
    step = max(1, COPY_CHUNK_ELEMENTS * x.shape[split] // max(x.numel(), 1))
    gram = None
    for piece in x.split(step, dim=split):
        piece = piece.to(torch.float64)
        part = dual_mode_gram(piece, mode) if dual else mode_gram(piece, mode)
        gram = part if gram is None else gram.add_(part)
    return gram


def uses_dual_gram(shape: Sequence[int], mode: int) -> bool:
    """Whether mode ``mode`` is larger than the product of the others (e.g.
    2560 channels at 8x8 in UPerNet's PSP bottleneck, batch 8, or the rows
    of an ``(M, C)`` linear input): its unfolding's rank is at most that
    product, and its eigenvectors come from the smaller *dual* Gram ``X^T
    X`` (same non-zero eigenvalues), at every eps."""
    size = shape[mode]
    return math.prod(shape) < size * size
