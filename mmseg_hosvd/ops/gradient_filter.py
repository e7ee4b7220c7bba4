"""Gradient Filter math (Yang, Li, Marculescu, CVPR 2023), radius ``r``.

Pure PyTorch, no autograd Function here (see :mod:`.conv_autograd`). For a conv with
stride ``(sh, sw)`` whose output is ``(Ho, Wo)``:

* the patch grid has ``(ceil(Ho / r), ceil(Wo / r))`` patches; an input
  patch is ``(r*sh, r*sw)`` pixels and an output patch ``(r, r)`` pixels;
* each grid is centred: it starts ``ceil((grid * patch - size) / 2)``
  pixels before the first row/column (zero padding; a negative value crops);
* forward saves the input summed over its patches, ``(B, C, gh, gw)``, and
  the weight summed over its kernel taps, ``(Cout, C/groups)``;
* backward averages grad_output over its patches (mean over the pixels that
  exist, padding excluded);
  ``grad_weight[co, ci, :, :] = sum_{b, patches} mean_grad_out * x_sum``
  (the same value on every kernel tap);
  ``grad_input`` is the kernel-summed weight applied (as a 1x1 transposed
  conv) to the mean grad_output, broadcast back over each input patch;
* when the dilation is ``>= r`` (and not 1) the exact weight is kept and
  grad_input on the patch grid is a transposed conv with dilation
  ``dilation // r`` (centred, like a "same" conv);
* grad_bias is exact (computed by the caller).
"""
import math
from typing import Sequence, Tuple

import torch
import torch.nn.functional as F
from torch import Tensor

Pair = Tuple[int, int]


def check_radius(radius: int) -> int:
    """Return ``radius``; ValueError unless it is an int >= 1 (not bool)."""
    if isinstance(radius, bool) or not isinstance(radius, int) or radius < 1:
        raise ValueError(f'radius must be an int >= 1, got radius={radius!r}')
    return radius


def patch_grid(output_hw: Sequence[int], radius: int) -> Pair:
    """``(ceil(Ho / r), ceil(Wo / r))``: patches per output column/row."""
    return tuple(math.ceil(size / radius) for size in output_hw)


def centred_offset(grid: int, patch: int, size: int) -> int:
    """Pixels of padding before the first patch (negative: pixels cropped)."""
    return math.ceil((grid * patch - size) / 2)


def _grid_padding(size_hw: Sequence[int], patch: Pair,
                  grid: Pair) -> Tuple[int, int, int, int]:
    """``F.pad`` amounts ``(left, right, top, bottom)`` that make a tensor of
    spatial size ``size_hw`` exactly ``grid * patch``, centred."""
    height, width = size_hw
    (patch_h, patch_w), (grid_h, grid_w) = patch, grid
    top = centred_offset(grid_h, patch_h, height)
    left = centred_offset(grid_w, patch_w, width)
    bottom = grid_h * patch_h - height - top
    right = grid_w * patch_w - width - left
    return left, right, top, bottom


def sum_over_patches(x: Tensor, patch: Pair, grid: Pair) -> Tensor:
    """Sum ``(B, C, H, W)`` over centred ``patch`` blocks: ``(B, C, gh, gw)``
    """
    batch, channels = x.shape[:2]
    padded = F.pad(x, _grid_padding(x.shape[-2:], patch, grid))
    blocks = padded.reshape(batch, channels, grid[0], patch[0], grid[1],
                            patch[1])
    return blocks.sum(dim=(3, 5))


def mean_over_patches(x: Tensor, patch: Pair, grid: Pair) -> Tensor:
    """Mean of ``(B, C, H, W)`` over the existing pixels of each centred
    ``patch`` block: ``(B, C, gh, gw)``."""
    ones = x.new_ones((1, 1) + tuple(x.shape[-2:]))
    counts = sum_over_patches(ones, patch, grid).clamp(min=1)
    return sum_over_patches(x, patch, grid) / counts


def broadcast_over_patches(x: Tensor, patch: Pair,
                           size_hw: Sequence[int]) -> Tensor:
    """Copy each value of ``(B, C, gh, gw)`` to every pixel of its centred
    ``patch`` block: ``(B, C, H, W)`` (pixels outside the grid get 0)."""
    batch, channels, grid_h, grid_w = x.shape
    expanded = x[:, :, :, None, :, None].expand(
        batch, channels, grid_h, patch[0], grid_w, patch[1])
    full = expanded.reshape(batch, channels, grid_h * patch[0],
                            grid_w * patch[1])
    padding = _grid_padding(size_hw, patch, (grid_h, grid_w))
    return F.pad(full, [-amount for amount in padding])


def input_patch(stride: Pair, radius: int) -> Pair:
    """Input patch size ``(r * sh, r * sw)``."""
    return radius * stride[0], radius * stride[1]


def filter_input(x: Tensor, stride: Pair, radius: int,
                 output_hw: Sequence[int]) -> Tensor:
    """Input summed over ``(r*sh, r*sw)`` patches, ``(B, C, gh, gw)``."""
    return sum_over_patches(x, input_patch(stride, radius),
                            patch_grid(output_hw, radius))


def filter_grad_output(grad_output: Tensor, radius: int) -> Tensor:
    """grad_output averaged over ``(r, r)`` patches, ``(B, Cout, gh, gw)``."""
    grid = patch_grid(grad_output.shape[-2:], radius)
    return mean_over_patches(grad_output, (radius, radius), grid)


def keeps_exact_weight(dilation: Pair, radius: int) -> bool:
    """Whether the dilated variant applies (dilation >= r and not 1)."""
    return min(dilation) >= radius and max(dilation) > 1


def filtered_weight_grad(x_sum: Tensor, grad_mean: Tensor,
                         weight_shape: Sequence[int], groups: int) -> Tensor:
    """``grad_weight`` of shape ``weight_shape`` ``(Cout, C/groups, kh, kw)``.

    Args:
        x_sum: patch-summed input ``(B, C, gh, gw)``.
        grad_mean: patch-mean grad_output ``(B, Cout, gh, gw)``.
    """
    out_channels, group_channels = weight_shape[:2]
    batch = x_sum.shape[0]
    grad_view = grad_mean.reshape(batch, groups, out_channels // groups, -1)
    input_view = x_sum.reshape(batch, groups, group_channels, -1)
    per_pair = torch.einsum('bgop,bgip->goi', grad_view, input_view)
    per_pair = per_pair.reshape(out_channels, group_channels, 1, 1)
    return per_pair.expand(tuple(weight_shape)).contiguous()


def filtered_input_grad(grad_mean: Tensor, saved_weight: Tensor,
                        input_hw: Sequence[int], stride: Pair, radius: int,
                        dilation: Pair, groups: int) -> Tensor:
    """Gradient Filter ``grad_input`` of shape ``(B, C, H, W)``.

    Args:
        grad_mean: patch-mean grad_output ``(B, Cout, gh, gw)``.
        saved_weight: the kernel-summed weight ``(Cout, C/groups)``, or the
            exact weight ``(Cout, C/groups, kh, kw)`` when
            :func:`keeps_exact_weight`.
    """
    if saved_weight.dim() == 2:
        patch_grad = _summed_weight_input_grad(grad_mean, saved_weight,
                                               groups)
    else:
        reduced = (dilation[0] // radius, dilation[1] // radius)
        patch_grad = _dilated_input_grad(grad_mean, saved_weight, reduced,
                                         groups)
    return broadcast_over_patches(patch_grad, input_patch(stride, radius),
                                  input_hw)


def _summed_weight_input_grad(grad_mean: Tensor, weight_sum: Tensor,
                              groups: int) -> Tensor:
    """1x1 transposed conv of ``(B, Cout, gh, gw)`` by ``(Cout, C/groups)``."""
    batch, out_channels, grid_h, grid_w = grad_mean.shape
    group_channels = weight_sum.shape[1]
    grad_view = grad_mean.reshape(batch, groups, out_channels // groups, -1)
    weight_view = weight_sum.reshape(groups, out_channels // groups,
                                     group_channels)
    patch_grad = torch.einsum('bgop,goi->bgip', grad_view, weight_view)
    return patch_grad.reshape(batch, groups * group_channels, grid_h, grid_w)


def _dilated_input_grad(grad_mean: Tensor, weight: Tensor, dilation: Pair,
                        groups: int) -> Tensor:
    """Transposed conv with ``dilation`` on the patch grid, centred crop."""
    full = F.conv_transpose2d(grad_mean, weight, groups=groups,
                              dilation=dilation)
    grid_h, grid_w = grad_mean.shape[-2:]
    top = dilation[0] * (weight.shape[2] - 1) // 2
    left = dilation[1] * (weight.shape[3] - 1) // 2
    return full[:, :, top:top + grid_h, left:left + grid_w]
