"""Tests of the Gradient Filter (mmseg_hosvd.ops.gradient_filter and its
autograd op) against a direct loop implementation of its definition."""
import math

import pytest
import torch
import torch.nn as nn
import torch.nn.functional as F

from mmseg_hosvd.ops import CompressedConv2d
from mmseg_hosvd.ops.gradient_filter import (broadcast_over_patches,
                                             mean_over_patches, patch_grid,
                                             sum_over_patches)


pytestmark = pytest.mark.usefixtures('single_thread')


def patch_members(index: int, patch: int, offset: int, size: int):
    """Pixels of patch ``index`` of a grid starting ``offset`` pixels before
    pixel 0 (only the pixels that exist)."""
    start = index * patch - offset
    return [i for i in range(start, start + patch) if 0 <= i < size]


def reference_gradient_filter(x, weight, grad_output, stride, dilation,
                              radius, groups):
    """The definition, with explicit loops: (grad_input, grad_weight)."""
    batch, channels, height, width = x.shape
    out_channels, group_channels, kernel_h, kernel_w = weight.shape
    out_h, out_w = grad_output.shape[-2:]
    grid_h, grid_w = math.ceil(out_h / radius), math.ceil(out_w / radius)
    # output patches: r x r, centred; input patches: r*stride, centred
    out_off_h = math.ceil((grid_h * radius - out_h) / 2)
    out_off_w = math.ceil((grid_w * radius - out_w) / 2)
    in_patch_h, in_patch_w = radius * stride[0], radius * stride[1]
    in_off_h = math.ceil((grid_h * in_patch_h - height) / 2)
    in_off_w = math.ceil((grid_w * in_patch_w - width) / 2)

    grad_mean = torch.zeros(batch, out_channels, grid_h, grid_w,
                            dtype=x.dtype)
    input_sum = torch.zeros(batch, channels, grid_h, grid_w, dtype=x.dtype)
    for p in range(grid_h):
        for q in range(grid_w):
            rows = patch_members(p, radius, out_off_h, out_h)
            cols = patch_members(q, radius, out_off_w, out_w)
            grad_mean[:, :, p, q] = grad_output[:, :, rows][:, :, :,
                                                           cols].mean((2, 3))
            rows = patch_members(p, in_patch_h, in_off_h, height)
            cols = patch_members(q, in_patch_w, in_off_w, width)
            if rows and cols:
                input_sum[:, :, p, q] = x[:, :, rows][:, :, :,
                                                      cols].sum((2, 3))

    out_per_group = out_channels // groups
    grad_weight = torch.zeros_like(weight)
    for co in range(out_channels):
        group = co // out_per_group
        for ci in range(group_channels):
            value = (grad_mean[:, co] *
                     input_sum[:, group * group_channels + ci]).sum()
            grad_weight[co, ci] = value  # every kernel tap

    exact_weight = min(dilation) >= radius and max(dilation) > 1
    patch_grad = torch.zeros(batch, channels, grid_h, grid_w, dtype=x.dtype)
    weight_sum = weight.sum((2, 3))
    reduced = (dilation[0] // radius, dilation[1] // radius)
    centre = (reduced[0] * (kernel_h - 1) // 2,
              reduced[1] * (kernel_w - 1) // 2)
    for co in range(out_channels):
        group = co // out_per_group
        for ci in range(group_channels):
            c = group * group_channels + ci
            if not exact_weight:
                patch_grad[:, c] += weight_sum[co, ci] * grad_mean[:, co]
                continue
            for p in range(grid_h):
                for q in range(grid_w):
                    for i in range(kernel_h):
                        for j in range(kernel_w):
                            src_p = p + centre[0] - i * reduced[0]
                            src_q = q + centre[1] - j * reduced[1]
                            if 0 <= src_p < grid_h and 0 <= src_q < grid_w:
                                patch_grad[:, c, p, q] += (
                                    weight[co, ci, i, j] *
                                    grad_mean[:, co, src_p, src_q])

    grad_input = torch.zeros_like(x)
    for h in range(height):
        p = (h + in_off_h) // in_patch_h
        if not 0 <= p < grid_h:
            continue
        for w in range(width):
            q = (w + in_off_w) // in_patch_w
            if 0 <= q < grid_w:
                grad_input[:, :, h, w] = patch_grad[:, :, p, q]
    return grad_input, grad_weight


# (in, out, groups, kernel, stride, padding, dilation, radius, H, W)
CASES = [
    (3, 4, 1, 3, 1, 1, 1, 2, 9, 11),      # stride 1, partial patches
    (3, 4, 1, 3, 2, 1, 1, 2, 13, 10),     # stride 2
    (4, 4, 1, 3, 1, 1, 1, 4, 12, 15),     # radius 4
    (4, 6, 2, 3, 2, 1, 1, 2, 11, 9),      # groups
    (4, 4, 4, 3, 1, 1, 1, 2, 10, 9),      # depthwise
    (4, 8, 4, 3, 2, 1, 1, 2, 10, 12),     # channel multiplier
    (3, 5, 1, 3, 1, 4, 4, 2, 11, 12),     # dilation >= r (dilated rule)
    (3, 5, 1, 3, 1, 6, 6, 3, 13, 11),     # dilation 6, r 3 -> 2
    (4, 4, 4, 3, 1, 4, 4, 4, 9, 12),      # depthwise, dilation == r
    (4, 4, 1, 3, 2, 2, 2, 2, 11, 11),     # stride == dilation == r
    (3, 4, 1, 1, 1, 0, 1, 2, 7, 9),       # 1x1 conv
    (3, 4, 1, 5, 1, 0, 1, 2, 12, 11),     # no padding: grid crops input
    (3, 4, 1, 3, 1, 1, 1, 1, 6, 7),       # radius 1
]


@pytest.mark.parametrize('case', CASES)
@pytest.mark.parametrize('bias', [True, False])
def test_gradient_filter_matches_definition(case, bias):
    (in_channels, out_channels, groups, kernel, stride, padding, dilation,
     radius, height, width) = case
    torch.manual_seed(0)
    conv = CompressedConv2d(in_channels, out_channels, kernel, stride=stride,
                            padding=padding, dilation=dilation,
                            groups=groups, bias=bias,
                            method='gradient_filter', radius=radius,
                            dtype=torch.float64)
    x = torch.randn(2, in_channels, height, width, dtype=torch.float64,
                    requires_grad=True)
    output = conv(x)
    expected_output = F.conv2d(x, conv.weight, conv.bias, conv.stride,
                               conv.padding, conv.dilation, groups)
    assert torch.equal(output, expected_output)  # forward is exact
    grad_output = torch.randn_like(output)
    params = [x, conv.weight] + ([conv.bias] if bias else [])
    grads = torch.autograd.grad(output, params, grad_output)
    expected_input, expected_weight = reference_gradient_filter(
        x.detach(), conv.weight.detach(), grad_output, conv.stride,
        conv.dilation, radius, groups)
    torch.testing.assert_close(grads[0], expected_input)
    torch.testing.assert_close(grads[1], expected_weight)
    if bias:
        torch.testing.assert_close(grads[2], grad_output.sum((0, 2, 3)))

    stats = conv.last_stats
    grid = patch_grid(output.shape[-2:], radius)
    assert stats.method == 'gradient_filter' and stats.ranks == ()
    assert stats.paper_elements == 2 * in_channels * grid[0] * grid[1]
    assert stats.kept_bytes == 8 * stats.paper_elements  # float64
    assert stats.paper_bytes == 4 * stats.paper_elements


def test_gradient_filter_float32_and_bfloat16():
    torch.manual_seed(1)
    conv = CompressedConv2d(4, 6, 3, padding=1, stride=2,
                            method='gradient_filter', radius=2)
    x = torch.randn(2, 4, 16, 16, requires_grad=True)
    conv(x).sum().backward()
    assert conv.last_stats.kept_bytes == 4 * conv.last_stats.paper_elements
    assert conv.last_stats.paper_elements == 2 * 4 * 4 * 4
    grad_weight, grad_input = conv.weight.grad.clone(), x.grad.clone()

    half = CompressedConv2d.from_conv(
        nn.Conv2d(4, 6, 3, padding=1, stride=2).to(torch.bfloat16),
        'gradient_filter', radius=2)
    with torch.no_grad():
        half.weight.copy_(conv.weight)
        half.bias.copy_(conv.bias)
    x_half = x.detach().to(torch.bfloat16).requires_grad_()
    half(x_half).sum().backward()
    assert half.weight.grad.dtype == torch.bfloat16
    assert half.last_stats.kept_bytes == 2 * half.last_stats.paper_elements
    # bf16 keeps ~3 significant digits
    torch.testing.assert_close(half.weight.grad.float(), grad_weight,
                               rtol=2e-2, atol=2e-2)
    torch.testing.assert_close(x_half.grad.float(), grad_input, rtol=2e-2,
                               atol=2e-2)


def test_patch_helpers():
    x = torch.arange(1.0, 1.0 + 5 * 7).reshape(1, 1, 5, 7)
    grid = patch_grid((5, 7), 2)  # (3, 4): pads 1 row, 1 column
    assert grid == (3, 4)
    sums = sum_over_patches(x, (2, 2), grid)
    # centred: the first patch row/column holds one real row/column
    assert sums[0, 0, 0, 0] == x[0, 0, 0, 0]
    assert sums[0, 0, 1, 1] == x[0, 0, 1:3, 1:3].sum()
    assert sums.sum() == x.sum()
    means = mean_over_patches(x, (2, 2), grid)
    assert means[0, 0, 0, 0] == x[0, 0, 0, 0]
    assert means[0, 0, 2, 3] == x[0, 0, 3:5, 5:7].mean()
    spread = broadcast_over_patches(sums, (2, 2), (5, 7))
    assert spread.shape == x.shape
    assert spread[0, 0, 1, 1] == spread[0, 0, 2, 2] == sums[0, 0, 1, 1]
    # a grid smaller than the input crops (centred), broadcasting gives 0
    cropped = sum_over_patches(x, (2, 2), (2, 3))
    assert cropped[0, 0, 0, 0] == x[0, 0, 0:2, 0:2].sum()
    spread = broadcast_over_patches(cropped, (2, 2), (5, 7))
    assert torch.all(spread[0, 0, 4] == 0) and torch.all(spread[..., 6] == 0)


def test_gradient_filter_saves_pooled_input_only():
    x = torch.randn(2, 8, 32, 32, requires_grad=True)
    conv = CompressedConv2d(8, 8, 3, padding=1, method='gradient_filter',
                            radius=4)
    saved = []

    def pack(tensor):
        saved.append(tuple(tensor.shape))
        return tensor

    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        conv(x)
    assert sorted(saved) == sorted([(2, 8, 8, 8), (8, 8)])


@pytest.mark.parametrize('radius', [0, -1, 1.5, True, '2'])
def test_radius_validation(radius):
    with pytest.raises(ValueError, match='radius'):
        CompressedConv2d(3, 3, 3, method='gradient_filter', radius=radius)
