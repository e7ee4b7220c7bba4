"""HOSVD of a non-contiguous (channels-last) input runs in the input's
memory order: same ranks (the eps rule per mode), same subspaces, same
reconstruction and weight gradient as on a contiguous copy; the unfoldings
copy nothing; the last-mode Gram's symmetric blocks equal the full
product."""
import pytest
import torch

from mmseg_hosvd.decomposition import (explained_variance_rank, hosvd,
                                       multi_mode_product,
                                       truncated_mode_bases)
from mmseg_hosvd.decomposition.unfolding import (memory_mode_order,
                                                 mode_gram)
from mmseg_hosvd.ops import CompressedConv2d


def low_rank_plus_noise(shape, ranks, seed, dtype=torch.float64):
    generator = torch.Generator().manual_seed(seed)
    x = torch.randn(ranks, generator=generator, dtype=dtype)
    for mode, (size, rank) in enumerate(zip(shape, ranks)):
        factor = torch.randn(size, rank, generator=generator, dtype=dtype)
        x = torch.tensordot(x, factor, dims=([mode], [1])).movedim(-1, mode)
    return x + 0.05 * x.std() * torch.randn(shape, generator=generator,
                                            dtype=dtype)


def reconstruction(factors):
    return multi_mode_product(factors.core,
                              {m: u.T for m, u in enumerate(factors.factors)})


def exact_ranks(x, eps):
    ranks = []
    for mode in range(4):
        unfolding = x.movedim(mode, 0).reshape(x.shape[mode], -1)
        values = torch.linalg.svdvals(unfolding)
        ranks.append(int(explained_variance_rank(values**2, eps)))
    return tuple(ranks)


def test_memory_mode_order():
    x = torch.randn(2, 5, 3, 4)
    assert memory_mode_order(x) == (0, 1, 2, 3)
    last = x.contiguous(memory_format=torch.channels_last)
    assert memory_mode_order(last) == (0, 2, 3, 1)
    assert last.permute(memory_mode_order(last)).is_contiguous()
    assert memory_mode_order(x[:, :, ::2]) == (0, 1, 2, 3)  # not dense


@pytest.mark.parametrize('eps', [0.6, 0.8, 0.95])
@pytest.mark.parametrize('shape', [(2, 300, 6, 5), (3, 24, 10, 12)])
def test_channels_last_hosvd_equals_contiguous(shape, eps):
    x = low_rank_plus_noise(shape, (2, 5, 3, 3), seed=0)
    last = x.contiguous(memory_format=torch.channels_last)
    assert not last.is_contiguous()
    expected = hosvd(x, eps)
    actual = hosvd(last, eps)
    assert actual.ranks == expected.ranks == exact_ranks(x, eps)
    assert actual.core.is_contiguous()
    for u, v in zip(actual.factors, expected.factors):
        # same subspace: projectors agree
        torch.testing.assert_close(u @ u.T, v @ v.T, atol=1e-8, rtol=0)
    torch.testing.assert_close(reconstruction(actual),
                               reconstruction(expected), atol=1e-9, rtol=0)
    values, ranks, bases = truncated_mode_bases(last, eps)
    values_c, ranks_c, bases_c = truncated_mode_bases(x, eps)
    assert tuple(ranks) == tuple(ranks_c) == expected.ranks
    for v, w in zip(values, values_c):
        torch.testing.assert_close(v, w)
    for u, w in zip(bases, bases_c):
        torch.testing.assert_close(u @ u.T, w @ w.T, atol=1e-8, rtol=0)


def test_channels_last_view_shares_the_input():
    x = low_rank_plus_noise((2, 64, 16, 16), (2, 4, 3, 3), seed=1,
                            dtype=torch.float32)
    last = x.contiguous(memory_format=torch.channels_last)
    view = last.permute(memory_mode_order(last))
    assert view.is_contiguous() and view.data_ptr() == last.data_ptr()
    for mode in range(4):
        unfolding = view.movedim(mode, 0).reshape(view.shape[mode], -1)
        torch.testing.assert_close(mode_gram(view, mode),
                                   unfolding @ unfolding.T, atol=1e-3,
                                   rtol=1e-4)


@pytest.mark.parametrize('columns', [255, 256, 301])
def test_last_mode_gram_symmetric_blocks(columns):
    x = torch.randn(3, 4, 5, columns, dtype=torch.float64)
    unfolding = x.reshape(-1, columns)
    torch.testing.assert_close(mode_gram(x, 3), unfolding.T @ unfolding)


def test_conv_weight_grad_unchanged_by_channels_last():
    torch.manual_seed(0)
    x = low_rank_plus_noise((2, 32, 12, 12), (2, 4, 3, 3), seed=2,
                            dtype=torch.float32)
    conv = CompressedConv2d(32, 16, 1, method='hosvd', eps=0.8)
    grad_output = torch.randn(2, 16, 12, 12)
    grads = []
    for tensor in (x, x.contiguous(memory_format=torch.channels_last)):
        conv.zero_grad()
        inp = tensor.clone().requires_grad_(True)
        conv(inp).backward(grad_output)
        grads.append((conv.weight.grad.clone(), inp.grad.clone()))
    difference = (grads[1][0] - grads[0][0]).norm() / grads[0][0].norm()
    assert difference < 1e-5
    torch.testing.assert_close(grads[1][1], grads[0][1])
    # and the weight gradient is the one of the (rank-limited) input
    factors = hosvd(x, 0.8)
    rebuilt = reconstruction(factors)
    expected = torch.nn.grad.conv2d_weight(rebuilt, conv.weight.shape,
                                           grad_output)
    torch.testing.assert_close(grads[1][0], expected, atol=1e-4, rtol=1e-3)
