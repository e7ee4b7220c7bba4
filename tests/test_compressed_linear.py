"""Tests of mmseg_hosvd.ops.linear, .linear_autograd and .linear_gradients (CompressedLinear:
HOSVD/SVD/ASI autograd on (M, C), (D0, D1, C) and (B, H, W, C) inputs)."""
import copy
import itertools

import pytest
import torch
import torch.nn as nn
import torch.nn.functional as F

from mmseg_hosvd.ops import (COMPRESSED_BACKWARD_NODES, LINEAR_METHODS,
                             CompressedConv2d, CompressedLinear,
                             CompressionContext, SubspaceTracker,
                             explained_variance_rank, hosvd,
                             hosvd_paper_elements)
from mmseg_hosvd.ops import truncated_svd
from mmseg_hosvd.ops.linear_gradients import (channel_first, natural_view,
                                              svd_linear_weight_grad,
                                              tucker_linear_weight_grad)

pytestmark = pytest.mark.usefixtures('single_thread')

# (M, C), tokens (B, N, C), Swin/ConvNeXt (B, H, W, C); C = 6
SHAPES = {'2d': (11, 6), '3d': (4, 7, 6), '4d': (4, 3, 5, 6)}
OUT_FEATURES = 5
LOW_RANK = ('hosvd', 'svd', 'asi')


def relative_error(actual: torch.Tensor, expected: torch.Tensor) -> float:
    scale = expected.abs().max().clamp(min=1e-30)
    return ((actual - expected).abs().max() / scale).item()


def make_linear(bias=True, dtype=torch.float64, seed=0,
                in_features=6, out_features=OUT_FEATURES) -> nn.Linear:
    torch.manual_seed(seed)
    return nn.Linear(in_features, out_features, bias=bias, dtype=dtype)


def grads(module, linear, x, grad_output):
    """Output and grads of (input, weight[, bias]) of ``module`` (whose
    Parameters are ``linear``'s)."""
    x = x.detach().requires_grad_()
    params = [p for p in (linear.weight, linear.bias) if p is not None]
    output = module(x)
    return output, torch.autograd.grad(output, [x] + params, grad_output)


def inputs(shape, dtype=torch.float64, seed=1):
    generator = torch.Generator().manual_seed(seed)
    x = torch.randn(shape, dtype=dtype, generator=generator)
    grad_output = torch.randn(shape[:-1] + (OUT_FEATURES, ), dtype=dtype,
                              generator=generator)
    return x, grad_output


def low_rank_tokens(shape, ranks, noise, seed=4):
    """A ``shape`` tensor of Tucker ranks ``ranks`` plus ``noise``."""
    generator = torch.Generator().manual_seed(seed)
    x = torch.randn(ranks, generator=generator)
    for mode, (size, rank) in enumerate(zip(shape, ranks)):
        factor = torch.randn(size, rank, generator=generator)
        x = torch.tensordot(x, factor, dims=([mode], [1])).movedim(-1, mode)
    x = x / x.std()
    return x + noise * torch.randn(shape, generator=generator)


# --------------------------------------------------------- eps = 1 exactness
@pytest.mark.parametrize('bias', [True, False])
@pytest.mark.parametrize('shape', list(SHAPES))
@pytest.mark.parametrize('method', LOW_RANK)
def test_full_rank_gradients_are_exact(method, shape, bias):
    linear = make_linear(bias)
    compressed = CompressedLinear.from_linear(linear, method, eps=1.0,
                                              name='head.fc')
    # asi: two steps (the first one fixes full ranks: identity bases)
    for seed in (1, 2):
        x, grad_output = inputs(SHAPES[shape], seed=seed)
        expected_out, expected = grads(linear, linear, x, grad_output)
        output, actual = grads(compressed, linear, x, grad_output)
        assert torch.equal(output, expected_out)
        torch.testing.assert_close(actual[0], expected[0], rtol=1e-12,
                                   atol=0)
        assert relative_error(actual[1], expected[1]) < 1e-10
        if bias:
            assert relative_error(actual[2], expected[2]) < 1e-10
        stats = compressed.last_stats
        assert stats.input_shape == SHAPES[shape]
        view = channel_first(natural_view(x).shape)
        rows = x.shape[0]
        assert stats.ranks == (view if method != 'svd' else
                               (min(rows, x.numel() // rows), ))


# ----------------------------------------------------- eps < 1 consistency
def reconstruction_weight_grad(reconstruction, x_shape, grad_output):
    """Plain weight gradient of the (reconstructed) input."""
    rebuilt = reconstruction.reshape(x_shape)
    return grad_output.reshape(-1, OUT_FEATURES).T @ rebuilt.reshape(
        -1, x_shape[-1])


@pytest.mark.parametrize('shape', list(SHAPES))
@pytest.mark.parametrize('method', LOW_RANK)
def test_low_rank_weight_grad_matches_reconstruction(method, shape):
    linear = make_linear()
    context = CompressionContext(share_inputs=False,
                                 subspaces=SubspaceTracker(init='hosvd'))
    compressed = CompressedLinear.from_linear(linear, method, eps=0.7)
    compressed.context = context  # asi: the first step keeps HOSVD factors
    x, grad_output = inputs(SHAPES[shape], seed=3)
    view = natural_view(x)
    if method == 'svd':
        rank, reconstruction = reference_svd(x, 0.7)
        ranks = (rank, )
        assert rank < min(x.shape[0], x.numel() // x.shape[0])  # truncated
    else:
        factors = hosvd(view, 0.7)
        ranks = channel_first(factors.ranks)
        reconstruction = factors.reconstruct()
        assert factors.ranks != view.shape  # truncated
    expected_weight = reconstruction_weight_grad(reconstruction, x.shape,
                                                 grad_output)
    expected_out, expected = grads(linear, linear, x, grad_output)
    output, actual = grads(compressed, linear, x, grad_output)
    assert compressed.last_stats.ranks == ranks
    assert torch.equal(output, expected_out)
    torch.testing.assert_close(actual[0], expected[0], rtol=1e-12, atol=0)
    torch.testing.assert_close(actual[2], expected[2])
    torch.testing.assert_close(actual[1], expected_weight, rtol=0, atol=1e-10)


def reference_svd(x, eps):
    """Rank by the eps rule and truncated reconstruction of the ``(D0,
    rest)`` reshape of ``x``, by ``torch.linalg.svd``."""
    matrix = x.reshape(x.shape[0], -1)
    left, values, right = torch.linalg.svd(matrix, full_matrices=False)
    rank = int(explained_variance_rank(values.square(), eps))
    return rank, (left[:, :rank] * values[:rank]) @ right[:rank]


@pytest.mark.parametrize('shape', [(40, 6), (6, 40), (30, 2, 3)])
@pytest.mark.parametrize('eps', [0.6, 1.0])
def test_row_svd_takes_the_smaller_gram(shape, eps):
    x = torch.randn(shape, dtype=torch.float64,
                    generator=torch.Generator().manual_seed(5))
    factors = truncated_svd(natural_view(x), eps)
    rank, reconstruction = reference_svd(x, eps)
    assert factors.rank == rank <= min(shape[0], x.numel() // shape[0])
    assert factors.left.shape == (shape[0], rank)
    torch.testing.assert_close(factors.left.T @ factors.left,
                               torch.eye(rank, dtype=torch.float64))
    torch.testing.assert_close(factors.reconstruct().reshape(x.shape),
                               reconstruction.reshape(x.shape))


@pytest.mark.parametrize('projected', [
    subset for size in range(4)
    for subset in itertools.combinations(range(3), size)
])
def test_every_tucker_split_gives_the_same_weight_grad(projected):
    generator = torch.Generator().manual_seed(6)
    x = torch.randn(4, 5, 3, 6, dtype=torch.float64, generator=generator)
    grad_output = torch.randn(4, 5, 3, OUT_FEATURES, dtype=torch.float64,
                              generator=generator)
    factors = hosvd(x, 0.8)
    expected = reconstruction_weight_grad(factors.reconstruct(), x.shape,
                                          grad_output)
    actual = tucker_linear_weight_grad(factors, grad_output, projected)
    torch.testing.assert_close(actual, expected, rtol=0, atol=1e-10)


def test_svd_weight_grad_matches_reconstruction():
    x, grad_output = inputs((6, 4, 6), seed=7)
    factors = truncated_svd(natural_view(x), 0.6)
    assert factors.rank < x.shape[0]
    expected = reconstruction_weight_grad(factors.reconstruct(), x.shape,
                                          grad_output)
    actual = svd_linear_weight_grad(factors, natural_view(grad_output))
    torch.testing.assert_close(actual, expected, rtol=0, atol=1e-10)


def test_tokens_in_either_order_give_the_same_hosvd():
    """(B, N, C) and its (N, B, C) transpose: the same Tucker modes."""
    linear = make_linear()
    compressed = CompressedLinear.from_linear(linear, 'hosvd', eps=0.7)
    x, grad_output = inputs((3, 8, 6), seed=8)
    _, batch_first = grads(compressed, linear, x, grad_output)
    batch_ranks = compressed.last_stats.ranks
    _, seq_first = grads(compressed, linear, x.transpose(0, 1),
                         grad_output.transpose(0, 1))
    seq_ranks = compressed.last_stats.ranks
    assert (seq_ranks[0], seq_ranks[2]) == (batch_ranks[2], batch_ranks[0])
    torch.testing.assert_close(seq_first[1], batch_first[1], rtol=1e-10,
                               atol=1e-12)


# ------------------------------------------------------------ shared inputs
@pytest.mark.parametrize('method', LOW_RANK)
def test_shared_input_is_decomposed_once(method):
    x, grad_output = inputs((3, 7, 6), seed=9)
    x = x.float()
    grad_output = grad_output.float()
    results = {}
    for share in (True, False):
        # asi: start from the exact factors so that both runs agree
        tracker = SubspaceTracker(init='hosvd')
        shared = CompressionContext(share_inputs=True, subspaces=tracker)
        layers = []
        for seed, name in enumerate(('q', 'k')):
            # eps 0.5: factors smaller than this small input (at 0.8 an
            # SVD would be larger, so each layer would keep the input)
            layer = CompressedLinear.from_linear(
                make_linear(dtype=torch.float32, seed=seed), method,
                eps=0.5, name=name)
            layer.context = shared if share else CompressionContext(
                share_inputs=False, subspaces=SubspaceTracker(init='hosvd'))
            layers.append(layer)
        source = x.clone().requires_grad_()
        saved = []

        def pack(tensor):
            saved.append(tensor)
            return tensor

        with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
            outputs = [layer(source) for layer in layers]
        params = [source] + [p for layer in layers for p in
                             (layer.weight, layer.bias)]
        results[share] = torch.autograd.grad(
            outputs, params, [grad_output, 2 * grad_output])
        stats = [layer.last_stats for layer in layers]
        if share:
            assert [s.reused for s in stats] == [False, True]
            assert stats[0].storage_keys == stats[1].storage_keys
            assert stats[0].kept_bytes == stats[1].kept_bytes
            assert shared.aliases == {'k': 'q'}
            factor_ptrs = [t.untyped_storage().data_ptr() for t in saved
                           if t is not layers[0].weight and
                           t is not layers[1].weight]
            # each layer saved the same factor storages
            assert len(factor_ptrs) == 2 * len(set(factor_ptrs))
            if method == 'asi':
                assert set(tracker.layers) == {'q'}
        else:
            assert not any(s.reused for s in stats)
            assert stats[0].storage_keys != stats[1].storage_keys
    for a, b in zip(results[True], results[False]):
        torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-6)


def test_conv_and_linear_never_share_factors():
    context = CompressionContext(share_inputs=True)
    conv = CompressedConv2d(6, 4, 1, method='hosvd', eps=0.9, name='conv')
    linear = CompressedLinear(6, 4, method='hosvd', eps=0.9, name='fc')
    conv.context = linear.context = context
    x = torch.randn(2, 6, 5, 6, requires_grad=True)  # read both ways
    (conv(x).sum() + linear(x).sum()).backward()
    assert not linear.last_stats.reused and not conv.last_stats.reused
    assert context.aliases == {}


# ------------------------------------------------ from_linear / state_dict
@pytest.mark.parametrize('bias', [True, False])
@pytest.mark.parametrize('kind', [
    nn.Linear, nn.modules.linear.NonDynamicallyQuantizableLinear
])
def test_from_linear_shares_parameters_and_state_dict_keys(kind, bias):
    torch.manual_seed(0)
    linear = kind(6, 4, bias=bias).eval()
    compressed = CompressedLinear.from_linear(linear, 'svd', eps=0.9,
                                              name='decode_head.fc',
                                              non_finite='skip')
    assert type(compressed) is CompressedLinear
    assert compressed.weight is linear.weight
    assert compressed.bias is linear.bias
    assert not compressed.training
    assert (compressed.method, compressed.eps, compressed.non_finite,
            compressed.name) == ('svd', 0.9, 'skip', 'decode_head.fc')
    assert list(compressed.state_dict()) == list(linear.state_dict())
    assert list(compressed.buffers()) == []
    assert [n for n, _ in compressed.named_parameters()] == \
        [n for n, _ in linear.named_parameters()]
    plain = compressed.to_linear()
    assert type(plain) is nn.Linear
    assert plain.weight is linear.weight and plain.bias is linear.bias
    assert not plain.training
    copied = copy.deepcopy(compressed)
    assert copied.method == 'svd' and copied.weight is not linear.weight
    fresh = nn.Linear(6, 4, bias=bias)
    fresh.load_state_dict(compressed.state_dict(), strict=True)
    assert torch.equal(fresh.weight, linear.weight)
    text = repr(compressed)
    assert "method='svd'" in text and "name='decode_head.fc'" in text
    assert "non_finite='skip'" in text
    with pytest.raises(TypeError, match='nn.Linear'):
        CompressedLinear.from_linear(nn.Conv2d(6, 4, 1), 'hosvd')


def test_backward_node_is_known_to_the_memory_meters():
    compressed = CompressedLinear(6, 4, method='hosvd', eps=0.9)
    output = compressed(torch.randn(3, 5, 6))
    node = type(output.grad_fn).__name__
    assert node in COMPRESSED_BACKWARD_NODES
    index = COMPRESSED_BACKWARD_NODES[node]
    assert output.grad_fn.saved_tensors[index] is compressed.weight


# ---------------------------------------------------------------- bad input
@pytest.mark.parametrize('name', ['', 'backbone.stages.0.mlp.fc1'])
def test_gradient_filter_is_refused(name):
    message = r'Gradient Filter is defined for convolutions only'
    with pytest.raises(ValueError, match=message) as info:
        CompressedLinear(6, 4, method='gradient_filter', name=name)
    if name:
        assert repr(name) in str(info.value)
    with pytest.raises(ValueError, match=message):
        CompressedLinear.from_linear(nn.Linear(6, 4), 'gradient_filter',
                                     name=name)
    compressed = CompressedLinear(6, 4, name=name)
    with pytest.raises(ValueError, match=message):
        compressed.method = 'gradient_filter'
    assert compressed.method == 'hosvd'
    assert 'gradient_filter' not in LINEAR_METHODS


@pytest.mark.parametrize('kwargs, key', [
    ({'method': 'tucker'}, 'method'),
    ({'eps': 0.0}, 'eps'),
    ({'eps': 1.5}, 'eps'),
    ({'eps': float('nan')}, 'eps'),
    ({'eps': True}, 'eps'),
    ({'non_finite': 'ignore'}, 'non_finite'),
])
def test_invalid_settings_raise(kwargs, key):
    with pytest.raises(ValueError, match=key):
        CompressedLinear(6, 4, **kwargs)
    with pytest.raises(ValueError, match=key):
        CompressedLinear.from_linear(nn.Linear(6, 4),
                                     **{'method': 'hosvd', **kwargs})
    compressed = CompressedLinear(6, 4)
    with pytest.raises(ValueError, match=key):
        for attribute, value in kwargs.items():
            setattr(compressed, attribute, value)


@pytest.mark.parametrize('method', LOW_RANK)
def test_non_finite_input_raises_naming_the_layer(method):
    compressed = CompressedLinear(6, 4, method=method,
                                  name='backbone.stages.1.attn.proj')
    x = torch.randn(2, 5, 6)
    x[1, 2, 3] = float('nan')
    with pytest.raises(FloatingPointError,
                       match=r"CompressedLinear 'backbone\.stages\.1\.attn"
                       r"\.proj'.*NaN/Inf"):
        compressed(x)
    assert compressed.last_stats is None


@pytest.mark.parametrize('method', ['hosvd', 'svd'])
def test_non_finite_skip_keeps_nothing(method):
    linear = make_linear(dtype=torch.float32)
    compressed = CompressedLinear.from_linear(linear, method,
                                              non_finite='skip')
    x, grad_output = inputs((2, 3, 4, 6), dtype=torch.float32)
    x[0, 1, 2, 3] = float('inf')
    _, expected = grads(linear, linear, x, grad_output)
    _, actual = grads(compressed, linear, x, grad_output)
    assert torch.isnan(actual[1]).all()
    assert torch.isfinite(actual[0]).all()
    torch.testing.assert_close(actual[0], expected[0])
    torch.testing.assert_close(actual[2], expected[2])
    stats = compressed.last_stats
    assert stats.non_finite is True and stats.kept_bytes == 0


def test_asi_non_finite_input():
    """First step: skipped (NaN grad_weight); later steps: NaN factors,
    flagged without a host sync."""
    linear = make_linear(dtype=torch.float32)
    compressed = CompressedLinear.from_linear(linear, 'asi', eps=0.9,
                                              name='fc', non_finite='skip')
    x, grad_output = inputs((3, 4, 6), dtype=torch.float32)
    bad = x.clone()
    bad[0, 1, 2] = float('nan')
    _, first = grads(compressed, linear, bad, grad_output)
    assert torch.isnan(first[1]).all() and torch.isfinite(first[0]).all()
    assert compressed.last_stats.non_finite is True
    grads(compressed, linear, x, grad_output)  # first finite step
    assert not bool(compressed.last_stats.non_finite)
    _, later = grads(compressed, linear, bad, grad_output)
    assert bool(compressed.last_stats.non_finite)
    assert torch.isnan(later[1]).any() and torch.isfinite(later[0]).all()


@pytest.mark.parametrize('method', LINEAR_METHODS)
@pytest.mark.parametrize('shape', [(6, ), (2, 2, 2, 2, 6)])
def test_unsupported_input_dims_are_rejected(method, shape):
    compressed = CompressedLinear(6, 4, method=method, name='fc')
    with pytest.raises(ValueError, match=r"'fc'.*2 to 4 dims.*got shape"):
        compressed(torch.randn(shape))


# ------------------------------------------------------- module behaviour
def test_no_grad_and_frozen_weight_compress_nothing():
    linear = make_linear(dtype=torch.float32)
    compressed = CompressedLinear.from_linear(linear, 'hosvd', eps=0.5)
    x = torch.randn(3, 4, 6, requires_grad=True)
    with torch.no_grad():
        assert torch.equal(compressed(x), linear(x))
    assert compressed.last_stats is None
    linear.weight.requires_grad_(False)
    output = compressed(x)
    assert torch.equal(output, F.linear(x, linear.weight, linear.bias))
    assert compressed.last_stats is None
    assert type(output.grad_fn).__name__ not in COMPRESSED_BACKWARD_NODES
    output.sum().backward()
    assert x.grad is not None and linear.bias.grad is not None
    assert compressed(torch.randn(0, 6)).shape == (0, OUT_FEATURES)
    assert compressed.last_stats is None


def test_vanilla_records_the_full_input():
    linear = make_linear(dtype=torch.float32)
    compressed = CompressedLinear.from_linear(linear, 'vanilla')
    x = torch.randn(2, 3, 4, 6, requires_grad=True)
    output = compressed(x)
    assert torch.equal(output, linear(x))
    stats = compressed.last_stats
    assert stats.method == 'vanilla' and stats.input_shape == (2, 3, 4, 6)
    assert stats.kept_bytes == x.numel() * 4 == stats.paper_bytes
    assert not bool(stats.non_finite)


def test_kept_bytes_are_far_below_the_input_on_a_low_rank_input():
    shape = (4, 256, 96)  # (B, N, C) tokens
    x = low_rank_tokens(shape, (2, 8, 6), 0.01)
    input_bytes = x.numel() * x.element_size()
    linear = nn.Linear(96, 8)
    for method, max_ratio in (('hosvd', 0.05), ('svd', 0.6), ('asi', 0.05)):
        compressed = CompressedLinear.from_linear(linear, method, eps=0.9,
                                                  name='fc')
        saved = []

        def pack(tensor):
            saved.append(tensor)
            return tensor

        source = x.clone().requires_grad_()
        with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
            output = compressed(source)
        stats = compressed.last_stats
        factors = [t for t in saved if t is not linear.weight]
        assert stats.kept_bytes == sum(
            t.untyped_storage().nbytes() for t in factors)
        assert stats.kept_bytes == 4 * stats.paper_elements
        assert stats.kept_bytes / input_bytes < max_ratio, method
        for tensor in factors:
            assert tensor.untyped_storage().data_ptr() != \
                source.untyped_storage().data_ptr()
        if method == 'hosvd':
            assert stats.ranks[0] <= 2 and stats.ranks[1] <= 6
            assert stats.paper_elements == hosvd_paper_elements(
                (4, 96, 256, 1), stats.ranks)
        output.sum().backward()  # runs with what was saved


def test_autocast_bfloat16_decomposes_in_float32():
    linear = make_linear(dtype=torch.float32)
    compressed = CompressedLinear.from_linear(linear, 'hosvd', eps=0.95)
    x = torch.randn(2, 5, 6, requires_grad=True)
    with torch.autocast('cpu', dtype=torch.bfloat16):
        output = compressed(x)
        expected = linear(x)
    assert output.dtype == expected.dtype == torch.bfloat16
    assert torch.equal(output, expected)
    stats = compressed.last_stats
    # computed in float32, kept in bf16 (never more bytes than the input)
    assert stats.kept_bytes == 2 * stats.paper_elements
    output.float().sum().backward()
    assert linear.weight.grad.dtype == torch.float32
    assert x.grad.dtype == torch.float32
