"""Activation Subspace Iteration (ASI): warm-started truncated Tucker factors.

Pure PyTorch math (Nguyen et al., "Beyond Low-Rank Decomposition: A Shortcut
Approach for Efficient On-Device Learning", ICML 2025): every layer keeps
fixed ranks ``(K1, K2, K3, K4)`` and one orthonormal basis ``U_m`` (``n_m x
K_m``) per mode of its input; each training step refines them by one step of
subspace iteration warm-started from the previous step's bases,

    ``U_m <- orth(A_m A_m^T U_m)``   (``A_m``: mode-``m`` unfolding),

and keeps the core ``x x1 U1^T x2 U2^T x3 U3^T x4 U4^T``. No eigendecomposition,
no host synchronisation. Everything runs in float32 (float64 for float64
inputs), also under autocast.

* :func:`gram_times` computes ``A A^T U`` by whichever association costs
  fewer multiply-adds: through the ``n x n`` Gram matrix (small modes) or as
  ``A (A^T U)`` (large modes, e.g. channels, where ``K << n``).
* :func:`subspace_iteration_step` does one step on all four modes.
* :class:`LayerSubspace` / :class:`SubspaceTracker` hold the per-layer state
  (ranks, bases, step count) of a model and pick the ranks: the eps rule on
  the first step, or a memory budget across layers
  (:mod:`.rank_budget`). They are plain Python objects, never module
  buffers; :meth:`SubspaceTracker.state_dict` gives tensors only.
* Random starts come from a :class:`torch.Generator` seeded per layer: the
  global RNG is never touched.

A non-finite input does not raise (unlike :func:`~.tucker.hosvd`,
which needs a host sync for that): its factors are NaN, so its weight
gradient is, as with ``nn.Conv2d``; the bases keep their previous value so
the next finite input is decomposed normally.
"""
import math
import zlib
from dataclasses import dataclass, field
from typing import Dict, List, Optional, Sequence, Tuple

import torch
from torch import Tensor

from .factors import TuckerFactors
from .tucker import truncated_mode_bases
from .rank_budget import DEFAULT_EPS_GRID, MIB, allocate_hosvd_ranks
from .rank_rule import (NUM_MODES, as_decomposition_input, check_eps)
from .unfolding import mode_gram, mode_product, multi_mode_product

#: how the bases of a layer start on its first step
INITS = ('random', 'hosvd')


# ---------------------------------------------------------------------------
# math
# ---------------------------------------------------------------------------
def random_orthonormal(rows: int, cols: int, generator: torch.Generator,
                       dtype: torch.dtype = torch.float32,
                       device=None) -> Tensor:
    """``(rows, cols)`` with orthonormal columns from ``generator`` (on the
    CPU; the result is moved to ``device``)."""
    sample = torch.randn(rows, cols, generator=generator, dtype=dtype)
    basis = torch.linalg.qr(sample).Q
    return basis.to(device) if device is not None else basis


def orthonormalize(matrix: Tensor) -> Tensor:
    """Orthonormal basis ``(n, k)`` of the columns of ``matrix`` (reduced
    Householder QR: orthonormal even for rank-deficient input)."""
    return torch.linalg.qr(matrix).Q


def mode_cross(x: Tensor, y: Tensor, mode: int) -> Tensor:
    """``X_(mode) @ Y_(mode)^T``: ``x`` and ``y`` contracted over every mode
    but ``mode``; ``(n, k)`` for ``x`` of size ``n`` and ``y`` of size ``k``
    along ``mode`` (all other sizes equal)."""
    n, k = x.shape[mode], y.shape[mode]
    outer = math.prod(x.shape[:mode])
    inner = math.prod(x.shape[mode + 1:])
    if outer == 1:
        return x.reshape(n, inner) @ y.reshape(k, inner).T
    if inner == 1:
        return x.reshape(outer, n).T @ y.reshape(outer, k)
    return torch.bmm(x.reshape(outer, n, inner),
                     y.reshape(outer, k, inner).transpose(1, 2)).sum(dim=0)


def gram_route(shape: Sequence[int], mode: int, rank: int) -> str:
    """``'gram'`` or ``'direct'``: the cheaper way to form ``A A^T U``.

    Through the Gram ``A A^T`` costs ``2 N n`` FLOPs (one self-product, done
    as few large matmuls) + ``2 n^2 k``; directly, ``A (A^T U)`` costs ``4 N
    k`` (two products, the first often a batch of small ones). ``N`` is the
    tensor's size, ``n`` the mode's, ``k`` the rank. The direct route is
    taken only when it needs at most half the FLOPs of the Gram route, to
    account for its less efficient small products.
    """
    numel = math.prod(shape)
    n = shape[mode]
    gram = 2 * numel * n + 2 * n * n * rank
    direct = 4 * numel * rank
    return 'direct' if 2 * direct <= gram else 'gram'


def gram_times(x: Tensor, mode: int, basis: Tensor) -> Tensor:
    """``A A^T U`` for the mode-``mode`` unfolding ``A`` of ``x`` and ``U =
    basis`` ``(n, k)``, by the cheaper route (:func:`gram_route`)."""
    if gram_route(x.shape, mode, basis.shape[1]) == 'gram':
        return mode_gram(x, mode) @ basis
    return mode_cross(x, mode_product(x, basis, mode), mode)


def subspace_iteration_step(x: Tensor,
                            bases: Sequence[Tensor]) -> TuckerFactors:
    """One warm-started subspace-iteration step on every mode, and the core.

    Args:
        x: ``(B, C, H, W)``, detached and cast to float32 (float64 kept).
        bases: ``(U1, U2, U3, U4)``, ``U_m`` ``(n_m, K_m)`` orthonormal.

    Returns:
        Tucker factors with the new bases (a mode with ``K_m == n_m`` keeps
        the identity) and ``core = x x_m U_m^T`` over all modes. Where a new
        basis is not finite (non-finite input) the old one is returned in its
        place, without a host synchronisation.
    """
    data = as_decomposition_input(x)
    if len(bases) != NUM_MODES:
        raise ValueError(f'expected {NUM_MODES} bases, got {len(bases)}')
    new_bases = []
    with torch.autocast(data.device.type, enabled=False):
        for mode, basis in enumerate(bases):
            n, rank = basis.shape
            if n != data.shape[mode]:
                raise ValueError(f'basis {mode} has {n} rows, the input mode '
                                 f'has size {data.shape[mode]}')
            basis = basis.to(device=data.device, dtype=data.dtype)
            if rank == n:
                new_bases.append(
                    torch.eye(n, dtype=data.dtype, device=data.device))
                continue
            updated = orthonormalize(gram_times(data, mode, basis))
            new_bases.append(
                torch.where(torch.isfinite(updated).all(), updated, basis))
        core = multi_mode_product(data, dict(enumerate(new_bases)))
    return TuckerFactors(core=core, factors=tuple(new_bases))


def resize_basis(basis: Tensor, rank: int,
                 generator: torch.Generator) -> Tensor:
    """``basis`` with ``rank`` columns: the leading ones kept, new ones drawn
    from ``generator`` and orthogonalised against them."""
    n, current = basis.shape
    rank = min(rank, n)
    if rank <= current:
        return basis[:, :rank].contiguous()
    extra = torch.randn(n, rank - current, generator=generator,
                        dtype=basis.dtype).to(basis.device)
    return orthonormalize(torch.cat([basis, extra], dim=1))


# ---------------------------------------------------------------------------
# per-layer and per-model state
# ---------------------------------------------------------------------------
@dataclass
class LayerSubspace:
    """ASI state of one layer (plain attributes, not module buffers).

    Attributes:
        ranks: fixed ``(K1, K2, K3, K4)``.
        bases: ``[U1, U2, U3, U4]`` of the latest step.
        steps: steps done.
        spectra: first-step mode spectra, kept (on the CPU) only until a
            memory budget has been allocated.
    """
    ranks: Tuple[int, ...] = ()
    bases: List[Tensor] = field(default_factory=list)
    steps: int = 0
    spectra: Optional[List[Tensor]] = None

    @property
    def shape(self) -> Tuple[int, ...]:
        return tuple(basis.shape[0] for basis in self.bases)


class SubspaceTracker:
    """ASI state of the layers of one model, and the rank choice.

    Ranks are fixed on a layer's first step: by the eps rule on the exact
    mode spectra of that step's input (``budget_mib=None``), or by a memory
    budget: the first step then uses the eps rule and records every layer's
    spectra; when a layer comes back (the second step), the ranks of all
    recorded layers are allocated at once (:func:`~.rank_budget.
    allocate_hosvd_ranks`: least summed relative error bound within
    ``budget_mib`` MiB of fp32 factors and cores) and the bases resized.

    Args:
        budget_mib: total MiB (2**20 bytes) for all layers' factors and
            cores, or None for the eps rule.
        seed: seeds each layer's :class:`torch.Generator` (with a hash of
            the layer name); the global RNG is not used.
        init: ``'random'``: the first step starts from random orthonormal
            bases and does one iteration on that step's input; ``'hosvd'``:
            it starts from (and keeps, for that step) the exact HOSVD
            factors the rank rule computed anyway.
    """

    def __init__(self,
                 budget_mib: Optional[float] = None,
                 seed: int = 0,
                 init: str = 'random',
                 eps_grid: Sequence[float] = DEFAULT_EPS_GRID) -> None:
        if budget_mib is not None and (isinstance(budget_mib, bool) or
                                       not isinstance(budget_mib,
                                                      (int, float)) or
                                       not budget_mib > 0):
            raise ValueError(f'budget_mib must be a positive number or None, '
                             f'got {budget_mib!r}')
        if init not in INITS:
            raise ValueError(f'init must be one of {INITS}, got {init!r}')
        if isinstance(seed, bool) or not isinstance(seed, int):
            raise ValueError(f'seed must be an int, got {seed!r}')
        self.budget_mib = budget_mib
        self.seed = seed
        self.init = init
        self.eps_grid = tuple(eps_grid)
        self.layers: Dict[str, LayerSubspace] = {}

    # ------------------------------------------------------------ stepping
    def generator(self, name: str, salt: int = 0) -> torch.Generator:
        """A CPU generator seeded from ``seed``, ``name`` and ``salt``."""
        digest = zlib.crc32(f'{name}/{salt}'.encode())
        return torch.Generator().manual_seed(
            (self.seed * 0x9E3779B1 + digest) % (2**63))

    def decompose(self, name: str, x: Tensor, eps: float) -> TuckerFactors:
        """Factors of ``x`` for layer ``name``: one ASI step (the first step
        of a layer also fixes its ranks, see the class)."""
        layer = self.layers.get(name)
        if layer is None or not layer.bases:
            return self._first_step(name, x, check_eps(eps))
        if layer.spectra is not None:
            self.allocate_budget()
        self._match_shape(name, layer, tuple(x.shape))
        factors = subspace_iteration_step(x, layer.bases)
        layer.bases = list(factors.factors)
        layer.steps += 1
        return factors

    def _first_step(self, name: str, x: Tensor, eps: float) -> TuckerFactors:
        data = as_decomposition_input(x)
        eigenvalues, ranks, bases = truncated_mode_bases(data, eps)
        layer = LayerSubspace(ranks=tuple(ranks))
        if self.budget_mib is not None:
            layer.spectra = [v.detach().cpu() for v in eigenvalues]
        self.layers[name] = layer
        if self.init == 'hosvd':
            core = multi_mode_product(data, dict(enumerate(bases)))
            factors = TuckerFactors(core=core, factors=tuple(bases))
        else:
            start = [
                random_orthonormal(n, rank, self.generator(name, mode),
                                   data.dtype, data.device)
                for mode, (n, rank) in enumerate(zip(data.shape, ranks))
            ]
            factors = subspace_iteration_step(data, start)
        layer.bases = list(factors.factors)
        layer.steps = 1
        return factors

    def _match_shape(self, name: str, layer: LayerSubspace,
                     shape: Tuple[int, ...]) -> None:
        """Restart (randomly) the bases of modes whose size changed (e.g. a
        smaller last batch); ranks are capped at the new sizes."""
        for mode, (size, basis) in enumerate(zip(shape, layer.bases)):
            if basis.shape[0] != size:
                rank = min(layer.ranks[mode], size)
                layer.bases[mode] = random_orthonormal(
                    size, rank, self.generator(name, 100 + layer.steps),
                    basis.dtype, basis.device)

    def pending_budget(self) -> List[str]:
        """Layers whose ranks still await the budget allocation."""
        return [n for n, s in self.layers.items() if s.spectra is not None]

    def allocate_budget(self) -> Dict[str, Tuple[int, ...]]:
        """Allocate ``budget_mib`` across the pending layers and resize their
        bases; return the new ranks by layer. Layers already allocated (e.g.
        restored from a checkpoint) keep their ranks and their bytes are
        taken off the budget."""
        pending = self.pending_budget()
        if not pending or self.budget_mib is None:
            return {}
        fixed = sum(
            4 * _tucker_elements(s.shape, s.ranks)
            for n, s in self.layers.items() if s.spectra is None)
        budget = int(self.budget_mib * MIB) - fixed
        layers = [(self.layers[n].shape, self.layers[n].spectra)
                  for n in pending]
        try:
            ranks = allocate_hosvd_ranks(layers, budget, self.eps_grid)
        except ValueError as error:
            raise ValueError(f'asi budget_mib={self.budget_mib}: {error} '
                             f'(layers {pending})') from None
        allocated = {}
        for name, layer_ranks in zip(pending, ranks):
            layer = self.layers[name]
            layer.bases = [
                resize_basis(basis, rank, self.generator(name, 10 + mode))
                for mode, (basis, rank) in enumerate(
                    zip(layer.bases, layer_ranks))
            ]
            layer.ranks = tuple(layer_ranks)
            layer.spectra = None
            allocated[name] = layer.ranks
        return allocated

    # ---------------------------------------------------------- checkpoint
    def state_dict(self) -> Dict[str, Dict[str, Tensor]]:
        """Tensors only (``torch.load(weights_only=True)`` reads them):
        ``{layer: {'ranks', 'steps', 'basis0'..'basis3'[, 'spectrum0'..]}}``
        (the bases are detached copies on the CPU)."""
        state = {}
        for name, layer in self.layers.items():
            if not layer.bases:
                continue
            entry = {
                'ranks': torch.tensor(layer.ranks, dtype=torch.long),
                'steps': torch.tensor(layer.steps, dtype=torch.long),
            }
            for mode, basis in enumerate(layer.bases):
                entry[f'basis{mode}'] = basis.detach().cpu().clone()
            for mode, spectrum in enumerate(layer.spectra or ()):
                entry[f'spectrum{mode}'] = spectrum.detach().cpu().clone()
            state[name] = entry
        return state

    def load_state_dict(self, state: Dict[str, Dict[str, Tensor]],
                        device=None) -> None:
        """Restore :meth:`state_dict` output (bases moved to ``device``)."""
        layers = {}
        for name, entry in state.items():
            bases = [entry[f'basis{m}'] for m in range(NUM_MODES)]
            ranks = tuple(int(k) for k in entry['ranks'].tolist())
            if tuple(b.shape[1] for b in bases) != ranks:
                raise ValueError(f'asi state of {name!r}: bases of ranks '
                                 f'{[b.shape[1] for b in bases]} but ranks '
                                 f'{ranks}')
            spectra = None
            if 'spectrum0' in entry:
                spectra = [entry[f'spectrum{m}'] for m in range(NUM_MODES)]
            layers[name] = LayerSubspace(
                ranks=ranks,
                bases=[b.to(device) if device is not None else b
                       for b in bases],
                steps=int(entry['steps']),
                spectra=spectra)
        self.layers = layers


def _tucker_elements(shape: Sequence[int], ranks: Sequence[int]) -> int:
    return math.prod(ranks) + sum(n * k for n, k in zip(shape, ranks))
