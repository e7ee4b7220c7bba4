"""The knapsack rank allocator: optimal on small cases (brute force), within
budget, and the HOSVD options built from mode spectra."""
import itertools
import math
import random

import pytest
import torch

from mmseg_hosvd.decomposition import hosvd_paper_elements
from mmseg_hosvd.decomposition.rank_budget import (RankOption, allocate_hosvd_ranks,
                                         hosvd_rank_options,
                                         relative_truncation_errors,
                                         solve_multiple_choice_knapsack)


def brute_force(options, budget):
    best = math.inf
    for combo in itertools.product(*options):
        if sum(o.cost for o in combo) <= budget:
            best = min(best, sum(o.error for o in combo))
    return best


@pytest.mark.parametrize('case', range(40))
def test_knapsack_matches_brute_force(case):
    rng = random.Random(case)
    groups = rng.randint(1, 4)
    options = [[
        RankOption(cost=rng.randint(0, 12), error=rng.random())
        for _ in range(rng.randint(1, 4))
    ] for _ in range(groups)]
    minimum = sum(min(o.cost for o in g) for g in options)
    budget = minimum + rng.randint(0, 20)
    picked = solve_multiple_choice_knapsack(options, budget)
    chosen = [g[i] for g, i in zip(options, picked)]
    assert sum(o.cost for o in chosen) <= budget
    assert sum(o.error for o in chosen) == pytest.approx(
        brute_force(options, budget), abs=1e-12)


def test_knapsack_with_scaled_units_respects_the_budget():
    rng = random.Random(0)
    options = [[
        RankOption(cost=rng.randint(1000, 10**7), error=rng.random())
        for _ in range(6)
    ] for _ in range(5)]
    budget = 2 * 10**7
    picked = solve_multiple_choice_knapsack(options, budget, max_units=64)
    chosen = [g[i] for g, i in zip(options, picked)]
    assert sum(o.cost for o in chosen) <= budget
    # scaled solution is close to the optimum
    exact = brute_force(options, budget)
    assert sum(o.error for o in chosen) <= exact + 5 * 0.5


def test_knapsack_rejects_infeasible_and_bad_input():
    options = [[RankOption(5, 0.0)], [RankOption(7, 0.0),
                                      RankOption(9, 0.0)]]
    with pytest.raises(ValueError, match='below the smallest possible total '
                       'of 12 bytes'):
        solve_multiple_choice_knapsack(options, 11)
    assert solve_multiple_choice_knapsack(options, 12) == [0, 0]
    with pytest.raises(ValueError, match='no layer'):
        solve_multiple_choice_knapsack([], 10)
    with pytest.raises(ValueError, match='no option'):
        solve_multiple_choice_knapsack([[]], 10)


def test_relative_truncation_errors():
    errors = relative_truncation_errors(torch.tensor([6.0, 3.0, 1.0]))
    torch.testing.assert_close(errors,
                               torch.tensor([0.4, 0.1, 0.0],
                                            dtype=torch.float64))
    assert relative_truncation_errors(torch.zeros(3)).tolist() == [0, 0, 0]


def _spectra(shape, seed):
    generator = torch.Generator().manual_seed(seed)
    return [
        torch.sort(torch.rand(n, generator=generator)**4,
                   descending=True).values for n in shape
    ]


def test_hosvd_options_costs_and_errors():
    shape = (4, 16, 6, 6)
    spectra = _spectra(shape, 0)
    options = hosvd_rank_options(shape, spectra)
    assert (1, 1, 1, 1) in [o.ranks for o in options]
    assert tuple(shape) in [o.ranks for o in options]  # eps = 1
    errors = [relative_truncation_errors(s) for s in spectra]
    for option in options:
        assert option.cost == 4 * hosvd_paper_elements(shape, option.ranks)
        assert option.error == pytest.approx(
            sum(float(e[k - 1]) for e, k in zip(errors, option.ranks)))
    full = [o for o in options if o.ranks == tuple(shape)][0]
    assert full.error == pytest.approx(0.0, abs=1e-12)


def test_allocate_hosvd_ranks_is_optimal_over_the_options():
    layers = [((4, 16, 6, 6), _spectra((4, 16, 6, 6), 1)),
              ((2, 8, 5, 5), _spectra((2, 8, 5, 5), 2)),
              ((3, 12, 4, 4), _spectra((3, 12, 4, 4), 3))]
    options = [hosvd_rank_options(shape, s) for shape, s in layers]
    smallest = sum(min(o.cost for o in g) for g in options)
    largest = sum(max(o.cost for o in g) for g in options)
    for budget in (smallest, (smallest + largest) // 3,
                   (smallest + largest) // 2, largest):
        ranks = allocate_hosvd_ranks(layers, budget, max_units=10**6)
        chosen = [[o for o in g if o.ranks == r][0]
                  for g, r in zip(options, ranks)]
        assert sum(o.cost for o in chosen) <= budget
        assert sum(o.error for o in chosen) == pytest.approx(
            brute_force(options, budget), abs=1e-9)
    # more budget never increases the error
    errors = []
    for budget in range(smallest, largest + 1, (largest - smallest) // 7):
        ranks = allocate_hosvd_ranks(layers, budget, max_units=10**6)
        errors.append(sum(
            [o for o in g if o.ranks == r][0].error
            for g, r in zip(options, ranks)))
    assert errors == sorted(errors, reverse=True)
