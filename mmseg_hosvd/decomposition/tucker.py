"""Truncated HOSVD (Tucker) of a 4-D activation.

Pure PyTorch math (layer 1). Conventions:

* An activation ``x`` has shape ``(B, C, H, W)``; its four modes are batch,
  channel, height and width.
* Rank rule (the paper's, :mod:`.rank_rule`): per mode, the smallest ``K``
  whose cumulative sum of squared singular values of the (uncentred) mode
  unfolding reaches ``eps`` of the total. A mode's rank never exceeds the
  product of the other modes' sizes (the rank of its unfolding): a mode
  longer than that takes its basis from the smaller dual Gram, at every
  eps, so ``eps == 1`` keeps ``min(n, numel / n)`` columns, still exactly.
* Singular vectors come from the Gram matrix of each unfolding through
  :func:`torch.linalg.eigh`, never from a full SVD of the unfolding.
* Decompositions run in float32, or float64 for float64 inputs.
* The ranks and a finiteness flag reach the host through a single
  ``tolist()`` per decomposition: one host-device synchronisation (besides
  whatever :func:`torch.linalg.eigh` does internally to check its result).
* An input with NaN/Inf raises :class:`FloatingPointError`.
"""
import math
from dataclasses import dataclass
from typing import List, Optional, Sequence, Tuple

import torch
from torch import Tensor

from .eigen import eigh_descending, symmetric_eigh, symmetric_eigvalsh
from .factors import TuckerFactors, hosvd_paper_elements
from .rank_rule import (NON_FINITE_MESSAGE, NUM_MODES,
                        as_decomposition_input, check_eps,
                        explained_variance_rank)
from .unfolding import (dual_mode_gram, float64_mode_gram, memory_mode_order,
                        mode_gram, multi_mode_product, uses_dual_gram)

#: Grams at least this large get their leading eigenvectors by subspace
#: iteration on the Gram (their eigenvalues, hence the ranks, still come
#: exactly from ``eigvalsh``); smaller ones by a full ``eigh``
PARTIAL_EIGH_MIN = 512
#: target accuracy (sine of the largest principal angle) of those vectors,
#: float32; float64 inputs use 1e-12
PARTIAL_TOLERANCE = 1e-6
#: more iterations than this (slow spectral decay) -> full ``eigh`` instead
PARTIAL_MAX_ITERS = 60
#: eps from which a float32 mode whose kept spectrum spans a wide range
#: (:data:`REFINE_RATIO`) takes its vectors from a float64 Gram
REFINE_EPS = 0.99
#: ... a range of ``lambda_K < REFINE_RATIO * lambda_1``: a float32 Gram's
#: rounding (``~1e-7 lambda_1``) then perturbs the weakest kept vectors
#: ``sqrt(lambda_1 / lambda_K) / 2`` (> 5) times more than an SVD of the
#: unfolding would
REFINE_RATIO = 1e-2


def hosvd(x: Tensor, eps: float,
          max_elements: Optional[int] = None) -> Optional[TuckerFactors]:
    """Truncated HOSVD of a ``(B, C, H, W)`` tensor at energy fraction ``eps``.

    The input is detached; factors are float32 (float64 for float64 input).
    ``max_elements``: return None, before computing any basis, when the
    factors would take more elements than that (a caller that then keeps
    the input itself passes ``x.numel()``).
    Raises FloatingPointError if ``x`` contains NaN/Inf.
    """
    eps = check_eps(eps)
    data, order = in_memory_order(as_decomposition_input(x))
    spectra = mode_spectra(data, eps)
    if max_elements is not None and hosvd_paper_elements(
            data.shape, spectra.ranks) > max_elements:
        return None
    factors = spectra.bases(data)
    core = multi_mode_product(data, dict(enumerate(factors)))
    return TuckerFactors(core=core.permute(inverse_order(order)).contiguous(),
                         factors=in_mode_order(factors, order))


def in_memory_order(data: Tensor) -> Tuple[Tensor, Tuple[int, ...]]:
    """``data`` permuted to its memory order (:func:`~.unfolding.
    memory_mode_order`, a contiguous view: a channels-last ``(B, C, H, W)``
    becomes ``(B, H, W, C)``) and that order. The HOSVD is the same in any
    mode order, and its Grams and mode products then copy nothing."""
    order = memory_mode_order(data)
    return data.permute(order), order


def inverse_order(order: Sequence[int]) -> Tuple[int, ...]:
    """The permutation undoing ``order``."""
    inverse = [0] * len(order)
    for position, mode in enumerate(order):
        inverse[mode] = position
    return tuple(inverse)


def in_mode_order(per_position: Sequence, order: Sequence[int]) -> tuple:
    """Items listed for the modes ``order`` (of a permuted tensor), listed
    for the original modes ``0..3`` instead."""
    return tuple(per_position[position]
                 for position in inverse_order(order))


def truncated_mode_bases(data: Tensor, eps: float
                         ) -> Tuple[List[Tensor], List[int],
                                    Tuple[Tensor, ...]]:
    """Mode spectra, ranks and leading left singular vectors of ``data``
    ``(B, C, H, W)`` (float32/float64, detached): :func:`mode_spectra`
    then :meth:`ModeSpectra.bases`.

    Returns:
        Eigenvalues (descending; a dual Gram's list is shorter, the missing
        ones are zero), ranks ``(K1..K4)`` and bases ``(U1..U4)``.
    """
    permuted, order = in_memory_order(data)
    spectra = mode_spectra(permuted, eps)
    return (list(in_mode_order(spectra.values, order)),
            list(in_mode_order(spectra.ranks, order)),
            in_mode_order(spectra.bases(permuted), order))


@dataclass
class ModeSpectra:
    """Per mode of a decomposed tensor: its Gram (or dual Gram), eigenvalues
    (descending), rank and how its leading vectors are obtained.

    Attributes:
        grams, values, ranks: per mode.
        vectors: ascending eigenvectors of a fully solved Gram, else None.
        plans: subspace iterations for a partially solved Gram (0: none;
            more than :data:`PARTIAL_MAX_ITERS`: full ``eigh`` instead).
        duals: the Gram is the dual ``X^T X``.
        refine: vectors from a float64 Gram (:func:`needs_float64_gram`).
    """
    grams: List[Tensor]
    values: List[Tensor]
    ranks: List[int]
    vectors: List[Optional[Tensor]]
    plans: List[int]
    duals: List[bool]
    refine: List[int]

    def bases(self, data: Tensor) -> Tuple[Tensor, ...]:
        """The bases ``(U1..U4)``, ``U_m`` ``(n_m, K_m)`` orthonormal."""
        bases = []
        for mode in range(NUM_MODES):
            gram, rank = self.grams[mode], self.ranks[mode]
            plan, dual = self.plans[mode], self.duals[mode]
            if self.refine[mode]:
                gram64 = float64_mode_gram(data, mode, dual)
                leading = symmetric_eigh(gram64[None])[1][0][:, -rank:].flip(
                    -1).to(data.dtype)
            elif self.vectors[mode] is not None:
                leading = self.vectors[mode][:, -rank:].flip(-1)
            elif 0 < plan <= PARTIAL_MAX_ITERS:
                leading = leading_eigenvectors(gram, rank, plan)
            else:
                leading = symmetric_eigh(gram[None])[1][0][:, -rank:].flip(-1)
            bases.append(mode_basis(data, mode, leading, dual))
        return tuple(bases)


def mode_spectra(data: Tensor, eps: float) -> ModeSpectra:
    """Grams, spectra and ranks of the four modes of ``data``.

    Small Grams are solved by a full ``eigh``. Large ones
    (:data:`PARTIAL_EIGH_MIN`) only need ``K`` leading eigenvectors:
    ``eigvalsh`` gives the exact spectrum, from which the decay ratio ``rho
    = lambda_p / lambda_K`` of a block of ``p = 2K + 8`` vectors fixes the
    number of subspace iterations that bring them within
    :data:`PARTIAL_TOLERANCE` (``rho^iters <= tol / sqrt(n)``), followed by
    a Rayleigh-Ritz step; a full ``eigh`` where that would need more than
    :data:`PARTIAL_MAX_ITERS` iterations or ``iters * p > n``. The ranks,
    the finiteness flag, the iteration counts and the refinement flags
    reach the host in one ``tolist()``.

    Accuracy: squaring the unfolding squares its condition number, so at
    ``eps >= REFINE_EPS`` a float32 mode with ``lambda_K < REFINE_RATIO *
    lambda_1`` takes its vectors from a float64 Gram
    (:func:`~.unfolding.float64_mode_gram`, no float64 copy of the input)
    and a float64 ``eigh``: as accurate as an SVD of the unfolding.

    Raises:
        FloatingPointError: non-finite Grams.
    """
    duals = [uses_dual_gram(data.shape, mode) for mode in range(NUM_MODES)]
    grams = [dual_mode_gram(data, mode) if dual else mode_gram(data, mode)
             for mode, dual in enumerate(duals)]
    finite = torch.stack([torch.isfinite(g).all() for g in grams]).all()
    grams = [torch.nan_to_num(g, nan=0.0, posinf=0.0, neginf=0.0)
             for g in grams]
    partial = [g.shape[0] >= PARTIAL_EIGH_MIN for g in grams]
    eigenvalues, eigenvectors = eigh_descending(
        [g for g, p in zip(grams, partial) if not p])
    values_iter, vectors_iter = iter(eigenvalues), iter(eigenvectors)
    values, vectors = [], []
    for gram, is_partial in zip(grams, partial):
        if is_partial:
            values.append(symmetric_eigvalsh(gram).flip(-1))
            vectors.append(None)
        else:
            values.append(next(values_iter))
            vectors.append(next(vectors_iter))
    ranks = [explained_variance_rank(v, eps) for v in values]
    tolerance = PARTIAL_TOLERANCE if data.dtype != torch.float64 else 1e-12
    plans = [
        subspace_iterations(v, rank, tolerance) if is_partial else
        torch.zeros((), dtype=torch.long, device=data.device)
        for v, rank, is_partial in zip(values, ranks, partial)
    ]
    refine = [needs_float64_gram(v, rank, eps, data.dtype).long()
              for v, rank in zip(values, ranks)]
    *synced, is_finite = torch.stack(
        ranks + plans + refine + [finite.long()]).tolist()  # the one sync
    if not is_finite:
        raise FloatingPointError(NON_FINITE_MESSAGE)
    return ModeSpectra(grams, values, synced[:NUM_MODES], vectors,
                       synced[NUM_MODES:2 * NUM_MODES], duals,
                       synced[2 * NUM_MODES:])


def needs_float64_gram(values_desc: Tensor, rank: Tensor, eps: float,
                       dtype: torch.dtype) -> Tensor:
    """0-d bool tensor (no host sync): whether a mode of eigenvalues
    ``values_desc`` and rank ``rank`` takes its vectors from a float64 Gram
    (``eps >= REFINE_EPS``, float32 data and ``lambda_K < REFINE_RATIO *
    lambda_1``). Used by the HOSVD and the SVDs alike."""
    if dtype == torch.float64 or eps < REFINE_EPS:
        return torch.zeros((), dtype=torch.bool, device=values_desc.device)
    return values_desc[rank - 1] < REFINE_RATIO * values_desc[0]


def block_size(n: int, rank: int) -> int:
    """Columns of the subspace-iteration block for ``rank`` vectors."""
    return min(n, 2 * rank + 8)


def subspace_iterations(values_desc: Tensor, rank: Tensor,
                        tolerance: float) -> Tensor:
    """Iterations (0-dim long tensor, no sync) for a block of
    :func:`block_size` vectors to converge on the ``rank`` leading
    eigenvectors; ``PARTIAL_MAX_ITERS + 1`` when too slow."""
    n = values_desc.shape[-1]
    block = torch.clamp(2 * rank + 8, max=n)
    values = values_desc.clamp(min=0).to(torch.float64)
    kth = values[rank - 1]
    beyond = torch.where(block < n, values[torch.clamp(block, max=n - 1)],
                         torch.zeros_like(kth))
    ratio = torch.where(kth > 0, beyond / kth.clamp(min=1e-300),
                        torch.zeros_like(kth))
    needed = math.log(tolerance / math.sqrt(n))
    iters = torch.ceil(needed / torch.log(ratio.clamp(min=1e-30)))
    iters = iters.clamp(min=2)
    # a full eigh (~n^3) is cheaper than iters * 2 n^2 block FLOPs here
    too_slow = (ratio >= 1.0) | (iters * block > n)
    iters = torch.where(too_slow, torch.full_like(iters,
                                                  PARTIAL_MAX_ITERS + 1),
                        iters)
    return iters.clamp(max=PARTIAL_MAX_ITERS + 1).long()


def leading_eigenvectors(gram: Tensor, rank: int, iters: int) -> Tensor:
    """``rank`` leading eigenvectors ``(n, rank)`` (descending) of a PSD
    ``gram``: ``iters`` subspace iterations on a block of
    :func:`block_size` columns from a seeded random start (its own
    generator), then Rayleigh-Ritz."""
    n = gram.shape[0]
    block = block_size(n, rank)
    generator = torch.Generator().manual_seed(0)
    start = torch.randn(n, block, generator=generator, dtype=gram.dtype)
    basis = torch.linalg.qr(start.to(gram.device)).Q
    for _ in range(iters):
        basis = torch.linalg.qr(gram @ basis).Q
    projected = basis.T @ (gram @ basis)
    _, rotation = symmetric_eigh((projected + projected.T)[None] / 2)
    return basis @ rotation[0][:, -rank:].flip(-1)


def mode_basis(data: Tensor, mode: int, leading: Tensor,
               dual: bool) -> Tensor:
    """Leading eigenvectors of the mode Gram ``(n, K)`` in their own
    storage; for a dual Gram, ``X v_i`` orthonormalised (QR: those columns
    are orthogonal with norms ``sigma_i``; with all ``v_i`` of the dual
    they span the unfolding's columns, so nothing is lost at eps 1)."""
    if not dual:
        return leading.contiguous()
    unfolding = data.movedim(mode, 0).reshape(data.shape[mode], -1)
    return torch.linalg.qr(unfolding @ leading).Q.contiguous()
