"""Compressed-activation convolution ops (HOSVD, SVD, ASI, Gradient Filter).

Modules: :mod:`.methods` (method names, checks), :mod:`.accounting` (bytes,
:class:`CompressionStats`), :mod:`.decomposition` (HOSVD/SVD maths, on
:mod:`.unfolding` and :mod:`.eigen`),
:mod:`.weight_grad` (gradient maths), :mod:`.functions` (autograd
Functions, their common backward in :mod:`.backward`), :mod:`.functional`
(:func:`compressed_conv2d`), :mod:`.conv` (:class:`CompressedConv2d`) and
:mod:`.linear` (:class:`CompressedLinear`, on :mod:`.linear_functions`),
both on :mod:`.compressed_layer` (settings, shared-input factors).
"""
from .accounting import MIB, CompressionStats, distinct_kept_bytes, \
    non_finite_layers
from .context import CompressionContext, DecompositionCache
from .conv import CompressedConv2d
from .decomposition import (SVDFactors, TuckerFactors, check_eps,
                            explained_variance_rank, hosvd,
                            hosvd_paper_elements, svd_paper_elements,
                            truncated_svd)
from .functional import compressed_conv2d
from .functions import COMPRESSED_BACKWARD_NODES
from .linear import CompressedLinear
from .methods import (ASI, LINEAR_METHODS, LOW_RANK_METHODS, METHODS,
                      MODULE_METHODS, NON_FINITE_MODES, VANILLA,
                      check_non_finite)
# TEMPORARY: replaced by the ops branch (the method registry)
from .methods import METHOD_SPECS, Method, MethodSpec, method_spec
from .rank_budget import (allocate_hosvd_ranks,
                          solve_multiple_choice_knapsack)
from .subspace_iteration import (SubspaceTracker, subspace_iteration_step)
from .weight_grad import ConvGeometry

__all__ = [
    'MIB', 'check_eps', 'hosvd', 'truncated_svd', 'TuckerFactors', 'SVDFactors',
    'explained_variance_rank', 'hosvd_paper_elements', 'svd_paper_elements',
    'CompressedConv2d', 'CompressionStats', 'METHODS', 'MODULE_METHODS',
    'VANILLA', 'ASI', 'LOW_RANK_METHODS', 'distinct_kept_bytes',
    'NON_FINITE_MODES', 'check_non_finite', 'non_finite_layers',
    'CompressionContext', 'DecompositionCache', 'SubspaceTracker',
    'subspace_iteration_step', 'allocate_hosvd_ranks',
    'solve_multiple_choice_knapsack', 'compressed_conv2d', 'ConvGeometry',
    'COMPRESSED_BACKWARD_NODES', 'CompressedLinear', 'LINEAR_METHODS',
    'Method', 'MethodSpec', 'METHOD_SPECS', 'method_spec'
]
