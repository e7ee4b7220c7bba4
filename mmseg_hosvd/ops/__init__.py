"""Compressed-activation convolution ops (HOSVD, SVD, ASI, Gradient Filter)."""
from .accounting import MIB
from .context import CompressionContext, DecompositionCache
from .conv import (ASI, LOW_RANK_METHODS, METHODS, MODULE_METHODS,
                   NON_FINITE_MODES, VANILLA, CompressedConv2d,
                   CompressionStats, check_non_finite, distinct_kept_bytes,
                   non_finite_layers)
from .decomposition import (SVDFactors, TuckerFactors, check_eps,
                            explained_variance_rank, hosvd,
                            hosvd_paper_elements, svd_paper_elements,
                            truncated_svd)
from .rank_budget import (allocate_hosvd_ranks,
                          solve_multiple_choice_knapsack)
from .subspace_iteration import (SubspaceTracker, subspace_iteration_step)

__all__ = [
    'MIB', 'check_eps', 'hosvd', 'truncated_svd', 'TuckerFactors', 'SVDFactors',
    'explained_variance_rank', 'hosvd_paper_elements', 'svd_paper_elements',
    'CompressedConv2d', 'CompressionStats', 'METHODS', 'MODULE_METHODS',
    'VANILLA', 'ASI', 'LOW_RANK_METHODS', 'distinct_kept_bytes',
    'NON_FINITE_MODES', 'check_non_finite', 'non_finite_layers',
    'CompressionContext', 'DecompositionCache', 'SubspaceTracker',
    'subspace_iteration_step', 'allocate_hosvd_ranks',
    'solve_multiple_choice_knapsack'
]
