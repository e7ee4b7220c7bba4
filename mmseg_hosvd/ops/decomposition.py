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
"""
import contextlib
import itertools
import math
import numbers
from dataclasses import dataclass
from typing import Dict, List, Sequence, Tuple

import torch
from torch import Tensor

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
    finiteness flag and those iteration counts reach the host in one
    ``tolist()``.

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
    eigenvalues, eigenvectors = _eigh_descending(
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
    *synced, is_finite = torch.stack(
        ranks + plans + [finite.long()]).tolist()  # the one host sync
    if not is_finite:
        raise FloatingPointError(NON_FINITE_MESSAGE)
    ranks, plans = synced[:NUM_MODES], synced[NUM_MODES:]
    bases = []
    for mode, (gram, rank, plan, ascending, dual) in enumerate(
            zip(grams, ranks, plans, vectors, duals)):
        if ascending is not None:
            leading = ascending[:, -rank:].flip(-1)
        elif 0 < plan <= PARTIAL_MAX_ITERS:
            leading = _leading_eigenvectors(gram, rank, plan)
        else:
            leading = symmetric_eigh(gram[None])[1][0][:, -rank:].flip(-1)
        bases.append(_mode_basis(data, mode, leading, dual))
    return values, ranks, tuple(bases)


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


def symmetric_eigvalsh(gram: Tensor) -> Tensor:
    """Eigenvalues (ascending) of a PSD ``gram``, with the fallbacks of
    :func:`symmetric_eigh` (float64, then singular values), on one thread
    (:func:`single_threaded_lapack`)."""
    with single_threaded_lapack(gram.device):
        try:
            return torch.linalg.eigvalsh(gram)
        except torch.linalg.LinAlgError:
            pass
        try:
            return torch.linalg.eigvalsh(gram.double()).to(gram.dtype)
        except torch.linalg.LinAlgError:
            return torch.linalg.svdvals(gram.double()).flip(-1).to(
                gram.dtype)


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


def uses_dual_gram(shape: Sequence[int], mode: int, eps: float) -> bool:
    """Whether mode ``mode`` is larger than the product of the others (e.g.
    2560 channels at 8x8 in UPerNet's PSP bottleneck, batch 8): its
    eigenvectors then come from the smaller *dual* Gram ``X^T X`` (same
    non-zero eigenvalues). Not for ``eps == 1``, which keeps the whole
    mode (more vectors than the dual has)."""
    size = shape[mode]
    return eps < 1.0 and math.prod(shape) < size * size


def dual_mode_gram(x: Tensor, mode: int) -> Tensor:
    """``X_(mode)^T @ X_(mode)`` ``(m, m)``, ``m = numel / n`` (one copy of
    the unfolding, which is small when this is used)."""
    unfolding = x.movedim(mode, 0).reshape(x.shape[mode], -1)
    return unfolding.T @ unfolding


def truncated_svd(x: Tensor, eps: float) -> SVDFactors:
    """Truncated SVD of the ``(B, C*H*W)`` reshape of ``x`` at ``eps``.

    Left singular vectors come from the ``B x B`` Gram matrix; ``right`` is
    the projection ``left^T @ x_2d`` (singular values folded in). Raises
    FloatingPointError if ``x`` contains NaN/Inf.
    """
    eps = check_eps(eps)
    data = _as_decomposition_input(x)
    matrix = data.reshape(data.shape[0], -1)
    gram = matrix @ matrix.T
    finite = torch.isfinite(gram).all()
    (eigenvalues, ), (eigenvectors, ) = _eigh_descending(
        [torch.nan_to_num(gram, nan=0.0, posinf=0.0, neginf=0.0)])
    rank, is_finite = torch.stack(
        [explained_variance_rank(eigenvalues, eps), finite.long()]).tolist()
    if not is_finite:
        raise FloatingPointError(NON_FINITE_MESSAGE)
    left = _leading_columns(eigenvectors, rank)
    right = left.T @ matrix
    return SVDFactors(left=left, right=right, shape=tuple(data.shape))


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
        unfolding_t = x.reshape(outer, n)
        return unfolding_t.T @ unfolding_t
    slices = x.reshape(outer, n, inner)
    if outer <= inner:
        return _summed_self_products(slices)
    rows = max(1, COPY_CHUNK_ELEMENTS // (n * inner))
    gram = x.new_zeros(n, n)
    for chunk in slices.split(rows):
        piece = chunk.transpose(1, 2).reshape(-1, n)
        gram.addmm_(piece.T, piece)
    return gram


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


def _as_decomposition_input(x: Tensor) -> Tensor:
    if x.dim() != NUM_MODES:
        raise ValueError(f'expected a 4-D (B, C, H, W) tensor, got shape '
                         f'{tuple(x.shape)}')
    return x.detach().to(decomposition_dtype(x.dtype))


@contextlib.contextmanager
def single_threaded_lapack(device: torch.device):
    """Run the enclosed CPU LAPACK calls (eigh, eigvalsh, QR) on one thread.

    MKL's multi-threaded symmetric eigensolvers synchronise their threads
    at many fine-grained barriers; when the CPU is shared with other
    processes a descheduled thread stalls each of them: the same 640 x 640
    Gram took 27 ms or 8.6 s (``eigvalsh``, 2 threads, load ~4 on 2 cores).
    On one thread they cannot stall that way, and the matrices here are
    small enough that little parallel speed is lost. The thread count is
    restored on exit (a scoped setting, nothing persists); other devices
    are left alone.
    """
    threads = torch.get_num_threads()
    if torch.device(device).type != 'cpu' or threads == 1:
        yield
        return
    torch.set_num_threads(1)
    try:
        yield
    finally:
        torch.set_num_threads(threads)


def symmetric_eigh(grams: Tensor) -> Tuple[Tensor, Tensor]:
    """``torch.linalg.eigh`` of a batch of PSD Gram matrices ``(..., n, n)``:
    eigenvalues ascending, eigenvectors as columns, in ``grams.dtype``.

    LAPACK's divide-and-conquer eigh can fail to converge on Grams with many
    repeated eigenvalues at a tiny scale (seen on MobileNetV2 activations
    with hundreds of dead channels, values ~1e-8). Such a batch is solved
    again in float64; should that fail too, by an SVD of the (small) Gram,
    whose singular vectors are its eigenvectors since it is PSD. Runs
    under :func:`single_threaded_lapack`.
    """
    with single_threaded_lapack(grams.device):
        try:
            return torch.linalg.eigh(grams)
        except torch.linalg.LinAlgError:
            pass
        try:
            values, vectors = torch.linalg.eigh(grams.double())
        except torch.linalg.LinAlgError:
            vectors, values, _ = torch.linalg.svd(grams.double())
            values, vectors = values.flip(-1), vectors.flip(-1)
    return values.to(grams.dtype), vectors.to(grams.dtype)


def _eigh_descending(
        grams: List[Tensor]) -> Tuple[List[Tensor], List[Tensor]]:
    """Eigenvalues (descending) and eigenvectors (ascending, as eigh gives).

    Gram matrices of equal size share one batched eigh call.
    """
    eigenvalues: List[Tensor] = [None] * len(grams)
    eigenvectors: List[Tensor] = [None] * len(grams)
    by_size: Dict[int, List[int]] = {}
    for index, gram in enumerate(grams):
        by_size.setdefault(gram.shape[0], []).append(index)
    for indices in by_size.values():
        values, vectors = symmetric_eigh(
            torch.stack([grams[i] for i in indices]))
        for position, index in enumerate(indices):
            eigenvalues[index] = values[position].flip(-1)
            eigenvectors[index] = vectors[position]
    return eigenvalues, eigenvectors


def _leading_columns(eigenvectors_ascending: Tensor, rank: int) -> Tensor:
    """The ``rank`` leading eigenvectors ``(n, rank)`` in their own storage."""
    return eigenvectors_ascending[:, -rank:].flip(-1).contiguous()


def _check_pairs(shape: Sequence[int], ranks: Sequence[int]) -> None:
    if len(shape) != len(ranks):
        raise ValueError(f'shape {tuple(shape)} and ranks {tuple(ranks)} '
                         'have different lengths')
