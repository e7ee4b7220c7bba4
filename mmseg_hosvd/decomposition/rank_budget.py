"""Per-layer rank choices under a total memory budget (multiple-choice knapsack).

Pure PyTorch. Every layer (a *group*) offers a few options, each with an
integer cost (bytes) and an error; exactly one option per group is chosen so
that the total cost stays within the budget and the total error is minimal.
Solved by dynamic programming over the capacity, in
``O(groups * options * capacity_units)`` time: polynomial, no enumeration of
the option combinations.

Costs are integers. When the budget exceeds ``max_units``, costs and budget
are put in units of ``ceil(budget / max_units)`` bytes, costs rounded *up*
and the budget *down*, so every solution of the scaled problem respects the
real budget (it may then miss the exact optimum by less than one unit per
group); with ``unit == 1`` the answer is the exact optimum.

The HOSVD helpers turn a layer's mode spectra (squared singular values of the
four mode unfoldings) into options: rank tuples from the eps rule on a grid
of eps values, costing ``4 * (K1 K2 K3 K4 + B K1 + C K2 + H K3 + W K4)``
bytes (the paper's fp32 count), with the truncation error bound of the HOSVD
relative to the input's energy: the sum over modes of the energy fraction
that the discarded singular values carry.
"""
import math
from dataclasses import dataclass
from typing import List, Sequence, Tuple

import torch
from torch import Tensor

from .factors import hosvd_paper_elements
from .rank_rule import explained_variance_rank

#: bytes in one MiB (the paper's "MB" is 2**20 bytes)
MIB = 2**20
#: eps grid of the HOSVD rank options (1.0 keeps every mode whole)
DEFAULT_EPS_GRID = tuple(
    [round(0.05 * i, 2) for i in range(1, 19)] +
    [0.92, 0.94, 0.96, 0.97, 0.98, 0.99, 0.995, 0.999, 1.0])
FP32_BYTES = 4


@dataclass(frozen=True)
class RankOption:
    """One option of a group: its integer ``cost``, ``error`` and ``ranks``."""
    cost: int
    error: float
    ranks: Tuple[int, ...] = ()


def solve_multiple_choice_knapsack(options: Sequence[Sequence[RankOption]],
                                   budget: int,
                                   max_units: int = 4096) -> List[int]:
    """Index of the chosen option of every group (min total error, total
    cost <= ``budget``).

    Raises:
        ValueError: no group, a group without options, a negative cost or
            budget, or a budget below the cheapest combination (the message
            gives that minimum).
    """
    if not options:
        raise ValueError('rank budget: no layer to allocate')
    budget = int(budget)
    if budget < 0:
        raise ValueError(f'rank budget: negative budget {budget}')
    for index, group in enumerate(options):
        if not group:
            raise ValueError(f'rank budget: group {index} has no option')
        if any(int(option.cost) < 0 for option in group):
            raise ValueError(f'rank budget: group {index} has a negative cost')
    minimum = sum(min(int(o.cost) for o in group) for group in options)
    if minimum > budget:
        raise ValueError(f'rank budget: {budget} bytes is below the smallest '
                         f'possible total of {minimum} bytes')
    unit = max(1, math.ceil(budget / max_units))
    capacity = budget // unit
    inf = float('inf')
    # best[c]: least error of the groups so far with a total of at most c units
    best = torch.zeros(capacity + 1, dtype=torch.float64)
    choices = []
    for group in options:
        candidates = torch.full((len(group), capacity + 1), inf,
                                dtype=torch.float64)
        for row, option in enumerate(group):
            weight = -(-int(option.cost) // unit)  # ceil
            if weight <= capacity:
                candidates[row, weight:] = (best[:capacity + 1 - weight] +
                                            float(option.error))
        best, choice = candidates.min(dim=0)  # first (lowest index) on ties
        choices.append(choice)
    if not math.isfinite(best[capacity].item()):
        raise ValueError(f'rank budget: {budget} bytes is too small once costs '
                         f'are rounded up to units of {unit} bytes')
    picked = []
    remaining = capacity
    for group, choice in zip(reversed(options), reversed(choices)):
        index = int(choice[remaining])
        picked.append(index)
        remaining -= -(-int(group[index].cost) // unit)
    return picked[::-1]


def relative_truncation_errors(spectrum_desc: Tensor) -> Tensor:
    """``1 - cumsum(sigma^2)[K-1] / total`` for K = 1..n, float64 on the CPU
    (0 for an all-zero spectrum)."""
    values = spectrum_desc.detach().to('cpu', torch.float64).clamp(min=0)
    energy = values.cumsum(0)
    total = energy[-1]
    if total <= 0:
        return torch.zeros_like(energy)
    return (1 - energy / total).clamp(min=0)


def hosvd_rank_options(shape: Sequence[int],
                       spectra_desc: Sequence[Tensor],
                       eps_grid: Sequence[float] = DEFAULT_EPS_GRID
                       ) -> List[RankOption]:
    """Distinct HOSVD rank tuples of the eps rule on ``eps_grid`` plus
    ``(1, 1, 1, 1)``, each with its fp32 byte cost and relative error bound.

    Args:
        shape: ``(B, C, H, W)`` of the layer's input.
        spectra_desc: the four mode spectra (eigenvalues of the mode Gram
            matrices, descending).
    """
    errors = [relative_truncation_errors(s) for s in spectra_desc]
    tuples = {(1, ) * len(shape)}
    for eps in eps_grid:
        tuples.add(tuple(
            int(explained_variance_rank(s.detach().cpu(), eps))
            for s in spectra_desc))
    options = []
    for ranks in sorted(tuples):
        cost = FP32_BYTES * hosvd_paper_elements(shape, ranks)
        error = sum(float(e[k - 1]) for e, k in zip(errors, ranks))
        options.append(RankOption(cost=cost, error=error, ranks=ranks))
    return options


def allocate_hosvd_ranks(layers: Sequence[Tuple[Sequence[int],
                                                Sequence[Tensor]]],
                         budget_bytes: int,
                         eps_grid: Sequence[float] = DEFAULT_EPS_GRID,
                         max_units: int = 4096) -> List[Tuple[int, ...]]:
    """Rank tuples, one per ``(shape, spectra)`` layer, minimising the summed
    relative error bounds with at most ``budget_bytes`` in total (fp32)."""
    options = [hosvd_rank_options(shape, spectra, eps_grid)
               for shape, spectra in layers]
    picked = solve_multiple_choice_knapsack(options, budget_bytes, max_units)
    return [group[index].ranks for group, index in zip(options, picked)]
