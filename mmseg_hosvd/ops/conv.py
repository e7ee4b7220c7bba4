"""Conv2d whose saved input activation is compressed for the weight gradient.

Layer 2: autograd Functions on top of :mod:`.decomposition` and
:mod:`.gradient_filter`, the functional :func:`compressed_conv2d` and the
module :class:`CompressedConv2d`.

Methods (:data:`METHODS`):

* ``'hosvd'``: truncated Tucker factors of the input are kept; grad_weight is
  computed from them, grad_input and grad_bias are exact.
* ``'svd'``: truncated SVD of the ``(B, C*H*W)`` reshape is kept; grad_weight
  from the factors, grad_input and grad_bias exact.
* ``'gradient_filter'``: the patch-summed input and kernel-summed weight are
  kept; grad_weight and grad_input are the Gradient Filter approximations,
  grad_bias is exact.
* ``'asi'`` (module only, it has per-layer state): Tucker factors from one
  warm-started subspace-iteration step with fixed ranks
  (:mod:`.subspace_iteration`); backward as ``'hosvd'``.

Inside a model, the :class:`CompressedConv2d` s share one
:class:`~.context.CompressionContext`: an input read by several of them is
decomposed once and the same factor tensors are saved by each.

The forward output is always the exact ``F.conv2d``. A non-finite input
(NaN/Inf) depends on ``non_finite`` (:data:`NON_FINITE_MODES`): with
``'raise'`` HOSVD/SVD (and ASI's first step) raise
:class:`FloatingPointError` naming the layer (detected with the
decomposition's single host synchronisation), while the Gradient Filter, ASI
and vanilla, which need no synchronisation, let NaN propagate as
``nn.Conv2d`` does; with ``'skip'`` nothing raises: HOSVD/SVD keep nothing
and their grad_weight is NaN (grad_input and grad_bias stay exact), so that
an optimizer guard can skip the step. Every call flags a non-finite input in
:attr:`CompressionStats.non_finite`.
"""
from dataclasses import dataclass
from typing import Dict, List, Optional, Sequence, Tuple, Union

import torch
import torch.nn as nn
import torch.nn.functional as F
from torch import Tensor
from torch.autograd import Function
from torch.autograd.function import once_differentiable
from torch.nn.modules.utils import _pair

from .context import CompressionContext
from .folding import NormFoldingConv2d
from .decomposition import (SVDFactors, TuckerFactors, check_eps,
                            cheapest_mode_order, decomposition_dtype, hosvd,
                            mode_chain_flops, multi_mode_product,
                            truncated_svd)
from .gradient_filter import (check_radius, filter_grad_output, filter_input,
                              filtered_input_grad, filtered_weight_grad,
                              keeps_exact_weight)

#: stateless methods of :func:`compressed_conv2d`.
METHODS = ('hosvd', 'svd', 'gradient_filter')
#: the uncompressed baseline: the full input is kept (as by ``nn.Conv2d``);
#: :class:`CompressedConv2d` only records its size.
VANILLA = 'vanilla'
#: Activation Subspace Iteration: stateful, :class:`CompressedConv2d` only
#: (or :func:`compressed_conv2d` with precomputed ``factors``).
ASI = 'asi'
#: methods that keep low-rank factors (Tucker or SVD) of the input.
LOW_RANK_METHODS = ('hosvd', 'svd', ASI)
#: what :class:`CompressedConv2d` accepts.
MODULE_METHODS = (VANILLA, ) + METHODS + (ASI, )
#: how HOSVD's grad_weight is computed: chosen by FLOPs, or forced.
WEIGHT_GRAD_PATHS = ('auto', 'factored', 'rebuilt')
#: what a compressed conv does with a NaN/Inf input: ``'raise'`` (HOSVD/SVD
#: raise FloatingPointError) or ``'skip'`` (keep nothing, NaN grad_weight).
NON_FINITE_MODES = ('raise', 'skip')

Pair = Tuple[int, int]


@dataclass
class CompressionStats:
    """What one compressed conv call keeps for backward.

    Attributes:
        method: one of :data:`METHODS`.
        input_shape: ``(B, C, H, W)`` of the compressed input (after any
            explicit padding, see :class:`CompressedConv2d`).
        paper_elements: the paper's element count: HOSVD
            ``K1*K2*K3*K4 + B*K1 + C*K2 + H*K3 + W*K4``, SVD
            ``K*(B + C*H*W)``, Gradient Filter ``B*C*Hp*Wp``.
        kept_bytes: bytes really kept from the activation: the untyped
            storages of the saved compressed tensors, each counted once
            (weight-derived tensors are not counted).
        ranks: HOSVD/ASI ``(K1, K2, K3, K4)``, SVD ``(K,)``, Gradient
            Filter ``()``.
        storage_keys: ``(device, data_ptr, nbytes)`` of each storage counted
            in ``kept_bytes``: several convs that save the same storages
            (a shared input's factors) show them each, and totals over
            layers count each key once (:func:`distinct_kept_bytes`).
        reused: the factors were computed by another conv that read the
            same input (see :class:`~.context.DecompositionCache`).
        non_finite: the input had NaN/Inf: a bool where the decomposition
            already synchronised with the host (HOSVD/SVD, ASI's first
            step), otherwise a 0-d bool tensor not read yet (vanilla,
            Gradient Filter, ASI), so that no host synchronisation is added;
            :func:`non_finite_layers` reads them all at once. A float32 sum
            of the input that overflows counts as non-finite too.
    """
    method: str
    input_shape: Tuple[int, ...]
    paper_elements: int
    kept_bytes: int
    ranks: Tuple[int, ...] = ()
    storage_keys: Tuple[Tuple[str, int, int], ...] = ()
    reused: bool = False
    non_finite: Union[bool, Tensor] = False

    @property
    def paper_bytes(self) -> int:
        """Bytes as the paper counts them: fp32, ``4 * paper_elements``."""
        return 4 * self.paper_elements


@dataclass(frozen=True)
class ConvGeometry:
    """Hyper-parameters of a 2-D convolution with symmetric padding."""
    stride: Pair
    padding: Pair
    dilation: Pair
    groups: int

    def output_hw(self, input_hw: Sequence[int],
                  kernel_hw: Sequence[int]) -> Pair:
        """Spatial output size ``(Ho, Wo)``."""
        return tuple(
            (size + 2 * pad - dil * (kernel - 1) - 1) // step + 1
            for size, kernel, step, pad, dil in zip(
                input_hw, kernel_hw, self.stride, self.padding,
                self.dilation))

    def with_groups(self, groups: int) -> 'ConvGeometry':
        return ConvGeometry(self.stride, self.padding, self.dilation, groups)


def check_method(method: str, allowed: Sequence[str] = METHODS) -> str:
    """Return ``method``; ValueError unless it is one of ``allowed``."""
    if method not in allowed:
        raise ValueError(f'method must be one of {tuple(allowed)}, got '
                         f'method={method!r}')
    return method


def check_non_finite(mode: str) -> str:
    """Return ``mode``; ValueError unless it is in :data:`NON_FINITE_MODES`."""
    if mode not in NON_FINITE_MODES:
        raise ValueError(f'non_finite must be one of {NON_FINITE_MODES}, got '
                         f'non_finite={mode!r}')
    return mode


def non_finite_flag(tensor: Tensor) -> Tensor:
    """0-d bool tensor, True where ``tensor`` has NaN/Inf (no host sync).

    A float32 (float64 for float64) sum: no temporary of the tensor's size.
    """
    total = tensor.detach().sum(dtype=decomposition_dtype(tensor.dtype))
    return ~torch.isfinite(total)


def non_finite_layers(stats: Dict[str, 'CompressionStats']) -> List[str]:
    """Keys of ``stats`` whose input had NaN/Inf, in order; the flags still
    on the device are read in one host synchronisation."""
    names = list(stats)
    flags = [stats[name].non_finite for name in names]
    pending = [flag for flag in flags if isinstance(flag, Tensor)]
    if pending:
        device = pending[0].device
        values = iter(torch.stack([f.to(device) for f in pending]).tolist())
        flags = [next(values) if isinstance(flag, Tensor) else flag
                 for flag in flags]
    return [name for name, flag in zip(names, flags) if flag]


def storage_bytes(tensors: Sequence[Tensor]) -> int:
    """Bytes of the distinct untyped storages behind ``tensors``."""
    storages = {}
    for tensor in tensors:
        storage = tensor.untyped_storage()
        storages[storage.data_ptr()] = storage.nbytes()
    return sum(storages.values())


def storage_keys(tensors: Sequence[Tensor]) -> Tuple[Tuple[str, int, int],
                                                     ...]:
    """``(device, data_ptr, nbytes)`` of the distinct untyped storages
    behind ``tensors`` (their nbytes add up to :func:`storage_bytes`)."""
    keys = {}
    for tensor in tensors:
        storage = tensor.untyped_storage()
        key = (str(tensor.device), storage.data_ptr(), storage.nbytes())
        keys[key[:2]] = key
    return tuple(keys.values())


def distinct_kept_bytes(stats: Sequence['CompressionStats']) -> int:
    """Total ``kept_bytes`` of ``stats`` with each storage counted once
    (stats without ``storage_keys`` count their ``kept_bytes`` as is)."""
    keys = {}
    loose = 0
    for item in stats:
        if not item.storage_keys:
            loose += item.kept_bytes
        for key in item.storage_keys:
            keys[key[:2]] = key[2]
    return loose + sum(keys.values())


# ---------------------------------------------------------------------------
# exact convolution gradients with explicit shapes
# ---------------------------------------------------------------------------
def conv_input_grad(grad_output: Tensor, input_shape: Sequence[int],
                    weight: Tensor, geometry: ConvGeometry) -> Tensor:
    """Exact grad_input ``input_shape`` of ``F.conv2d`` (no input needed)."""
    shape_only = grad_output.new_empty(1).expand(tuple(input_shape))
    return torch.ops.aten.convolution_backward(
        grad_output, shape_only, weight, None, list(geometry.stride),
        list(geometry.padding), list(geometry.dilation), False, [0, 0],
        geometry.groups, [True, False, False])[0]


def conv_weight_grad(input: Tensor, grad_output: Tensor,
                     weight_shape: Sequence[int],
                     geometry: ConvGeometry) -> Tensor:
    """Exact grad_weight of shape ``weight_shape`` of ``F.conv2d``."""
    shape_only = grad_output.new_empty(1).expand(tuple(weight_shape))
    return torch.ops.aten.convolution_backward(
        grad_output, input, shape_only, None, list(geometry.stride),
        list(geometry.padding), list(geometry.dilation), False, [0, 0],
        geometry.groups, [False, True, False])[1]


def contract_batch(grad_output: Tensor, batch_factor: Tensor) -> Tensor:
    """Contract ``(B, Cout, Ho, Wo)`` with ``(B, K)`` over the batch.

    Returns ``(K, Cout, Ho, Wo)``.
    """
    batch = grad_output.shape[0]
    rank = batch_factor.shape[1]
    flat = batch_factor.T @ grad_output.reshape(batch, -1)
    return flat.reshape((rank, ) + tuple(grad_output.shape[1:]))


# ---------------------------------------------------------------------------
# grad_weight from compressed activations
# ---------------------------------------------------------------------------
def hosvd_weight_grad_flops(ranks: Sequence[int], input_shape: Sequence[int],
                            weight_shape: Sequence[int],
                            output_shape: Sequence[int],
                            groups: int) -> Tuple[int, int]:
    """Estimated FLOPs ``(factored, rebuilt)`` of the two HOSVD paths.

    Both first contract grad_output with ``U1`` over the batch (shared cost,
    included). Factored: ``X' = S x3 U3 x4 U4``, one groups=1 weight-gradient
    conv with ``K2`` input channels, then ``U2`` maps ``K2`` to the channels
    of each group. Rebuilt: ``S x2 U2 x3 U3 x4 U4`` (``(K1, C, H, W)``) and
    the standard grouped weight-gradient conv.
    """
    batch, channels, height, width = input_shape
    out_channels, group_channels, kernel_h, kernel_w = weight_shape
    rank_b, rank_c = ranks[:2]
    taps = kernel_h * kernel_w
    out_pixels = output_shape[2] * output_shape[3]
    batch_contraction = 2 * batch * rank_b * out_channels * out_pixels

    spatial = {2: height, 3: width}
    factored = (mode_chain_flops(ranks, spatial,
                                 cheapest_mode_order(ranks, spatial)) +
                2 * rank_b * out_channels * rank_c * taps * out_pixels +
                2 * out_channels * rank_c * group_channels * taps)
    rebuilt_modes = {1: channels, 2: height, 3: width}
    rebuilt = (mode_chain_flops(ranks, rebuilt_modes,
                                cheapest_mode_order(ranks, rebuilt_modes)) +
               2 * rank_b * out_channels * group_channels * taps * out_pixels)
    return batch_contraction + factored, batch_contraction + rebuilt


def select_hosvd_weight_grad_path(ranks: Sequence[int],
                                  input_shape: Sequence[int],
                                  weight_shape: Sequence[int],
                                  output_shape: Sequence[int],
                                  groups: int) -> str:
    """``'factored'`` or ``'rebuilt'``, whichever needs fewer FLOPs."""
    factored, rebuilt = hosvd_weight_grad_flops(ranks, input_shape,
                                                weight_shape, output_shape,
                                                groups)
    return 'factored' if factored <= rebuilt else 'rebuilt'


def hosvd_weight_grad(factors: TuckerFactors, grad_output: Tensor,
                      weight_shape: Sequence[int], geometry: ConvGeometry,
                      path: str = 'auto') -> Tensor:
    """grad_weight ``(Cout, C/groups, kh, kw)`` from Tucker factors.

    Computed in the factors' dtype; ``path`` is one of
    :data:`WEIGHT_GRAD_PATHS`.
    """
    if path not in WEIGHT_GRAD_PATHS:
        raise ValueError(f'path must be one of {WEIGHT_GRAD_PATHS}, got '
                         f'path={path!r}')
    if path == 'auto':
        path = select_hosvd_weight_grad_path(factors.ranks, factors.shape,
                                             weight_shape, grad_output.shape,
                                             geometry.groups)
    grad_batch = contract_batch(grad_output.to(factors.core.dtype),
                                factors.factors[0])
    if path == 'factored':
        return _hosvd_weight_grad_factored(factors, grad_batch, weight_shape,
                                           geometry)
    partial_input = multi_mode_product(
        factors.core, {mode: factors.factors[mode].T for mode in (1, 2, 3)})
    return conv_weight_grad(partial_input, grad_batch, weight_shape,
                            geometry)


def _hosvd_weight_grad_factored(factors: TuckerFactors, grad_batch: Tensor,
                                weight_shape: Sequence[int],
                                geometry: ConvGeometry) -> Tensor:
    """The paper's chain: 1x1 contractions around one groups=1 conv.

    Args:
        grad_batch: grad_output contracted with ``U1``, ``(K1, Cout, Ho, Wo)``.
    """
    _, channel_factor, height_factor, width_factor = factors.factors
    spatial_input = multi_mode_product(factors.core, {
        2: height_factor.T,
        3: width_factor.T
    })  # (K1, K2, H, W)
    out_channels, group_channels, kernel_h, kernel_w = weight_shape
    rank_c = channel_factor.shape[1]
    core_grad = conv_weight_grad(spatial_input, grad_batch,
                                 (out_channels, rank_c, kernel_h, kernel_w),
                                 geometry.with_groups(1))
    groups = geometry.groups
    grouped_grad = core_grad.reshape(groups, out_channels // groups, rank_c,
                                     kernel_h * kernel_w)
    grouped_factor = channel_factor.reshape(groups, group_channels, rank_c)
    grad = torch.einsum('gokx,gck->gocx', grouped_grad, grouped_factor)
    return grad.reshape(tuple(weight_shape))


def svd_weight_grad(factors: SVDFactors, grad_output: Tensor,
                    weight_shape: Sequence[int],
                    geometry: ConvGeometry) -> Tensor:
    """grad_weight from SVD factors, without rebuilding the input.

    ``x[b] = sum_k left[b, k] right[k]``, so the weight gradient is the one
    of ``right`` viewed as a batch of K images against grad_output
    contracted with ``left`` over the batch (K <= B: never more work than
    the plain weight gradient).
    """
    right_images = factors.right.reshape((factors.rank, ) +
                                         tuple(factors.shape[1:]))
    grad_batch = contract_batch(grad_output.to(factors.left.dtype),
                                factors.left)
    return conv_weight_grad(right_images, grad_batch, weight_shape, geometry)


# ---------------------------------------------------------------------------
# autograd Functions
# ---------------------------------------------------------------------------
@dataclass(frozen=True)
class _LowRankSpec:
    method: str
    geometry: ConvGeometry
    input_shape: Tuple[int, ...]
    weight_grad_path: str


class _LowRankConv2dFunction(Function):
    """Exact conv; saves the weight and HOSVD/SVD factors of the input."""

    @staticmethod
    def forward(ctx, input: Tensor, weight: Tensor, bias: Optional[Tensor],
                spec: _LowRankSpec, *factor_tensors: Tensor) -> Tensor:
        geometry = spec.geometry
        ctx.spec = spec
        ctx.has_bias = bias is not None
        ctx.save_for_backward(weight, *factor_tensors)
        return F.conv2d(input, weight, bias, geometry.stride,
                        geometry.padding, geometry.dilation, geometry.groups)

    @staticmethod
    @once_differentiable
    def backward(ctx, grad_output: Tensor) -> Tuple[Optional[Tensor], ...]:
        spec: _LowRankSpec = ctx.spec
        weight, *factor_tensors = ctx.saved_tensors
        grad_input = grad_weight = grad_bias = None
        if ctx.needs_input_grad[0]:
            grad_input = conv_input_grad(grad_output, spec.input_shape,
                                         weight, spec.geometry)
        if ctx.needs_input_grad[1]:
            grad_weight = _low_rank_weight_grad(spec, factor_tensors,
                                                grad_output, weight.shape)
            grad_weight = grad_weight.to(weight.dtype)
        if ctx.has_bias and ctx.needs_input_grad[2]:
            grad_bias = grad_output.sum(dim=(0, 2, 3))
        return (grad_input, grad_weight, grad_bias,
                None) + (None, ) * len(factor_tensors)


def _low_rank_weight_grad(spec: _LowRankSpec, factor_tensors: Sequence[Tensor],
                          grad_output: Tensor,
                          weight_shape: Sequence[int]) -> Tensor:
    if spec.method in ('hosvd', ASI):
        core, *factors = factor_tensors
        tucker = TuckerFactors(core=core, factors=tuple(factors))
        return hosvd_weight_grad(tucker, grad_output, weight_shape,
                                 spec.geometry, spec.weight_grad_path)
    left, right = factor_tensors
    svd = SVDFactors(left=left, right=right, shape=spec.input_shape)
    return svd_weight_grad(svd, grad_output, weight_shape, spec.geometry)


class _NonFiniteConv2dFunction(Function):
    """Exact conv of a non-finite input that keeps nothing of it: grad_input
    and grad_bias are exact, grad_weight is NaN (the optimizer guard of
    :class:`~mmseg_hosvd.engine.ActivationCompressionHook` skips the step)."""

    @staticmethod
    def forward(ctx, input: Tensor, weight: Tensor, bias: Optional[Tensor],
                geometry: ConvGeometry) -> Tensor:
        ctx.geometry = geometry
        ctx.input_shape = tuple(input.shape)
        ctx.has_bias = bias is not None
        ctx.save_for_backward(weight)
        return F.conv2d(input, weight, bias, geometry.stride,
                        geometry.padding, geometry.dilation, geometry.groups)

    @staticmethod
    @once_differentiable
    def backward(ctx, grad_output: Tensor) -> Tuple[Optional[Tensor], ...]:
        weight, = ctx.saved_tensors
        grad_input = grad_weight = grad_bias = None
        if ctx.needs_input_grad[0]:
            grad_input = conv_input_grad(grad_output, ctx.input_shape, weight,
                                         ctx.geometry)
        if ctx.needs_input_grad[1]:
            grad_weight = torch.full_like(weight, float('nan'))
        if ctx.has_bias and ctx.needs_input_grad[2]:
            grad_bias = grad_output.sum(dim=(0, 2, 3))
        return grad_input, grad_weight, grad_bias, None


def _non_finite_conv2d(input: Tensor, weight: Tensor, bias: Optional[Tensor],
                       geometry: ConvGeometry, method: str,
                       reused: bool = False
                       ) -> Tuple[Tensor, CompressionStats]:
    """``non_finite='skip'`` fallback of the low-rank methods: nothing of
    the input is kept (zero bytes, no ranks)."""
    output = _NonFiniteConv2dFunction.apply(input, weight, bias, geometry)
    stats = CompressionStats(method=method,
                             input_shape=tuple(input.shape),
                             paper_elements=0,
                             kept_bytes=0,
                             ranks=(),
                             reused=reused,
                             non_finite=True)
    return output, stats


@dataclass(frozen=True)
class _GradientFilterSpec:
    geometry: ConvGeometry
    input_shape: Tuple[int, ...]
    radius: int


class _GradientFilterConv2dFunction(Function):
    """Exact conv; saves the patch-summed input and kernel-summed weight
    (the exact weight when dilation >= radius)."""

    @staticmethod
    def forward(ctx, input: Tensor, weight: Tensor, bias: Optional[Tensor],
                spec: _GradientFilterSpec, input_sum: Tensor,
                saved_weight: Tensor) -> Tensor:
        geometry = spec.geometry
        ctx.spec = spec
        ctx.has_bias = bias is not None
        ctx.weight_shape = tuple(weight.shape)
        ctx.save_for_backward(input_sum, saved_weight)
        return F.conv2d(input, weight, bias, geometry.stride,
                        geometry.padding, geometry.dilation, geometry.groups)

    @staticmethod
    @once_differentiable
    def backward(ctx, grad_output: Tensor) -> Tuple[Optional[Tensor], ...]:
        spec: _GradientFilterSpec = ctx.spec
        geometry = spec.geometry
        input_sum, saved_weight = ctx.saved_tensors
        compute_dtype = _gradient_dtype(grad_output.dtype)
        grad_mean = filter_grad_output(grad_output.to(compute_dtype),
                                       spec.radius)
        grad_input = grad_weight = grad_bias = None
        if ctx.needs_input_grad[0]:
            grad_input = filtered_input_grad(
                grad_mean, saved_weight.to(compute_dtype),
                spec.input_shape[-2:], geometry.stride, spec.radius,
                geometry.dilation, geometry.groups).to(grad_output.dtype)
        if ctx.needs_input_grad[1]:
            grad_weight = filtered_weight_grad(
                input_sum.to(compute_dtype), grad_mean, ctx.weight_shape,
                geometry.groups).to(saved_weight.dtype)
        if ctx.has_bias and ctx.needs_input_grad[2]:
            grad_bias = grad_output.sum(dim=(0, 2, 3))
        return grad_input, grad_weight, grad_bias, None, None, None


def _gradient_dtype(dtype: torch.dtype) -> torch.dtype:
    """float32 for half types (accuracy), otherwise ``dtype``."""
    return torch.float32 if dtype in (torch.float16,
                                      torch.bfloat16) else dtype


# ---------------------------------------------------------------------------
# functional entry point
# ---------------------------------------------------------------------------
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
                      factors: Optional[Union[TuckerFactors,
                                              SVDFactors]] = None,
                      non_finite: str = 'raise'
                      ) -> Tuple[Tensor, CompressionStats]:
    """``F.conv2d`` whose saved input is compressed by ``method``.

    Args:
        input: ``(B, C, H, W)``; never saved for backward.
        weight: ``(Cout, C/groups, kh, kw)``; saved (for grad_input).
        geometry: stride, symmetric padding, dilation, groups.
        method: one of :data:`METHODS`, or ``'asi'`` with ``factors``.
        eps: HOSVD/SVD explained-energy fraction in (0, 1].
        radius: Gradient Filter patch radius (int >= 1).
        name: layer name used in error messages.
        weight_grad_path: HOSVD/ASI only, see :data:`WEIGHT_GRAD_PATHS`.
        factors: low-rank methods only: factors of ``input`` computed
            beforehand (Tucker for hosvd/asi, SVD for svd), saved instead
            of decomposing ``input`` here.
        non_finite: one of :data:`NON_FINITE_MODES`: what HOSVD/SVD do
            with a NaN/Inf input (raise, or keep nothing and give a NaN
            grad_weight).

    Returns:
        The exact conv output and the :class:`CompressionStats` of the call.

    Raises:
        FloatingPointError: HOSVD/SVD input with NaN/Inf (names ``name``),
            unless ``non_finite='skip'``.
    """
    check_method(method, METHODS + (ASI, ))
    check_non_finite(non_finite)
    if method == ASI and factors is None:
        raise ValueError("method='asi' keeps per-layer state: use "
                         'CompressedConv2d, or pass its factors')
    if factors is not None and method not in LOW_RANK_METHODS:
        raise ValueError(f'factors are for {LOW_RANK_METHODS}, not '
                         f'method={method!r}')
    if input.dim() != 4:
        raise ValueError(f'expected a 4-D (B, C, H, W) input, got shape '
                         f'{tuple(input.shape)}')
    input, weight, bias = _autocast_arguments(input, weight, bias)
    with torch.autocast(input.device.type, enabled=False):
        if method == 'gradient_filter':
            return _gradient_filter_conv2d(input, weight, bias, geometry,
                                           check_radius(radius))
        return _low_rank_conv2d(input, weight, bias, geometry, method, eps,
                                name, weight_grad_path, factors,
                                non_finite=non_finite)


def _autocast_arguments(
        input: Tensor, weight: Tensor, bias: Optional[Tensor]
) -> Tuple[Tensor, Tensor, Optional[Tensor]]:
    """Cast as autocast would cast ``F.conv2d``'s arguments (differentiably).

    Inside the autograd Functions autocast is then disabled, so forward and
    backward see one dtype.
    """
    device_type = input.device.type
    if not torch.is_autocast_enabled(device_type):
        return input, weight, bias
    dtype = torch.get_autocast_dtype(device_type)

    def cast(tensor: Optional[Tensor]) -> Optional[Tensor]:
        if tensor is None or tensor.dtype == torch.float64:
            return tensor  # autocast leaves float64 alone
        return tensor.to(dtype)

    return cast(input), cast(weight), cast(bias)


def _low_rank_conv2d(input: Tensor,
                     weight: Tensor,
                     bias: Optional[Tensor],
                     geometry: ConvGeometry,
                     method: str,
                     eps: float,
                     name: str,
                     weight_grad_path: str,
                     factors: Optional[Union[TuckerFactors,
                                             SVDFactors]] = None,
                     reused: bool = False,
                     non_finite: str = 'raise'
                     ) -> Tuple[Tensor, CompressionStats]:
    if factors is None:
        factors = _decompose(method, input.detach(), eps, name, non_finite)
        if factors is None:
            return _non_finite_conv2d(input, weight, bias, geometry, method)
    input_shape = tuple(input.shape)
    if tuple(factors.shape) != input_shape:
        raise ValueError(f'factors of shape {tuple(factors.shape)} for an '
                         f'input of shape {input_shape}')
    spec = _LowRankSpec(method, geometry, input_shape, weight_grad_path)
    output = _LowRankConv2dFunction.apply(input, weight, bias, spec,
                                          *factors.tensors())
    ranks = factors.ranks if isinstance(factors, TuckerFactors) else (
        factors.rank, )
    stats = CompressionStats(method=method,
                             input_shape=input_shape,
                             paper_elements=factors.paper_elements(),
                             kept_bytes=storage_bytes(factors.tensors()),
                             ranks=tuple(ranks),
                             storage_keys=storage_keys(factors.tensors()),
                             reused=reused,
                             non_finite=(non_finite_flag(factors.core)
                                         if method == ASI else False))
    return output, stats


def _decompose(method: str, activation: Tensor, eps: float, name: str,
               non_finite: str = 'raise'
               ) -> Optional[Union[TuckerFactors, SVDFactors]]:
    """HOSVD/SVD factors; None for a NaN/Inf input with ``non_finite=
    'skip'`` (FloatingPointError naming ``name`` with ``'raise'``)."""
    decompose = hosvd if method == 'hosvd' else truncated_svd
    try:
        return decompose(activation, eps)
    except FloatingPointError as error:
        if non_finite == 'skip':
            return None
        raise FloatingPointError(
            f'CompressedConv2d {name!r} (method={method!r}): {error}'
        ) from error


def _gradient_filter_conv2d(input: Tensor, weight: Tensor,
                            bias: Optional[Tensor], geometry: ConvGeometry,
                            radius: int) -> Tuple[Tensor, CompressionStats]:
    output_hw = geometry.output_hw(input.shape[-2:], weight.shape[-2:])
    input_sum = filter_input(input.detach(), geometry.stride, radius,
                             output_hw)
    if keeps_exact_weight(geometry.dilation, radius):
        saved_weight = weight.detach()
    else:
        saved_weight = weight.detach().sum(dim=(2, 3))
    spec = _GradientFilterSpec(geometry, tuple(input.shape), radius)
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


# ---------------------------------------------------------------------------
# module
# ---------------------------------------------------------------------------
class CompressedConv2d(NormFoldingConv2d):
    """``nn.Conv2d`` that keeps a compressed input for its weight gradient.

    A :class:`~.folding.NormFoldingConv2d`: after ``fold_norm``, the
    following eval-mode BatchNorm may be folded into the weight and bias
    passed to :meth:`_conv_forward` (the compressed input is the same).

    All work happens in :meth:`_conv_forward`, so code that calls
    ``conv._conv_forward(x, folded_weight, folded_bias)`` (conv-BN folding)
    composes with it. A call is compressed when ``torch.is_grad_enabled()``
    and ``weight.requires_grad`` (whether or not the module is in training
    mode) and the input is not empty; otherwise it is the plain
    ``nn.Conv2d`` computation, which under ``torch.no_grad()`` keeps nothing
    and leaves :attr:`last_stats` alone.

    Padding: symmetric zero padding is passed to the convolution. Any other
    padding (``padding_mode`` other than ``'zeros'``, or the asymmetric
    padding of ``padding='same'`` with an even effective kernel) is applied
    explicitly first, exactly as ``nn.Conv2d`` does, and the *padded* input
    is compressed (its shape is the one reported in :attr:`last_stats`).

    Args:
        method: one of :data:`MODULE_METHODS`; ``'vanilla'`` compresses
            nothing (the plain conv keeps its full input) and only records
            its size in :attr:`last_stats`; ``'asi'`` keeps its per-layer
            ranks and bases in :attr:`context` under :attr:`name`.
        eps: HOSVD/SVD explained-energy fraction in (0, 1] (ASI: the rank
            rule of the first step, unless the context's tracker has a
            memory budget).
        radius: Gradient Filter patch radius, int >= 1.
        name: module path, used in error messages (and as the ASI state key).
        non_finite: one of :data:`NON_FINITE_MODES`, what a NaN/Inf input
            does: ``'raise'`` (HOSVD/SVD and ASI's first step raise, the
            other methods let NaN propagate, as ``nn.Conv2d``) or
            ``'skip'`` (nothing raises; HOSVD/SVD/ASI-first-step keep
            nothing of the input and give a NaN grad_weight, grad_input and
            grad_bias stay exact). Either way
            :attr:`CompressionStats.non_finite` flags the call.
        Other arguments: as ``nn.Conv2d``.

    Under autocast the arguments are cast as autocast casts ``F.conv2d``'s;
    decompositions run in float32.

    Attributes:
        last_stats: :class:`CompressionStats` of the latest compressed call
            (None before).
        context: :class:`~.context.CompressionContext`: the module's own
            until :func:`~mmseg_hosvd.surgery.install_compression` gives all
            convs of a model one shared context (input sharing, ASI state).

    Raises:
        FloatingPointError: in forward, for HOSVD/SVD (ASI: on its first
            step), when the input contains NaN/Inf and ``non_finite`` is
            ``'raise'``; the message names :attr:`name`.
    """

    def __init__(self,
                 in_channels: int,
                 out_channels: int,
                 kernel_size: Union[int, Pair],
                 stride: Union[int, Pair] = 1,
                 padding: Union[str, int, Pair] = 0,
                 dilation: Union[int, Pair] = 1,
                 groups: int = 1,
                 bias: bool = True,
                 padding_mode: str = 'zeros',
                 device=None,
                 dtype=None,
                 *,
                 method: str = 'hosvd',
                 eps: float = 0.8,
                 radius: int = 2,
                 name: str = '',
                 non_finite: str = 'raise') -> None:
        check_method(method, MODULE_METHODS)
        check_eps(eps)
        check_radius(radius)
        check_non_finite(non_finite)
        super().__init__(in_channels, out_channels, kernel_size, stride,
                         padding, dilation, groups, bias, padding_mode,
                         device, dtype)
        self.method = method
        self.eps = eps
        self.radius = radius
        self.name = name
        self.non_finite = non_finite
        self.last_stats: Optional[CompressionStats] = None
        #: shared with the other compressed convs of a model by
        #: :func:`~mmseg_hosvd.surgery.install_compression`; a plain
        #: attribute (nothing enters ``state_dict``).
        self.context = CompressionContext(share_inputs=False)

    @property
    def method(self) -> str:
        return self._method

    @method.setter
    def method(self, value: str) -> None:
        self._method = check_method(value, MODULE_METHODS)

    @property
    def eps(self) -> float:
        return self._eps

    @eps.setter
    def eps(self, value: float) -> None:
        self._eps = check_eps(value)

    @property
    def radius(self) -> int:
        return self._radius

    @radius.setter
    def radius(self, value: int) -> None:
        self._radius = check_radius(value)

    @property
    def non_finite(self) -> str:
        return self._non_finite

    @non_finite.setter
    def non_finite(self, value: str) -> None:
        self._non_finite = check_non_finite(value)

    @classmethod
    def from_conv(cls,
                  conv: nn.Conv2d,
                  method: str,
                  eps: float = 0.8,
                  radius: int = 2,
                  name: str = '',
                  non_finite: str = 'raise') -> 'CompressedConv2d':
        """A CompressedConv2d sharing ``conv``'s Parameter objects.

        Same hyper-parameters and training flag; no extra parameters or
        buffers, so ``state_dict`` keys equal ``nn.Conv2d``'s. Hooks are not
        copied.
        """
        if not isinstance(conv, nn.Conv2d):
            raise TypeError(f'expected an nn.Conv2d, got {type(conv)}')
        compressed = cls(conv.in_channels,
                         conv.out_channels,
                         conv.kernel_size,
                         stride=conv.stride,
                         padding=conv.padding,
                         dilation=conv.dilation,
                         groups=conv.groups,
                         bias=conv.bias is not None,
                         padding_mode=conv.padding_mode,
                         device='meta',
                         method=method,
                         eps=eps,
                         radius=radius,
                         name=name,
                         non_finite=non_finite)
        _share_parameters(conv, compressed)
        return compressed

    def to_conv(self) -> nn.Conv2d:
        """A plain ``nn.Conv2d`` sharing this module's Parameter objects."""
        conv = nn.Conv2d(self.in_channels,
                         self.out_channels,
                         self.kernel_size,
                         stride=self.stride,
                         padding=self.padding,
                         dilation=self.dilation,
                         groups=self.groups,
                         bias=self.bias is not None,
                         padding_mode=self.padding_mode,
                         device='meta')
        _share_parameters(self, conv)
        return conv

    def _conv_forward(self, input: Tensor, weight: Tensor,
                      bias: Optional[Tensor]) -> Tensor:
        compress = (torch.is_grad_enabled() and weight.requires_grad and
                    input.numel() > 0)
        if not compress:
            return super()._conv_forward(input, weight, bias)
        if input.dim() == 3:  # unbatched (C, H, W), as nn.Conv2d accepts
            return self._conv_forward(input.unsqueeze(0), weight,
                                      bias).squeeze(0)
        if self.method == VANILLA:
            self.last_stats = CompressionStats(
                method=VANILLA,
                input_shape=tuple(input.shape),
                paper_elements=input.numel(),
                kept_bytes=storage_bytes([input]),
                ranks=(),
                storage_keys=storage_keys([input]),
                non_finite=non_finite_flag(input))
            return super()._conv_forward(input, weight, bias)
        padded_input, padding = self._explicitly_padded(input)
        geometry = ConvGeometry(_pair(self.stride), padding,
                                _pair(self.dilation), self.groups)
        if self.method in LOW_RANK_METHODS:
            output, stats = self._low_rank_forward(padded_input, weight, bias,
                                                   geometry)
            self.last_stats = stats
            return output
        output, stats = compressed_conv2d(padded_input,
                                          weight,
                                          bias,
                                          geometry,
                                          method=self.method,
                                          eps=self.eps,
                                          radius=self.radius,
                                          name=self.name,
                                          non_finite=self.non_finite)
        self.last_stats = stats
        return output

    def _low_rank_forward(self, input: Tensor, weight: Tensor,
                          bias: Optional[Tensor], geometry: ConvGeometry
                          ) -> Tuple[Tensor, CompressionStats]:
        """HOSVD/SVD/ASI: factors from the context's cache when another conv
        already decomposed this very input with the same settings, else
        decomposed here (and cached). A non-finite input skipped by
        ``non_finite='skip'`` is cached as None: its readers keep nothing."""
        if input.dim() != 4:
            raise ValueError(f'expected a 4-D (B, C, H, W) input, got shape '
                             f'{tuple(input.shape)}')
        cast_input, weight, bias = _autocast_arguments(input, weight, bias)
        context = self.context
        cache = context.cache
        config = (self.method, self.eps, cast_input.dtype, self.non_finite)
        found = cache.get(input, config) if cache is not None else None
        with torch.autocast(input.device.type, enabled=False):
            if found is not None:
                factors, owner = found
                context.aliases[self.name] = owner
            else:
                factors = self._decompose(cast_input.detach())
                if cache is not None:
                    cache.put(input, config, factors, self.name)
            if factors is None:
                return _non_finite_conv2d(cast_input, weight, bias, geometry,
                                          self.method,
                                          reused=found is not None)
            return _low_rank_conv2d(cast_input, weight, bias, geometry,
                                    self.method, self.eps, self.name, 'auto',
                                    factors=factors,
                                    reused=found is not None)

    def _decompose(self, activation: Tensor
                   ) -> Optional[Union[TuckerFactors, SVDFactors]]:
        """Factors of ``activation``, or None (non-finite, ``'skip'``)."""
        if self.method != ASI:
            return _decompose(self.method, activation, self.eps, self.name,
                              self.non_finite)
        try:
            return self.context.subspaces.decompose(self.name, activation,
                                                    self.eps)
        except FloatingPointError as error:
            if self.non_finite == 'skip':
                return None
            raise FloatingPointError(
                f'CompressedConv2d {self.name!r} (method={self.method!r}): '
                f'{error}') from error

    def _explicitly_padded(self, input: Tensor) -> Tuple[Tensor, Pair]:
        """The input to compress and the symmetric padding left to the conv."""
        left, right, top, bottom = self._reversed_padding_repeated_twice
        if self.padding_mode == 'zeros' and left == right and top == bottom:
            return input, (top, left)
        pads = tuple(self._reversed_padding_repeated_twice)
        if self.padding_mode == 'zeros':  # its backward saves no tensor
            return F.pad(input, pads), (0, 0)
        return _ShapeOnlyPad.apply(input, pads, self.padding_mode), (0, 0)

    def extra_repr(self) -> str:
        text = (f'{super().extra_repr()}, method={self.method!r}, '
                f'eps={self.eps}, radius={self.radius}')
        if self.non_finite != 'raise':
            text += f', non_finite={self.non_finite!r}'
        if self.name:
            text += f', name={self.name!r}'
        return text


class _ShapeOnlyPad(Function):
    """``F.pad`` (reflect/replicate/circular) that saves no tensor.

    Autograd's own padding backward keeps the whole input alive; padding is
    linear, so its backward only needs the input shape: it is the
    vector-Jacobian product of ``F.pad`` at a zero input of that shape.
    """

    @staticmethod
    def forward(ctx, input: Tensor, pads: Tuple[int, ...],
                mode: str) -> Tensor:
        ctx.input_shape = tuple(input.shape)
        ctx.pads = pads
        ctx.mode = mode
        return F.pad(input, pads, mode=mode)

    @staticmethod
    @once_differentiable
    def backward(ctx, grad_output: Tensor) -> Tuple[Optional[Tensor], ...]:
        with torch.enable_grad():
            probe = grad_output.new_zeros(ctx.input_shape, requires_grad=True)
            padded = F.pad(probe, ctx.pads, mode=ctx.mode)
            grad_input, = torch.autograd.grad(padded, probe, grad_output)
        return grad_input, None, None


def _share_parameters(source: nn.Conv2d, target: nn.Conv2d) -> None:
    """Make ``target`` use ``source``'s Parameter objects and training flag."""
    target.weight = source.weight
    target.bias = source.bias
    target.train(source.training)
