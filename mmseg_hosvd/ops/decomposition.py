"""Truncated HOSVD (Tucker) and truncated SVD of a 4-D activation.

Pure PyTorch math, no mmengine/mmseg imports. Conventions:

* An activation ``x`` has shape ``(B, C, H, W)``; its four modes are batch,
  channel, height and width.
* Rank rule (the paper's): per mode, the smallest ``K`` whose cumulative sum
  of squared singular values of the (uncentred) mode unfolding reaches
  ``eps`` of the total. ``eps == 1`` always keeps the full mode size.
* Singular vectors come from the Gram matrix of each unfolding through
  :func:`torch.linalg.eigh`, never from a full SVD of the unfolding.
* Decompositions run in float32, or float64 for float64 inputs.
* The ranks and a finiteness flag reach the host through a single
  ``tolist()`` per decomposition: one host-device synchronisation (besides
  whatever :func:`torch.linalg.eigh` does internally to check its result).
* An input with NaN/Inf raises :class:`FloatingPointError`.

Element counts are numbers of tensor elements; byte counts are bytes.
Gram matrices and mode products are in :mod:`.unfolding`, the
eigensolvers in :mod:`.eigen`.
"""
import math
import numbers
from dataclasses import dataclass
from typing import List, Sequence, Tuple

import torch
from torch import Tensor

from .eigen import (eigh_descending, single_threaded_lapack, symmetric_eigh,
                    symmetric_eigvalsh)
from .unfolding import (dual_mode_gram, float64_mode_gram, mode_gram,
                        multi_mode_product, uses_dual_gram)

NUM_MODES = 4
NON_FINITE_MESSAGE = ('input contains NaN/Inf (its Gram matrices are not '
                      'finite; finite values whose squares overflow the '
                      'decomposition dtype are reported the same way)')


def check_eps(eps: float) -> float:
    """Return ``eps`` as a float; ValueError unless ``0 < eps <= 1``.

    Booleans, non-real values and NaN are rejected.
    """
    if isinstance(eps, bool) or not isinstance(eps, numbers.Real):
        raise ValueError(f'eps must be a real number in (0, 1], got {eps!r} '
                         f'of type {type(eps).__name__}')
    value = float(eps)
    if not 0.0 < value <= 1.0:  # also False for NaN
        raise ValueError(f'eps must be in (0, 1], got eps={eps!r}')
    return value


def decomposition_dtype(dtype: torch.dtype) -> torch.dtype:
    """float64 for float64 inputs, float32 for every other floating dtype."""
    if not dtype.is_floating_point:
        raise TypeError(f'expected a floating-point tensor, got {dtype}')
    return torch.float64 if dtype == torch.float64 else torch.float32


def explained_variance_rank(eigenvalues_desc: Tensor, eps: float) -> Tensor:
    """Smallest ``K`` with ``cumsum(sigma^2)[K - 1] >= eps * total``.

    Args:
        eigenvalues_desc: squared singular values in descending order,
            shape ``(..., n)``; small negative values from rounding are
            treated as zero.
        eps: explained-energy fraction in (0, 1].

    Returns:
        Integer (int64) tensor of shape ``(...)`` on the same device, in
        ``[1, n]``, computed without a host synchronisation. ``eps == 1``
        gives ``n``; an all-zero spectrum gives 1.
    """
    eps = check_eps(eps)
    n = eigenvalues_desc.shape[-1]
    if eps == 1.0:
        return torch.full(eigenvalues_desc.shape[:-1], n, dtype=torch.long,
                          device=eigenvalues_desc.device)
    energy = eigenvalues_desc.clamp(min=0).cumsum(dim=-1)
    total = energy[..., -1:]
    num_below = (energy < eps * total).sum(dim=-1)
    return (num_below + 1).clamp(max=n)


def hosvd_paper_elements(shape: Sequence[int], ranks: Sequence[int]) -> int:
    """Paper's element count ``K1*K2*K3*K4 + B*K1 + C*K2 + H*K3 + W*K4``."""
    _check_pairs(shape, ranks)
    return math.prod(ranks) + sum(n * k for n, k in zip(shape, ranks))


def svd_paper_elements(shape: Sequence[int], rank: int) -> int:
    """Paper's element count ``K * (B + C*H*W)`` of a rank-K SVD."""
    return int(rank) * (int(shape[0]) + math.prod(shape[1:]))


@dataclass(frozen=True)
class TuckerFactors:
    """Truncated Tucker decomposition ``x ~ core x1 U1 x2 U2 x3 U3 x4 U4``.

    Attributes:
        core: shape ``(K1, K2, K3, K4)``.
        factors: ``(U1, U2, U3, U4)``, ``U_i`` of shape ``(n_i, K_i)`` with
            orthonormal columns; each tensor owns compact storage.
    """
    core: Tensor
    factors: Tuple[Tensor, Tensor, Tensor, Tensor]

    @property
    def ranks(self) -> Tuple[int, ...]:
        """``(K1, K2, K3, K4)``."""
        return tuple(self.core.shape)

    @property
    def shape(self) -> Tuple[int, ...]:
        """Shape ``(B, C, H, W)`` of the decomposed tensor."""
        return tuple(factor.shape[0] for factor in self.factors)

    def tensors(self) -> Tuple[Tensor, ...]:
        """``(core, U1, U2, U3, U4)``."""
        return (self.core, *self.factors)

    def paper_elements(self) -> int:
        return hosvd_paper_elements(self.shape, self.ranks)

    def reconstruct(self) -> Tensor:
        """The approximation ``(B, C, H, W)``, in the factors' dtype."""
        return multi_mode_product(
            self.core, {mode: factor.T for mode, factor in
                        enumerate(self.factors)})


@dataclass(frozen=True)
class SVDFactors:
    """Truncated SVD of the ``(B, C*H*W)`` reshape: ``x ~ left @ right``.

    Attributes:
        left: shape ``(B, K)``, orthonormal columns.
        right: shape ``(K, C*H*W)``.
        shape: ``(B, C, H, W)`` of the decomposed tensor.
    """
    left: Tensor
    right: Tensor
    shape: Tuple[int, ...]

    @property
    def rank(self) -> int:
        return self.left.shape[1]

    def tensors(self) -> Tuple[Tensor, ...]:
        return (self.left, self.right)

    def paper_elements(self) -> int:
        return svd_paper_elements(self.shape, self.rank)

    def reconstruct(self) -> Tensor:
        """The approximation of shape ``(B, C, H, W)``."""
        return (self.left @ self.right).reshape(self.shape)


def hosvd(x: Tensor, eps: float) -> TuckerFactors:
    """Truncated HOSVD of a ``(B, C, H, W)`` tensor at energy fraction ``eps``.

    The input is detached; factors are float32 (float64 for float64 input).
    Raises FloatingPointError if ``x`` contains NaN/Inf.
    """
    eps = check_eps(eps)
    data = _as_decomposition_input(x)
    _, _, factors = truncated_mode_bases(data, eps)
    core = multi_mode_product(data, dict(enumerate(factors)))
    return TuckerFactors(core=core, factors=factors)


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


def truncated_mode_bases(data: Tensor, eps: float
                         ) -> Tuple[List[Tensor], List[int],
                                    Tuple[Tensor, ...]]:
    """Mode spectra, ranks and leading left singular vectors of ``data``.

    Per mode: the Gram (or the dual Gram, :func:`uses_dual_gram`) and its
    eigenvalues; the eps rule gives the rank ``K``. Small Grams give their
    vectors by a full ``eigh``. Large ones (:data:`PARTIAL_EIGH_MIN`) only
    need ``K`` leading eigenvectors: ``eigvalsh`` gives the exact spectrum,
    from which the decay ratio ``rho = lambda_p / lambda_K`` of a block of
    ``p = 2K + 8`` vectors fixes the number of subspace iterations that
    bring them within :data:`PARTIAL_TOLERANCE` of the eigenvectors
    (``rho^iters <= tol / sqrt(n)`` from a seeded random start), followed by
    a Rayleigh-Ritz step; where that would need more than
    :data:`PARTIAL_MAX_ITERS` iterations, or ``iters * p > n`` (then a full
    ``eigh`` costs fewer FLOPs), a full ``eigh``. The ranks, the
    finiteness flag, those iteration counts and the refinement flags reach
    the host in one ``tolist()``.

    Accuracy: squaring the unfolding squares its condition number, so at
    ``eps >= REFINE_EPS`` a float32 mode with ``lambda_K < REFINE_RATIO *
    lambda_1`` (:func:`needs_float64_gram`) takes its vectors from a
    float64 Gram (:func:`~.unfolding.float64_mode_gram`, no float64 copy of
    the input) and a float64 ``eigh``: as accurate as an SVD of the
    unfolding. Lower eps (where the truncation error dwarfs float32
    rounding) never pay for it.

    Args:
        data: ``(B, C, H, W)`` float32/float64, detached.

    Returns:
        Eigenvalues (descending; a dual Gram's list is shorter, the missing
        ones are zero), ranks ``(K1..K4)`` and bases ``(U1..U4)``.

    Raises:
        FloatingPointError: non-finite Grams.
    """
    duals = [uses_dual_gram(data.shape, mode, eps)
             for mode in range(NUM_MODES)]
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
        _subspace_iterations(v, rank, tolerance) if is_partial else
        torch.zeros((), dtype=torch.long, device=data.device)
        for v, rank, is_partial in zip(values, ranks, partial)
    ]
    refine = [needs_float64_gram(v, rank, eps, data.dtype).long()
              for v, rank in zip(values, ranks)]
    *synced, is_finite = torch.stack(
        ranks + plans + refine + [finite.long()]).tolist()  # the one sync
    if not is_finite:
        raise FloatingPointError(NON_FINITE_MESSAGE)
    ranks = synced[:NUM_MODES]
    plans = synced[NUM_MODES:2 * NUM_MODES]
    refine = synced[2 * NUM_MODES:]
    bases = []
    for mode, (gram, rank, plan, ascending, dual, precise) in enumerate(
            zip(grams, ranks, plans, vectors, duals, refine)):
        if precise:
            gram64 = float64_mode_gram(data, mode, dual)
            leading = symmetric_eigh(gram64[None])[1][0][:, -rank:].flip(
                -1).to(data.dtype)
        elif ascending is not None:
            leading = ascending[:, -rank:].flip(-1)
        elif 0 < plan <= PARTIAL_MAX_ITERS:
            leading = _leading_eigenvectors(gram, rank, plan)
        else:
            leading = symmetric_eigh(gram[None])[1][0][:, -rank:].flip(-1)
        bases.append(_mode_basis(data, mode, leading, dual))
    return values, ranks, tuple(bases)


def needs_float64_gram(values_desc: Tensor, rank: Tensor, eps: float,
                       dtype: torch.dtype) -> Tensor:
    """0-d bool tensor (no host sync): whether a mode of eigenvalues
    ``values_desc`` and rank ``rank`` takes its vectors from a float64 Gram
    (see :func:`truncated_mode_bases`: ``eps >= REFINE_EPS``, float32 data
    and ``lambda_K < REFINE_RATIO * lambda_1``)."""
    if dtype == torch.float64 or eps < REFINE_EPS:
        return torch.zeros((), dtype=torch.bool, device=values_desc.device)
    return values_desc[rank - 1] < REFINE_RATIO * values_desc[0]


def _block_size(n: int, rank: int) -> int:
    return min(n, 2 * rank + 8)


def _subspace_iterations(values_desc: Tensor, rank: Tensor,
                         tolerance: float) -> Tensor:
    """Iterations (0-dim long tensor, no sync) for a block of
    :func:`_block_size` vectors to converge on the ``rank`` leading
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


def _leading_eigenvectors(gram: Tensor, rank: int, iters: int) -> Tensor:
    """``rank`` leading eigenvectors ``(n, rank)`` (descending) of a PSD
    ``gram``: ``iters`` subspace iterations on a block of
    :func:`_block_size` columns from a seeded random start (its own
    generator), then Rayleigh-Ritz."""
    n = gram.shape[0]
    block = _block_size(n, rank)
    generator = torch.Generator().manual_seed(0)
    start = torch.randn(n, block, generator=generator, dtype=gram.dtype)
    with single_threaded_lapack(gram.device):
        basis = torch.linalg.qr(start.to(gram.device)).Q
        for _ in range(iters):
            basis = torch.linalg.qr(gram @ basis).Q
    projected = basis.T @ (gram @ basis)
    _, rotation = symmetric_eigh((projected + projected.T)[None] / 2)
    return basis @ rotation[0][:, -rank:].flip(-1)


def _mode_basis(data: Tensor, mode: int, leading: Tensor,
                dual: bool) -> Tensor:
    """Leading eigenvectors of the mode Gram ``(n, K)`` in their own
    storage; for a dual Gram, ``X v_i`` orthonormalised (QR: those columns
    are orthogonal with norms ``sigma_i``)."""
    if not dual:
        return leading.contiguous()
    unfolding = data.movedim(mode, 0).reshape(data.shape[mode], -1)
    product = unfolding @ leading
    with single_threaded_lapack(data.device):
        return torch.linalg.qr(product).Q.contiguous()


def truncated_svd(x: Tensor, eps: float) -> SVDFactors:
    """Truncated SVD of the ``(B, C*H*W)`` reshape of ``x`` at ``eps``.

    Left singular vectors come from the ``B x B`` Gram matrix; ``right`` is
    the projection ``left^T @ x_2d`` (singular values folded in). Raises
    FloatingPointError if ``x`` contains NaN/Inf.
    """
    eps = check_eps(eps)
    data = _as_decomposition_input(x)
    matrix = data.reshape(data.shape[0], -1)
    left = leading_gram_eigenvectors(matrix @ matrix.T, eps)
    right = left.T @ matrix
    return SVDFactors(left=left, right=right, shape=tuple(data.shape))


def leading_gram_eigenvectors(gram: Tensor, eps: float) -> Tensor:
    """Leading eigenvectors ``(n, K)`` of a symmetric Gram ``(n, n)``,
    largest first, ``K`` its explained-variance rank at ``eps``; one host
    synchronisation. Raises FloatingPointError if ``gram`` has NaN/Inf."""
    finite = torch.isfinite(gram).all()
    (eigenvalues, ), (eigenvectors, ) = eigh_descending(
        [torch.nan_to_num(gram, nan=0.0, posinf=0.0, neginf=0.0)])
    rank, is_finite = torch.stack(
        [explained_variance_rank(eigenvalues, eps), finite.long()]).tolist()
    if not is_finite:
        raise FloatingPointError(NON_FINITE_MESSAGE)
    return _leading_columns(eigenvectors, rank)


def _as_decomposition_input(x: Tensor) -> Tensor:
    if x.dim() != NUM_MODES:
        raise ValueError(f'expected a 4-D (B, C, H, W) tensor, got shape '
                         f'{tuple(x.shape)}')
    return x.detach().to(decomposition_dtype(x.dtype))


def _leading_columns(eigenvectors_ascending: Tensor, rank: int) -> Tensor:
    """The ``rank`` leading eigenvectors ``(n, rank)`` in their own storage."""
    return eigenvectors_ascending[:, -rank:].flip(-1).contiguous()


def _check_pairs(shape: Sequence[int], ranks: Sequence[int]) -> None:
    if len(shape) != len(ranks):
        raise ValueError(f'shape {tuple(shape)} and ranks {tuple(ranks)} '
                         'have different lengths')
