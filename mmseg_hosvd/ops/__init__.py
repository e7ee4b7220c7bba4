"""Layer 2: the compressed layers and their autograd Functions (torch only;
the maths below them is :mod:`mmseg_hosvd.decomposition`).

Modules, per concern:

* :mod:`.methods`: the method registry (:class:`Method`,
  :class:`MethodSpec`, :data:`METHOD_SPECS`, :func:`method_spec`);
* :mod:`.accounting`: bytes kept, :class:`CompressionStats`;
* :mod:`.context`: per-model state (shared-input cache, ASI tracker);
* :mod:`.input_factors`: what a layer keeps of its input (factors in the
  input's dtype, or the input itself where they would be larger);
* gradient maths: :mod:`.conv_gradients` (:class:`ConvGeometry`),
  :mod:`.linear_gradients`, :mod:`.gradient_filter`;
* autograd Functions: :mod:`.conv_autograd`, :mod:`.linear_autograd`, their
  shared backward in :mod:`.saved_weight_grads`;
* the functional conv :func:`compressed_conv2d` (:mod:`.conv_functional`);
* modules: :class:`CompressedConv2d` (:mod:`.conv`) and
  :class:`CompressedLinear` (:mod:`.linear`) on :mod:`.layer_base`;
* lean-backward modules: :mod:`.folding`, :mod:`.activation`,
  :mod:`.dropout`, :mod:`.pooling`, :mod:`.attention`,
  :mod:`.resize_cross_entropy`.
"""
from ..decomposition import (MIB, SubspaceTracker, SVDFactors, TuckerFactors,
                             WholeInput, allocate_hosvd_ranks, check_eps,
                             explained_variance_rank, hosvd,
                             hosvd_paper_elements,
                             solve_multiple_choice_knapsack,
                             subspace_iteration_step, svd_paper_elements,
                             truncated_svd)
from .accounting import (CompressionStats, distinct_kept_bytes,
                         non_finite_layers)
from .context import CompressionContext, DecompositionCache
from .conv import CompressedConv2d
from .conv_autograd import COMPRESSED_BACKWARD_NODES
from .conv_functional import compressed_conv2d
from .conv_gradients import ConvGeometry
from .linear import CompressedLinear
from .linear_autograd import LINEAR_BACKWARD_NODES
from .methods import (ASI, COMPRESSING_METHODS, LINEAR_METHODS,
                      LOW_RANK_METHODS, METHOD_SPECS, METHODS, MODULE_METHODS,
                      NON_FINITE_MODES, VANILLA, Method, MethodSpec,
                      check_non_finite, method_spec)

__all__ = [
    'MIB', 'check_eps', 'hosvd', 'truncated_svd', 'TuckerFactors',
    'SVDFactors', 'WholeInput', 'explained_variance_rank',
    'hosvd_paper_elements', 'svd_paper_elements', 'CompressedConv2d',
    'CompressionStats', 'Method', 'MethodSpec', 'METHOD_SPECS',
    'method_spec', 'METHODS', 'COMPRESSING_METHODS', 'MODULE_METHODS',
    'VANILLA', 'ASI', 'LOW_RANK_METHODS', 'distinct_kept_bytes',
    'NON_FINITE_MODES', 'check_non_finite', 'non_finite_layers',
    'CompressionContext', 'DecompositionCache', 'SubspaceTracker',
    'subspace_iteration_step', 'allocate_hosvd_ranks',
    'solve_multiple_choice_knapsack', 'compressed_conv2d', 'ConvGeometry',
    'COMPRESSED_BACKWARD_NODES', 'LINEAR_BACKWARD_NODES', 'CompressedLinear',
    'LINEAR_METHODS'
]
