"""The rank rule: checks of ``eps``, the decomposition dtype, and the
explained-variance rank of a spectrum.

Pure torch (layer 1). A mode's rank is the smallest ``K`` whose cumulative
sum of squared singular values reaches ``eps`` of the total.
"""
import numbers

import torch
from torch import Tensor

#: modes of a decomposed activation ``(B, C, H, W)``
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


def as_decomposition_input(x: Tensor) -> Tensor:
    """``x`` ``(B, C, H, W)`` detached, in :func:`decomposition_dtype`;
    ValueError for another number of dims."""
    if x.dim() != NUM_MODES:
        raise ValueError(f'expected a 4-D (B, C, H, W) tensor, got shape '
                         f'{tuple(x.shape)}')
    return x.detach().to(decomposition_dtype(x.dtype))
