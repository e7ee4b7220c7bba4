"""Truncated SVD of the ``(B, C*H*W)`` reshape of a 4-D activation.

Pure PyTorch math (layer 1), with the conventions of :mod:`.tucker`: the
rank rule of :mod:`.rank_rule`, singular vectors from the smaller of the
two Gram matrices of the reshape (the ``B x B`` row Gram, or the column
Gram when there are more rows than columns, e.g. an ``(M, C)`` linear
input), one host synchronisation, and at ``eps >= REFINE_EPS`` the same
float64 refinement of ill-conditioned float32 spectra as the HOSVD.
"""
from typing import Optional

import torch
from torch import Tensor

from .eigen import eigh_descending, symmetric_eigh
from .factors import SVDFactors, svd_paper_elements
from .tucker import mode_basis, needs_float64_gram
from .rank_rule import (NON_FINITE_MESSAGE, as_decomposition_input,
                        check_eps, explained_variance_rank)
from .unfolding import (dual_mode_gram, float64_mode_gram, mode_gram,
                        uses_dual_gram)


def truncated_svd(x: Tensor, eps: float,
                  max_elements: Optional[int] = None) -> Optional[SVDFactors]:
    """Truncated SVD of the ``(B, C*H*W)`` reshape of ``x`` at ``eps``.

    ``left`` ``(B, K)`` has the leading left singular vectors (from the row
    Gram, or ``X V`` orthonormalised by QR when the column Gram is the
    smaller one); ``right`` ``(K, C*H*W)`` is the projection ``left^T @
    x_2d`` (singular values folded in). ``K <= min(B, C*H*W)``, so ``eps ==
    1`` is exact. Factors are float32 (float64 for float64 input).

    ``max_elements``: return None, before computing the vectors' products,
    when the factors would take more elements than that.
    Raises FloatingPointError if ``x`` contains NaN/Inf.
    """
    eps = check_eps(eps)
    data = as_decomposition_input(x)
    dual = uses_dual_gram(data.shape, 0)
    gram = dual_mode_gram(data, 0) if dual else mode_gram(data, 0)
    finite = torch.isfinite(gram).all()
    (values, ), (vectors, ) = eigh_descending(
        [torch.nan_to_num(gram, nan=0.0, posinf=0.0, neginf=0.0)])
    rank_tensor = explained_variance_rank(values, eps)
    refine = needs_float64_gram(values, rank_tensor, eps, data.dtype)
    rank, precise, is_finite = torch.stack(
        [rank_tensor, refine.long(), finite.long()]).tolist()  # the one sync
    if not is_finite:
        raise FloatingPointError(NON_FINITE_MESSAGE)
    if max_elements is not None and svd_paper_elements(
            data.shape, rank) > max_elements:
        return None
    if precise:
        gram64 = float64_mode_gram(data, 0, dual)
        vectors = symmetric_eigh(gram64[None])[1][0].to(data.dtype)
    left = mode_basis(data, 0, vectors[:, -rank:].flip(-1), dual)
    right = left.T @ data.reshape(data.shape[0], -1)
    return SVDFactors(left=left, right=right, shape=tuple(data.shape))
