"""Compressed-activation convolution ops (HOSVD, SVD, Gradient Filter)."""
from .conv import (METHODS, MODULE_METHODS, VANILLA, CompressedConv2d,
                   CompressionStats)
from .decomposition import (SVDFactors, TuckerFactors, check_eps,
                            explained_variance_rank, hosvd,
                            hosvd_paper_elements, svd_paper_elements,
                            truncated_svd)

__all__ = [
    'check_eps', 'hosvd', 'truncated_svd', 'TuckerFactors', 'SVDFactors',
    'explained_variance_rank', 'hosvd_paper_elements', 'svd_paper_elements',
    'CompressedConv2d', 'CompressionStats', 'METHODS', 'MODULE_METHODS',
    'VANILLA'
]
