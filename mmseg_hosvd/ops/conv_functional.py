"""The functional compressed convolution, :func:`compressed_conv2d`.

``F.conv2d`` whose saved input is compressed: the input is decomposed (or
filtered) here, and the autograd Functions of :mod:`.conv_autograd` save
the result; the method's :class:`~.methods.MethodSpec` picks the Function.
:class:`~.conv.CompressedConv2d` builds on :func:`low_rank_conv2d` and
:func:`non_finite_conv2d` to share factors between convs.
"""
from typing import Optional, Tuple

import torch
from torch import Tensor

from .accounting import (CompressionStats, factor_stats, non_finite_flag,
                         non_finite_stats, storage_bytes, storage_keys)
from .conv_autograd import (GradientFilterSpec, LowRankSpec,
                            _GradientFilterConv2dFunction,
                            _LowRankConv2dFunction, _NonFiniteConv2dFunction)
from .conv_gradients import ConvGeometry
from .gradient_filter import check_radius, filter_input, keeps_exact_weight
from .input_factors import (Factors, autocast_arguments, decompose,
                            kept_ranks)
from .methods import COMPRESSING_METHODS, check_non_finite, method_spec


def compressed_conv2d(input: Tensor,
                      weight: Tensor,
                      bias: Optional[Tensor],
                      geometry: ConvGeometry,
                      *,
                      method: str,
                      eps: float = 0.8,
                      radius: int = 2,
                      name: str = '',
                      weight_grad_path: str = 'auto',
                      factors: Optional[Factors] = None,
                      non_finite: str = 'raise'
                      ) -> Tuple[Tensor, CompressionStats]:
    """``F.conv2d`` whose saved input is compressed by ``method``.

    Args:
        input: ``(B, C, H, W)``; never saved for backward.
        weight: ``(Cout, C/groups, kh, kw)``; saved (for grad_input).
        geometry: stride, symmetric padding, dilation, groups.
        method: one of :data:`~.methods.METHODS`, or a stateful method
            (``'asi'``) with ``factors``.
        eps: HOSVD/SVD explained-energy fraction in (0, 1].
        radius: Gradient Filter patch radius (int >= 1).
        name: layer name used in error messages.
        weight_grad_path: HOSVD/ASI only, see :data:`WEIGHT_GRAD_PATHS`.
        factors: low-rank methods only: factors of ``input`` computed
            beforehand (Tucker for hosvd/asi, SVD for svd), saved instead
            of decomposing ``input`` here (or :class:`~mmseg_hosvd.
            decomposition.WholeInput`).
        non_finite: one of :data:`NON_FINITE_MODES`: what HOSVD/SVD do
            with a NaN/Inf input (raise, or keep nothing and give a NaN
            grad_weight).

    Returns:
        The exact conv output and the :class:`CompressionStats` of the call.

    Raises:
        FloatingPointError: HOSVD/SVD input with NaN/Inf (names ``name``),
            unless ``non_finite='skip'``.
    """
    spec = method_spec(method, COMPRESSING_METHODS)
    check_non_finite(non_finite)
    if spec.stateful and factors is None:
        raise ValueError(f'method={method!r} keeps per-layer state: use '
                         'CompressedConv2d, or pass its factors')
    if factors is not None and not spec.low_rank:
        raise ValueError(f'factors are for the low-rank methods, not '
                         f'method={method!r}')
    if input.dim() != 4:
        raise ValueError(f'expected a 4-D (B, C, H, W) input, got shape '
                         f'{tuple(input.shape)}')
    input, weight, bias = autocast_arguments(input, weight, bias)
    with torch.autocast(input.device.type, enabled=False):
        if spec.decomposition == 'patch_sum':
            return gradient_filter_conv2d(input, weight, bias, geometry,
                                           check_radius(radius))
        return low_rank_conv2d(input, weight, bias, geometry, method, eps,
                                name, weight_grad_path, factors,
                                non_finite=non_finite)


def low_rank_conv2d(input: Tensor,
                    weight: Tensor,
                    bias: Optional[Tensor],
                    geometry: ConvGeometry,
                    method: str,
                    eps: float,
                    name: str,
                    weight_grad_path: str,
                    factors: Optional[Factors] = None,
                    reused: bool = False,
                    non_finite: str = 'raise'
                    ) -> Tuple[Tensor, CompressionStats]:
    """HOSVD/SVD/ASI conv of ``input`` ``(B, C, H, W)``: saves
    ``factors`` (decomposed here when None, :func:`~.input_factors.
    decompose`) instead of the input."""
    if factors is None:
        factors = decompose(method, input.detach(), eps, name, non_finite)
        if factors is None:
            return non_finite_conv2d(input, weight, bias, geometry, method)
    input_shape = tuple(input.shape)
    if tuple(factors.shape) != input_shape:
        raise ValueError(f'factors of shape {tuple(factors.shape)} for an '
                         f'input of shape {input_shape}')
    spec = LowRankSpec(type(factors), geometry, input_shape, weight_grad_path)
    output = _LowRankConv2dFunction.apply(input, weight, bias, spec,
                                          *factors.tensors())
    return output, factor_stats(method, input_shape, factors,
                                kept_ranks(method, factors), reused)


def gradient_filter_conv2d(input: Tensor, weight: Tensor,
                           bias: Optional[Tensor], geometry: ConvGeometry,
                           radius: int) -> Tuple[Tensor, CompressionStats]:
    """Gradient Filter conv: saves the patch-summed input and the
    kernel-summed weight (the weight itself when dilation >= radius)."""
    output_hw = geometry.output_hw(input.shape[-2:], weight.shape[-2:])
    input_sum = filter_input(input.detach(), geometry.stride, radius,
                             output_hw)
    if keeps_exact_weight(geometry.dilation, radius):
        saved_weight = weight.detach()
    else:
        saved_weight = weight.detach().sum(dim=(2, 3))
    spec = GradientFilterSpec(geometry, tuple(input.shape), radius)
    output = _GradientFilterConv2dFunction.apply(input, weight, bias, spec,
                                                 input_sum, saved_weight)
    stats = CompressionStats(method='gradient_filter',
                             input_shape=tuple(input.shape),
                             paper_elements=input_sum.numel(),
                             kept_bytes=storage_bytes([input_sum]),
                             ranks=(),
                             storage_keys=storage_keys([input_sum]),
                             non_finite=non_finite_flag(input))
    return output, stats


def non_finite_conv2d(input: Tensor, weight: Tensor, bias: Optional[Tensor],
                      geometry: ConvGeometry, method: str,
                      reused: bool = False
                      ) -> Tuple[Tensor, CompressionStats]:
    """``non_finite='skip'`` fallback of the low-rank methods: nothing of
    the input is kept (zero bytes, no ranks)."""
    output = _NonFiniteConv2dFunction.apply(input, weight, bias, geometry)
    return output, non_finite_stats(method, tuple(input.shape), reused)
