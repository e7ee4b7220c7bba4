"""What a decomposition keeps: Tucker factors, SVD factors, or the whole
input (when no factorisation is smaller), and the paper's element counts.

Pure torch (layer 1). Element counts are numbers of tensor elements.
"""
import math
from dataclasses import dataclass
from typing import Sequence, Tuple

import torch
from torch import Tensor

from .unfolding import multi_mode_product


def hosvd_paper_elements(shape: Sequence[int], ranks: Sequence[int]) -> int:
    """Paper's element count ``K1*K2*K3*K4 + B*K1 + C*K2 + H*K3 + W*K4``."""
    if len(shape) != len(ranks):
        raise ValueError(f'shape {tuple(shape)} and ranks {tuple(ranks)} '
                         'have different lengths')
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

    @classmethod
    def from_tensors(cls, tensors: Sequence[Tensor],
                     shape: Sequence[int]) -> 'TuckerFactors':
        """Inverse of :meth:`tensors` (``shape`` is implied)."""
        core, *factors = tensors
        return cls(core=core, factors=tuple(factors))

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

    def to(self, dtype: torch.dtype) -> 'TuckerFactors':
        """The factors in ``dtype`` (self when already)."""
        if self.core.dtype == dtype:
            return self
        return TuckerFactors(self.core.to(dtype),
                             tuple(f.to(dtype) for f in self.factors))

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

    @classmethod
    def from_tensors(cls, tensors: Sequence[Tensor],
                     shape: Sequence[int]) -> 'SVDFactors':
        left, right = tensors
        return cls(left=left, right=right, shape=tuple(shape))

    @property
    def rank(self) -> int:
        return self.left.shape[1]

    @property
    def ranks(self) -> Tuple[int, ...]:
        """``(K,)``."""
        return (self.rank, )

    def tensors(self) -> Tuple[Tensor, ...]:
        return (self.left, self.right)

    def to(self, dtype: torch.dtype) -> 'SVDFactors':
        if self.left.dtype == dtype:
            return self
        return SVDFactors(self.left.to(dtype), self.right.to(dtype),
                          self.shape)

    def paper_elements(self) -> int:
        return svd_paper_elements(self.shape, self.rank)

    def reconstruct(self) -> Tensor:
        """The approximation of shape ``(B, C, H, W)``."""
        return (self.left @ self.right).reshape(self.shape)


@dataclass(frozen=True)
class WholeInput:
    """The input itself, kept when every factorisation of it at the asked
    ``eps`` would take at least as many elements (e.g. ``eps == 1``).

    Attributes:
        tensor: the input ``(B, C, H, W)`` (detached; no copy).
    """
    tensor: Tensor

    @classmethod
    def from_tensors(cls, tensors: Sequence[Tensor],
                     shape: Sequence[int]) -> 'WholeInput':
        tensor, = tensors
        return cls(tensor=tensor)

    @property
    def shape(self) -> Tuple[int, ...]:
        return tuple(self.tensor.shape)

    @property
    def ranks(self) -> Tuple[int, ...]:
        """The full shape: nothing is truncated."""
        return self.shape

    def tensors(self) -> Tuple[Tensor, ...]:
        return (self.tensor, )

    def to(self, dtype: torch.dtype) -> 'WholeInput':
        return self  # kept as it came

    def paper_elements(self) -> int:
        return self.tensor.numel()

    def reconstruct(self) -> Tensor:
        return self.tensor
