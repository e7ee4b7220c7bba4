"""Tests of mmseg_hosvd.ops.conv, .conv_functional, .conv_autograd and .conv_gradients
(CompressedConv2d, HOSVD/SVD autograd)."""
import itertools

import pytest
import torch
import torch.nn as nn
import torch.nn.functional as F
from torch.nn.modules.utils import _pair

from mmseg_hosvd.ops import (METHODS, CompressedConv2d, CompressionStats,
                             hosvd, hosvd_paper_elements, svd_paper_elements,
                             truncated_svd)
from mmseg_hosvd.ops import ConvGeometry, compressed_conv2d
from mmseg_hosvd.ops.conv_gradients import (hosvd_weight_grad,
                                         select_hosvd_weight_grad_path,
                                         svd_weight_grad)

# (in_channels, out_channels, groups)
GROUP_CONFIGS = {
    'groups1': (4, 6, 1),
    'groups2': (4, 6, 2),
    'groups4_of_8': (8, 8, 4),
    'depthwise': (4, 4, 4),
    'multiplier': (4, 8, 4),
}
# (kernel, stride, padding, dilation)
GEOMETRY_GRID = list(
    itertools.product((1, 3, 5), (1, 2), (0, 1, (1, 2)), (1, 2, 12)))
TOLERANCE = {torch.float32: 1e-4, torch.float64: 1e-10}


pytestmark = pytest.mark.usefixtures('single_thread')


def relative_error(actual: torch.Tensor, expected: torch.Tensor) -> float:
    scale = expected.abs().max().clamp(min=1e-30)
    return ((actual - expected).abs().max() / scale).item()


def geometry_of(stride, padding, dilation, groups) -> ConvGeometry:
    return ConvGeometry(_pair(stride), _pair(padding), _pair(dilation),
                        groups)


def input_hw_for(kernel: int, dilation: int):
    """33x47 when the dilated kernel fits, 51x53 otherwise (odd sizes)."""
    return (33, 47) if dilation * (kernel - 1) + 1 <= 33 else (51, 53)


def conv_output(x, weight, geometry):
    return F.conv2d(x, weight, None, geometry.stride, geometry.padding,
                    geometry.dilation, geometry.groups)


def plain_grads(x, weight, bias, geometry, grad_output):
    """grad of (input, weight, bias) of F.conv2d by plain autograd."""
    x = x.detach().requires_grad_()
    weight = weight.detach().requires_grad_()
    bias = None if bias is None else bias.detach().requires_grad_()
    output = F.conv2d(x, weight, bias, geometry.stride, geometry.padding,
                      geometry.dilation, geometry.groups)
    inputs = [t for t in (x, weight, bias) if t is not None]
    return output, torch.autograd.grad(output, inputs, grad_output)


def compressed_grads(x, weight, bias, geometry, grad_output, **kwargs):
    x = x.detach().requires_grad_()
    weight = weight.detach().requires_grad_()
    bias = None if bias is None else bias.detach().requires_grad_()
    output, stats = compressed_conv2d(x, weight, bias, geometry, **kwargs)
    inputs = [t for t in (x, weight, bias) if t is not None]
    return output, torch.autograd.grad(output, inputs, grad_output), stats


# --------------------------------------------------------- eps = 1 exactness
@pytest.mark.parametrize('dtype', [torch.float32, torch.float64])
@pytest.mark.parametrize('group_config', list(GROUP_CONFIGS))
@pytest.mark.parametrize('method, path', [('hosvd', 'factored'),
                                          ('hosvd', 'rebuilt'),
                                          ('hosvd', 'auto'), ('svd', 'auto')])
def test_full_rank_gradients_are_exact(method, path, group_config, dtype):
    in_channels, out_channels, groups = GROUP_CONFIGS[group_config]
    generator = torch.Generator().manual_seed(0)
    checked = 0
    for index, (kernel, stride, padding, dilation) in enumerate(
            GEOMETRY_GRID):
        height, width = input_hw_for(kernel, dilation)
        pad_h, pad_w = _pair(padding)
        if dilation * (kernel - 1) + 1 > min(height + 2 * pad_h,
                                             width + 2 * pad_w):
            continue
        geometry = geometry_of(stride, padding, dilation, groups)
        x = torch.randn(2, in_channels, height, width, dtype=dtype,
                        generator=generator)
        weight = torch.randn(out_channels, in_channels // groups, kernel,
                             kernel, dtype=dtype, generator=generator)
        bias = (torch.randn(out_channels, dtype=dtype, generator=generator)
                if index % 2 == 0 else None)
        grad_output = torch.randn(conv_output(x, weight, geometry).shape,
                                  dtype=dtype, generator=generator)
        expected_out, expected = plain_grads(x, weight, bias, geometry,
                                             grad_output)
        output, actual, stats = compressed_grads(x,
                                                 weight,
                                                 bias,
                                                 geometry,
                                                 grad_output,
                                                 method=method,
                                                 eps=1.0,
                                                 weight_grad_path=path)
        case = (kernel, stride, padding, dilation, bias is not None)
        assert torch.equal(output, expected_out), case
        torch.testing.assert_close(actual[0], expected[0], msg=str(case))
        assert relative_error(actual[1], expected[1]) < TOLERANCE[dtype], case
        if bias is not None:
            # a plain sum: more accurate than autograd's, so compare relatively
            assert relative_error(actual[2], expected[2]) < TOLERANCE[dtype]
        assert stats.ranks == (tuple(x.shape) if method == 'hosvd' else
                               (x.shape[0], ))
        checked += 1
    assert checked >= 40


@pytest.mark.parametrize('method', ['hosvd', 'svd'])
@pytest.mark.parametrize('dtype', [torch.float32, torch.float64])
def test_module_full_rank_matches_nn_conv(method, dtype):
    torch.manual_seed(0)
    conv = nn.Conv2d(6, 9, 3, stride=2, padding=(1, 2), dilation=2,
                     groups=3).to(dtype)
    compressed = CompressedConv2d.from_conv(conv, method, eps=1.0)
    x = torch.randn(3, 6, 17, 19, dtype=dtype, requires_grad=True)
    grad_output = torch.randn_like(conv(x))
    params = (x, conv.weight, conv.bias)
    expected = torch.autograd.grad(conv(x), params, grad_output)
    actual = torch.autograd.grad(compressed(x), params, grad_output)
    torch.testing.assert_close(actual[0], expected[0])
    assert relative_error(actual[1], expected[1]) < TOLERANCE[dtype]
    assert relative_error(actual[2], expected[2]) < TOLERANCE[dtype]


# ----------------------------------------------------- eps < 1 consistency
CASES_LOW_RANK = [
    # in, out, groups, kernel, stride, padding, dilation
    (6, 5, 1, 3, 1, 1, 1),
    (6, 4, 2, 3, 2, (1, 2), 2),
    (6, 6, 6, 3, 1, 1, 1),
    (4, 8, 4, 5, 2, 2, 1),
    (6, 6, 3, 1, 1, 0, 1),
]


@pytest.mark.parametrize('case', CASES_LOW_RANK)
@pytest.mark.parametrize('path', ['factored', 'rebuilt', 'auto'])
def test_low_rank_weight_grad_matches_reconstruction(case, path):
    in_channels, out_channels, groups, kernel, stride, padding, dilation = case
    torch.manual_seed(1)
    geometry = geometry_of(stride, padding, dilation, groups)
    x = torch.randn(4, in_channels, 13, 11, dtype=torch.float64)
    weight = torch.randn(out_channels, in_channels // groups, kernel, kernel,
                         dtype=torch.float64)
    factors = hosvd(x, 0.6)
    assert factors.ranks != tuple(x.shape)
    grad_output = torch.randn_like(conv_output(x, weight, geometry))
    _, (expected_input, expected_weight) = plain_grads(
        factors.reconstruct(), weight, None, geometry, grad_output)
    # layer-2 helper on the same factors
    actual = hosvd_weight_grad(factors, grad_output, weight.shape, geometry,
                               path)
    torch.testing.assert_close(actual, expected_weight, rtol=0, atol=1e-8)
    # the autograd op end to end (same deterministic factors)
    _, grads, stats = compressed_grads(x,
                                       weight,
                                       None,
                                       geometry,
                                       grad_output,
                                       method='hosvd',
                                       eps=0.6,
                                       weight_grad_path=path)
    assert stats.ranks == factors.ranks
    torch.testing.assert_close(grads[1], expected_weight, rtol=0, atol=1e-8)
    _, (exact_input, _) = plain_grads(x, weight, None, geometry, grad_output)
    torch.testing.assert_close(grads[0], exact_input)  # grad_input exact


@pytest.mark.parametrize('case', CASES_LOW_RANK)
def test_svd_weight_grad_matches_reconstruction(case):
    in_channels, out_channels, groups, kernel, stride, padding, dilation = case
    torch.manual_seed(2)
    geometry = geometry_of(stride, padding, dilation, groups)
    x = torch.randn(6, in_channels, 9, 10, dtype=torch.float64)
    weight = torch.randn(out_channels, in_channels // groups, kernel, kernel,
                         dtype=torch.float64)
    factors = truncated_svd(x, 0.6)
    assert factors.rank < x.shape[0]
    grad_output = torch.randn_like(conv_output(x, weight, geometry))
    _, (_, expected_weight) = plain_grads(factors.reconstruct(), weight,
                                          None, geometry, grad_output)
    actual = svd_weight_grad(factors, grad_output, weight.shape, geometry)
    torch.testing.assert_close(actual, expected_weight, rtol=0, atol=1e-8)
    _, grads, _ = compressed_grads(x, weight, None, geometry, grad_output,
                                   method='svd', eps=0.6)
    torch.testing.assert_close(grads[1], expected_weight, rtol=0, atol=1e-8)


def test_weight_grad_path_selection():
    # groups=1, few channel components: the factored chain is cheaper
    assert select_hosvd_weight_grad_path((2, 8, 16, 16), (8, 256, 32, 32),
                                         (256, 256, 3, 3),
                                         (8, 256, 32, 32), 1) == 'factored'
    # depthwise: the K2-channel groups=1 conv costs more than rebuilding
    assert select_hosvd_weight_grad_path((2, 200, 16, 16), (8, 256, 32, 32),
                                         (256, 1, 3, 3), (8, 256, 32, 32),
                                         256) == 'rebuilt'
    with pytest.raises(ValueError, match='path'):
        factors = hosvd(torch.randn(2, 3, 4, 5), 0.9)
        hosvd_weight_grad(factors, torch.randn(2, 3, 4, 5), (3, 3, 1, 1),
                          geometry_of(1, 0, 1, 1), 'fast')


# ----------------------------------------------------------------- gradcheck
@pytest.mark.parametrize('method', ['hosvd', 'svd'])
@pytest.mark.parametrize('groups, stride, padding, dilation',
                         [(1, 1, 1, 1), (2, 2, (1, 0), 2)])
def test_gradcheck_full_rank(method, groups, stride, padding, dilation):
    torch.manual_seed(3)
    geometry = geometry_of(stride, padding, dilation, groups)
    x = torch.randn(2, 4, 6, 7, dtype=torch.float64, requires_grad=True)
    weight = torch.randn(4, 4 // groups, 3, 3, dtype=torch.float64,
                         requires_grad=True)
    bias = torch.randn(4, dtype=torch.float64, requires_grad=True)

    def op(x, weight, bias):
        return compressed_conv2d(x, weight, bias, geometry, method=method,
                                 eps=1.0)[0]

    assert torch.autograd.gradcheck(op, (x, weight, bias))


# -------------------------------------------------------- memory accounting
def low_rank_plus_noise(shape, ranks, noise, generator):
    core = torch.randn(ranks, generator=generator)
    x = core
    for mode, (size, rank) in enumerate(zip(shape, ranks)):
        factor = torch.randn(size, rank, generator=generator)
        x = torch.tensordot(x, factor, dims=([mode], [1])).movedim(-1, mode)
    x = x / x.std()
    return x + noise * torch.randn(shape, generator=generator)


def test_kept_bytes_on_a_large_low_rank_input():
    generator = torch.Generator().manual_seed(4)
    shape = (8, 512, 64, 64)
    x = low_rank_plus_noise(shape, (2, 24, 12, 12), 0.05, generator)
    input_bytes = x.numel() * x.element_size()
    conv = nn.Conv2d(512, 8, 1)
    for method, max_ratio in (('hosvd', 0.01), ('svd', 0.3)):
        compressed = CompressedConv2d.from_conv(conv, method, eps=0.8)
        compressed(x)
        stats = compressed.last_stats
        assert stats.method == method and stats.input_shape == shape
        if method == 'hosvd':
            assert all(k <= n for k, n in zip(stats.ranks, (2, 24, 12, 12)))
            expected = hosvd_paper_elements(shape, stats.ranks)
        else:
            assert stats.ranks[0] <= 2
            expected = svd_paper_elements(shape, stats.ranks[0])
        assert stats.paper_elements == expected
        assert stats.kept_bytes == 4 * expected == stats.paper_bytes
        assert stats.kept_bytes / input_bytes < max_ratio


def test_never_saves_the_full_input():
    x = torch.randn(4, 6, 12, 12, requires_grad=True)
    for method in METHODS:
        for padding_mode in ('zeros', 'reflect'):
            conv = CompressedConv2d(6, 6, 3, padding=1, method=method,
                                    eps=0.5, padding_mode=padding_mode)
            saved = []

            def pack(tensor):
                saved.append(tensor)
                return tensor

            with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
                output = conv(x)
            output.sum().backward()  # runs with what was saved
            assert len(saved) >= 2
            for tensor in saved:
                if tensor is conv.weight or tensor is conv.bias:
                    continue
                assert tensor.untyped_storage().data_ptr() != \
                    x.untyped_storage().data_ptr()
                assert tensor.numel() < x.numel(), (method, tensor.shape)


@pytest.mark.parametrize('method', ['hosvd', 'svd'])
def test_one_host_sync_per_step(method, monkeypatch):
    conv = CompressedConv2d(5, 7, 3, padding=1, method=method, eps=0.7)
    x = torch.randn(3, 5, 9, 10, requires_grad=True)
    syncs = []
    for name in ('tolist', 'item', '__bool__', '__int__', '__float__'):
        real = getattr(torch.Tensor, name)

        def counting(self, *args, _real=real, _name=name, **kwargs):
            syncs.append(_name)
            return _real(self, *args, **kwargs)

        monkeypatch.setattr(torch.Tensor, name, counting)

    def forbidden(*args, **kwargs):
        raise AssertionError('a full SVD was called')

    monkeypatch.setattr(torch.linalg, 'svd', forbidden)
    monkeypatch.setattr(torch, 'svd', forbidden)
    conv(x).sum().backward()
    assert syncs == ['tolist']


# -------------------------------------------------------- edge-case inputs
@pytest.mark.parametrize('method', ['hosvd', 'svd'])
def test_all_zero_input_gives_rank_one_and_finite_grads(method):
    conv = CompressedConv2d(4, 3, 3, padding=1, method=method, eps=0.8)
    x = torch.zeros(2, 4, 7, 8, requires_grad=True)
    conv(x).square().sum().backward()
    assert all(rank == 1 for rank in conv.last_stats.ranks)
    for grad in (x.grad, conv.weight.grad, conv.bias.grad):
        assert torch.isfinite(grad).all()
    assert torch.equal(conv.weight.grad, torch.zeros_like(conv.weight))


@pytest.mark.parametrize('method', ['hosvd', 'svd'])
@pytest.mark.parametrize('bad_value', [float('nan'), float('-inf')])
def test_non_finite_input_names_the_layer(method, bad_value):
    conv = CompressedConv2d(3, 3, 3, method=method,
                            name='backbone.layer4.0.conv1')
    x = torch.randn(2, 3, 6, 6)
    x[0, 1, 2, 3] = bad_value
    with pytest.raises(FloatingPointError,
                       match=r"'backbone\.layer4\.0\.conv1'.*NaN/Inf"):
        conv(x)
    assert conv.last_stats is None


@pytest.mark.parametrize('kwargs, key', [
    ({'method': 'tucker'}, 'method'),
    ({'method': 'Vanilla'}, 'method'),
    ({'eps': 0.0}, 'eps'),
    ({'eps': 1.5}, 'eps'),
    ({'eps': float('nan')}, 'eps'),
    ({'eps': True}, 'eps'),
    ({'radius': 0}, 'radius'),
    ({'radius': 2.0}, 'radius'),
    ({'radius': True}, 'radius'),
])
def test_invalid_settings_raise(kwargs, key):
    with pytest.raises(ValueError, match=key):
        CompressedConv2d(3, 3, 3, **kwargs)
    with pytest.raises(ValueError, match=key):
        CompressedConv2d.from_conv(nn.Conv2d(3, 3, 3),
                                   **{'method': 'hosvd', **kwargs})
    conv = CompressedConv2d(3, 3, 3)
    with pytest.raises(ValueError, match=key):
        for attribute, value in kwargs.items():
            setattr(conv, attribute, value)


# ------------------------------------------------------------- half types
HALF_TOLERANCE = {torch.bfloat16: 2e-2, torch.float16: 5e-3}


def _half_conv_supported(dtype) -> bool:
    try:
        F.conv2d(torch.ones(1, 1, 3, 3, dtype=dtype),
                 torch.ones(1, 1, 1, 1, dtype=dtype))
    except RuntimeError:
        return False
    return True


@pytest.mark.parametrize('dtype', [torch.bfloat16, torch.float16])
@pytest.mark.parametrize('method', METHODS)
def test_half_precision_inputs(dtype, method):
    """Grads of a half-precision run are within HALF_TOLERANCE (relative to
    the largest magnitude) of a float32 run on the same rounded values."""
    if not _half_conv_supported(dtype):
        pytest.skip(f'{dtype} conv2d is not supported on this device')
    torch.manual_seed(5)
    x = torch.randn(3, 6, 10, 11).to(dtype)
    grad_output = torch.randn(3, 4, 10, 11).to(dtype)
    template = nn.Conv2d(6, 4, 3, padding=1, groups=2).to(dtype)
    results = {}
    for run_dtype in (torch.float32, dtype):
        conv = CompressedConv2d.from_conv(_copy_conv(template, run_dtype),
                                          method, eps=0.9)
        run_input = x.to(run_dtype).requires_grad_()
        conv(run_input).backward(grad_output.to(run_dtype))
        assert conv.weight.grad.dtype == run_dtype
        results[run_dtype] = (run_input.grad.float(),
                              conv.weight.grad.float(),
                              conv.bias.grad.float(), conv.last_stats)
    full, low = results[torch.float32], results[dtype]
    assert low[3].ranks == full[3].ranks
    for actual, expected in zip(low[:3], full[:3]):
        assert relative_error(actual, expected) < HALF_TOLERANCE[dtype]
    if method in ('hosvd', 'svd'):
        # the factors are kept in the half type (computed in float32)
        assert low[3].kept_bytes == 2 * low[3].paper_elements
        assert low[3].kept_bytes <= 2 * x.numel()


def _copy_conv(conv: nn.Conv2d, dtype: torch.dtype) -> nn.Conv2d:
    copy = nn.Conv2d(conv.in_channels, conv.out_channels, conv.kernel_size,
                     padding=conv.padding, groups=conv.groups, dtype=dtype)
    with torch.no_grad():
        copy.weight.copy_(conv.weight)
        copy.bias.copy_(conv.bias)
    return copy


# -------------------------------------------------------- module behaviour
def test_no_grad_is_plain_conv_and_keeps_stats():
    conv = CompressedConv2d(4, 5, 3, padding=1, method='hosvd')
    x = torch.randn(2, 4, 8, 8)
    conv(x)
    first_stats = conv.last_stats
    assert isinstance(first_stats, CompressionStats)
    with torch.no_grad():
        output = conv(x)
    assert conv.last_stats is first_stats
    assert torch.equal(output, F.conv2d(x, conv.weight, conv.bias,
                                        padding=1))
    fresh = CompressedConv2d(4, 5, 3, padding=1)
    with torch.no_grad():
        fresh(x)
    assert fresh.last_stats is None
    frozen = CompressedConv2d(4, 5, 3, padding=1).requires_grad_(False)
    frozen(x.requires_grad_())
    assert frozen.last_stats is None


def test_from_conv_shares_parameters_and_state_dict_keys():
    for bias in (True, False):
        conv = nn.Conv2d(4, 6, 3, stride=2, padding=1, bias=bias).eval()
        compressed = CompressedConv2d.from_conv(conv, 'svd', eps=0.5,
                                                name='head.conv')
        assert compressed.weight is conv.weight
        assert compressed.bias is conv.bias
        assert not compressed.training
        assert list(compressed.state_dict()) == list(conv.state_dict())
        assert list(compressed.buffers()) == []
        assert len(list(compressed.parameters())) == (2 if bias else 1)
        assert (compressed.method, compressed.eps, compressed.radius,
                compressed.name) == ('svd', 0.5, 2, 'head.conv')
        assert compressed.last_stats is None
        for attribute in ('kernel_size', 'stride', 'padding', 'dilation',
                          'groups', 'padding_mode'):
            assert getattr(compressed, attribute) == getattr(conv, attribute)
        back = compressed.to_conv()
        assert type(back) is nn.Conv2d
        assert back.weight is conv.weight and back.bias is conv.bias
        assert not back.training
        x = torch.randn(2, 4, 9, 9)
        assert torch.equal(back(x), conv(x))
        assert torch.equal(compressed(x), conv(x))
    text = repr(compressed)
    assert "method='svd'" in text and 'eps=0.5' in text and 'radius=2' in text


@pytest.mark.filterwarnings('ignore:Using padding=.same. with even kernel')
@pytest.mark.parametrize('method', ['hosvd', 'svd'])
@pytest.mark.parametrize('conv_kwargs', [
    dict(kernel_size=3, padding=1, padding_mode='reflect'),
    dict(kernel_size=3, padding=(2, 1), padding_mode='replicate'),
    dict(kernel_size=3, padding=1, padding_mode='circular', stride=2),
    dict(kernel_size=4, padding='same'),
    dict(kernel_size=3, padding='same', dilation=3),
    dict(kernel_size=2, padding='same', padding_mode='reflect'),
    dict(kernel_size=3, padding='valid'),
])
def test_padding_modes_and_string_padding(method, conv_kwargs):
    torch.manual_seed(6)
    conv = nn.Conv2d(4, 5, **conv_kwargs).double()
    compressed = CompressedConv2d.from_conv(conv, method, eps=1.0)
    x = torch.randn(2, 4, 9, 10, dtype=torch.float64, requires_grad=True)
    expected_out = conv(x)
    grad_output = torch.randn_like(expected_out)
    params = (x, conv.weight, conv.bias)
    expected = torch.autograd.grad(expected_out, params, grad_output)
    output = compressed(x)
    torch.testing.assert_close(output, expected_out)
    actual = torch.autograd.grad(output, params, grad_output)
    for a, e in zip(actual, expected):
        torch.testing.assert_close(a, e)
    pads = conv._reversed_padding_repeated_twice
    explicit = (conv.padding_mode != 'zeros' or pads[0] != pads[1] or
                pads[2] != pads[3])
    expected_hw = ((9 + pads[2] + pads[3], 10 + pads[0] + pads[1])
                   if explicit else (9, 10))
    assert compressed.last_stats.input_shape == (2, 4) + expected_hw


def test_conv_bn_folding_composes():
    """mmengine/mmcv-style folding calls _conv_forward with a folded weight."""
    torch.manual_seed(7)
    conv = CompressedConv2d(4, 6, 3, padding=1, method='hosvd', eps=1.0)
    scale = torch.rand(6, requires_grad=True)
    shift = torch.randn(6, requires_grad=True)
    x = torch.randn(2, 4, 8, 8, requires_grad=True)
    params = (x, conv.weight, conv.bias, scale, shift)

    def folded(forward):
        weight = conv.weight * scale.view(-1, 1, 1, 1)
        bias = conv.bias * scale + shift
        return forward(x, weight, bias)

    output = folded(conv._conv_forward)
    assert conv.last_stats is not None and conv.last_stats.method == 'hosvd'
    grad_output = torch.randn_like(output)
    actual = torch.autograd.grad(output, params, grad_output)
    expected_out = folded(lambda x, w, b: F.conv2d(x, w, b, padding=1))
    expected = torch.autograd.grad(expected_out, params, grad_output)
    torch.testing.assert_close(output, expected_out)
    for a, e in zip(actual, expected):
        torch.testing.assert_close(a, e, rtol=1e-4, atol=1e-5)


def test_unbatched_input():
    conv = CompressedConv2d(3, 4, 3, padding=1, method='hosvd', eps=1.0)
    x = torch.randn(3, 7, 8, requires_grad=True)
    output = conv(x)
    assert output.shape == (4, 7, 8)
    assert conv.last_stats.input_shape == (1, 3, 7, 8)
    output.sum().backward()
    reference = x.detach().requires_grad_()
    conv.weight.grad = None
    F.conv2d(reference, conv.weight, conv.bias, padding=1).sum().backward()
    torch.testing.assert_close(x.grad, reference.grad)


@pytest.mark.parametrize('method', METHODS)
def test_autocast_bfloat16(method):
    """Under CPU autocast the op computes in bf16 like nn.Conv2d does and
    gradients reach the float32 Parameters."""
    torch.manual_seed(8)
    conv = nn.Conv2d(4, 6, 3, padding=1)
    compressed = CompressedConv2d.from_conv(conv, method, eps=1.0)
    x = torch.randn(2, 4, 8, 9, requires_grad=True)
    grad_output = torch.randn(2, 6, 8, 9)
    with torch.autocast('cpu', dtype=torch.bfloat16):
        expected_out = conv(x)
        output = compressed(x)
    assert output.dtype == expected_out.dtype == torch.bfloat16
    torch.testing.assert_close(output, expected_out)
    params = (x, conv.weight, conv.bias)
    actual = torch.autograd.grad(output, params, grad_output)
    expected = torch.autograd.grad(expected_out, params, grad_output)
    assert [a.dtype for a in actual] == [torch.float32] * 3
    if method != 'gradient_filter':  # exact at eps = 1 up to bf16 rounding
        for a, e in zip(actual, expected):
            assert relative_error(a, e) < HALF_TOLERANCE[torch.bfloat16]


def test_vanilla_is_the_plain_conv_and_records_the_full_input():
    torch.manual_seed(0)
    conv = nn.Conv2d(4, 6, 3, padding=1)
    vanilla = CompressedConv2d.from_conv(conv, 'vanilla', name='v')
    x = torch.randn(2, 4, 9, 11, requires_grad=True)
    out = vanilla(x)
    torch.testing.assert_close(out, conv(x))
    stats = vanilla.last_stats
    assert stats.method == 'vanilla' and stats.ranks == ()
    assert stats.paper_elements == x.numel()
    assert stats.kept_bytes == x.numel() * 4 == stats.paper_bytes
    grad_vanilla = torch.autograd.grad(out.sum(), (x, conv.weight))
    grad_plain = torch.autograd.grad(conv(x).sum(), (x, conv.weight))
    for got, want in zip(grad_vanilla, grad_plain):
        torch.testing.assert_close(got, want)


@pytest.mark.parametrize('method', ['hosvd', 'svd', 'asi'])
@pytest.mark.parametrize('kernel_size', [1, 3])
def test_weight_grad_has_the_weight_layout(method, kernel_size):
    """DDP copies each gradient into a bucket view with the parameter's
    strides: grad_weight has them (a factored 1x1 gradient can come out
    transposed)."""
    conv = CompressedConv2d(16, 8, kernel_size, padding=kernel_size // 2,
                            method=method, eps=0.8)
    conv(torch.randn(1, 16, 4, 4)).square().sum().backward()
    assert conv.weight.grad.stride() == conv.weight.stride()
