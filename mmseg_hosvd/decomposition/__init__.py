"""Layer 1: the decompositions, pure PyTorch (no autograd Function, no
``nn.Module``, no mmengine/mmcv/mmseg).

Modules: :mod:`.rank_rule` (``eps`` check, explained-variance rank),
:mod:`.unfolding` (mode Grams and products), :mod:`.eigen` (symmetric
eigensolvers), :mod:`.factors` (what a decomposition keeps),
:mod:`.tucker` (HOSVD) and :mod:`.svd` (the truncated decompositions),
:mod:`.rank_budget` (ranks under a memory budget: multiple-choice
knapsack) and :mod:`.subspace_iteration` (ASI: one warm-started subspace
iteration step, and the per-layer state that carries it across steps).
"""
from .factors import (SVDFactors, TuckerFactors, WholeInput,
                      hosvd_paper_elements, svd_paper_elements)
from .tucker import hosvd, truncated_mode_bases
from .rank_budget import (MIB, allocate_hosvd_ranks,
                          solve_multiple_choice_knapsack)
from .rank_rule import (check_eps, decomposition_dtype,
                        explained_variance_rank)
from .subspace_iteration import SubspaceTracker, subspace_iteration_step
from .svd import truncated_svd
from .unfolding import mode_gram, mode_product, multi_mode_product

__all__ = [
    'SVDFactors', 'TuckerFactors', 'WholeInput', 'hosvd_paper_elements',
    'svd_paper_elements', 'hosvd', 'truncated_mode_bases', 'MIB',
    'allocate_hosvd_ranks', 'solve_multiple_choice_knapsack', 'check_eps',
    'decomposition_dtype', 'explained_variance_rank', 'SubspaceTracker',
    'subspace_iteration_step', 'truncated_svd', 'mode_gram', 'mode_product',
    'multi_mode_product'
]
