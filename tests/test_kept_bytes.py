"""What a compressed layer keeps is never larger than its input: mode ranks
capped by the other modes, the input itself kept where no factorisation is
smaller, and factors stored in the input's dtype (bf16/fp16 included)."""
import time

import pytest
import torch
import torch.nn as nn

from mmseg_hosvd.ops import (LOW_RANK_METHODS, CompressedConv2d,
                             CompressedLinear)


def relative_error(actual: torch.Tensor, expected: torch.Tensor) -> float:
    return ((actual.double() - expected.double()).norm() /
            expected.double().norm().clamp(min=1e-30)).item()


def linear_grads(method, eps, x, dtype, seed=0):
    torch.manual_seed(seed)
    linear = nn.Linear(x.shape[-1], 16).to(dtype)
    layer = CompressedLinear.from_linear(linear, method, eps=eps)
    run_input = x.to(dtype).requires_grad_()
    output = layer(run_input)
    output.backward(torch.ones_like(output))
    return linear.weight.grad, run_input.grad, layer.last_stats, linear


@pytest.mark.parametrize('method', LOW_RANK_METHODS)
def test_long_linear_input_at_eps_1_is_exact_and_no_larger(method):
    """An (M, C) = (1024, 32) input at eps=1 once kept an M x M basis (33x
    its own bytes, 1.6 s); now at most its own bytes, fast and exact."""
    x = torch.randn(1024, 32)
    start = time.perf_counter()
    grad, _, stats, linear = linear_grads(method, 1.0, x, torch.float32)
    elapsed = time.perf_counter() - start
    assert stats.kept_bytes <= x.numel() * x.element_size()
    expected = torch.ones(1024, 16).T @ x
    assert relative_error(grad, expected) < 1e-5
    assert elapsed < 1.0


@pytest.mark.parametrize('eps', [0.9, 1.0])
@pytest.mark.parametrize('method', LOW_RANK_METHODS)
def test_conv_never_keeps_more_than_its_input(method, eps):
    torch.manual_seed(0)
    conv = CompressedConv2d.from_conv(nn.Conv2d(6, 4, 3, padding=1), method,
                                      eps=eps)
    x = torch.randn(2, 6, 5, 5, requires_grad=True)
    conv(x).sum().backward()
    assert conv.last_stats.kept_bytes <= x.numel() * x.element_size()


@pytest.mark.parametrize('dtype', [torch.bfloat16, torch.float16])
@pytest.mark.parametrize('method', ['hosvd', 'svd'])
def test_half_inputs_keep_at_most_their_bytes(method, dtype):
    """bf16/fp16 at eps 0.99 once kept float32 factors (1.85x the input);
    now factors in the input's dtype, gradients close to float32's."""
    torch.manual_seed(1)
    x = torch.randn(4, 24, 64)  # (B, N, C) tokens
    half_grad, half_input_grad, stats, _ = linear_grads(method, 0.99, x,
                                                        dtype)
    assert stats.kept_bytes <= x.numel() * 2
    full_grad, full_input_grad, full_stats, _ = linear_grads(
        method, 0.99, x.to(dtype).float(), torch.float32)
    assert stats.ranks == full_stats.ranks
    assert relative_error(half_grad, full_grad) < 2e-2
    assert relative_error(half_input_grad, full_input_grad) < 2e-2


@pytest.mark.parametrize('dtype', [torch.bfloat16, torch.float16])
def test_half_conv_factors_in_input_dtype(dtype):
    torch.manual_seed(2)
    template = nn.Conv2d(8, 4, 3, padding=1)
    x = torch.randn(4, 8, 12, 12)
    grads = {}
    for run_dtype in (torch.float32, dtype):
        conv = nn.Conv2d(8, 4, 3, padding=1).to(run_dtype)
        conv.load_state_dict(template.to(run_dtype).state_dict())
        layer = CompressedConv2d.from_conv(conv, 'hosvd', eps=0.99)
        run_input = x.to(dtype).to(run_dtype).requires_grad_()
        layer(run_input).float().sum().backward()
        grads[run_dtype] = (conv.weight.grad.float(), layer.last_stats)
    assert grads[dtype][1].kept_bytes <= x.numel() * 2
    assert relative_error(grads[dtype][0], grads[torch.float32][0]) < 2e-2
