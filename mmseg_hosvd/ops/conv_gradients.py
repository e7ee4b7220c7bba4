"""Convolution gradients, exact and from compressed activations.

Layer 2 maths used by the autograd Functions (:mod:`.conv_autograd`): the
exact grad_input / grad_weight of ``F.conv2d`` for given shapes (torch's
:func:`torch.nn.grad.conv2d_input` / :func:`torch.nn.grad.conv2d_weight`),
and grad_weight from Tucker (HOSVD/ASI) or SVD factors of the input,
without rebuilding the input where that is cheaper.
"""
from dataclasses import dataclass
from typing import Sequence, Tuple

import torch
import torch.nn.grad
from torch import Tensor

from ..decomposition import SVDFactors, TuckerFactors
from ..decomposition.unfolding import (cheapest_mode_order, mode_chain_flops,
                                       multi_mode_product)
from .methods import check_weight_grad_path

Pair = Tuple[int, int]


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
        """The same convolution with ``groups`` groups."""
        return ConvGeometry(self.stride, self.padding, self.dilation, groups)


def conv_input_grad(grad_output: Tensor, input_shape: Sequence[int],
                    weight: Tensor, geometry: ConvGeometry) -> Tensor:
    """Exact grad_input of shape ``input_shape`` of ``F.conv2d`` (no input
    needed): :func:`torch.nn.grad.conv2d_input`."""
    return torch.nn.grad.conv2d_input(tuple(input_shape), weight,
                                      grad_output, geometry.stride,
                                      geometry.padding, geometry.dilation,
                                      geometry.groups)


def conv_weight_grad(input: Tensor, grad_output: Tensor,
                     weight_shape: Sequence[int],
                     geometry: ConvGeometry) -> Tensor:
    """Exact grad_weight of shape ``weight_shape`` of ``F.conv2d``:
    :func:`torch.nn.grad.conv2d_weight`."""
    return torch.nn.grad.conv2d_weight(input, tuple(weight_shape),
                                       grad_output, geometry.stride,
                                       geometry.padding, geometry.dilation,
                                       geometry.groups)


def contract_batch(grad_output: Tensor, batch_factor: Tensor) -> Tensor:
    """Contract ``(B, Cout, Ho, Wo)`` with ``(B, K)`` over the batch.

    Returns ``(K, Cout, Ho, Wo)``.
    """
    batch = grad_output.shape[0]
    rank = batch_factor.shape[1]
    flat = batch_factor.T @ grad_output.reshape(batch, -1)
    return flat.reshape((rank, ) + tuple(grad_output.shape[1:]))


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
    :data:`~.methods.WEIGHT_GRAD_PATHS`.
    """
    if check_weight_grad_path(path) == 'auto':
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
