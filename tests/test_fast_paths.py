"""The fast paths agree with the plain computations: blocked / chunked Gram
matrices with the explicit unfolding products, the Gram + eigh HOSVD with a
HOSVD made of four full SVDs (ranks, subspaces, weight gradients)."""
import pytest
import torch

from mmseg_hosvd.ops import hosvd
from mmseg_hosvd.decomposition import tucker as decomposition
from mmseg_hosvd.decomposition import unfolding as unfolding_module
from mmseg_hosvd.ops.conv_gradients import ConvGeometry, conv_weight_grad, \
    hosvd_weight_grad
from mmseg_hosvd.decomposition import (TuckerFactors,
                                           explained_variance_rank)
from mmseg_hosvd.decomposition.unfolding import mode_gram, multi_mode_product


def unfolding(x, mode):
    return x.movedim(mode, 0).reshape(x.shape[mode], -1)


def reference_hosvd(x, eps):
    """Four full SVDs of the unfoldings, the eps rule, the core."""
    factors = []
    for mode in range(4):
        left, values, _ = torch.linalg.svd(unfolding(x, mode),
                                           full_matrices=False)
        rank = int(explained_variance_rank(values**2, eps))
        factors.append(left[:, :rank])
    core = multi_mode_product(x, dict(enumerate(factors)))
    return TuckerFactors(core=core, factors=tuple(factors))


@pytest.mark.parametrize('shape', [(2, 300, 3, 4), (1, 260, 5, 2),
                                   (3, 5, 40, 6), (2, 3, 600, 4)])
def test_mode_gram_fast_paths_match_the_unfolding(shape, monkeypatch):
    # small chunks force several pieces in the copied path
    monkeypatch.setattr(unfolding_module, 'COPY_CHUNK_ELEMENTS', 64)
    x = torch.randn(shape, dtype=torch.float64)
    for mode in range(4):
        a = unfolding(x, mode)
        gram = mode_gram(x, mode)
        torch.testing.assert_close(gram, a @ a.T)


def low_rank(shape, ranks, noise, seed):
    generator = torch.Generator().manual_seed(seed)
    x = torch.randn(ranks, generator=generator, dtype=torch.float64)
    for mode, (size, rank) in enumerate(zip(shape, ranks)):
        factor = torch.linalg.qr(torch.randn(
            size, rank, generator=generator, dtype=torch.float64)).Q
        factor = factor * torch.linspace(3, 1, rank, dtype=torch.float64)
        x = torch.tensordot(x, factor, dims=([mode], [1])).movedim(-1, mode)
    x = x / x.std()
    return (x + noise * torch.randn(shape, generator=generator,
                                    dtype=torch.float64)).contiguous()


@pytest.mark.parametrize('eps', [0.5, 0.8, 0.95])
def test_hosvd_matches_four_svd_reference(eps):
    x = low_rank((6, 288, 10, 9), (3, 6, 4, 4), noise=0.05, seed=0)
    fast = hosvd(x, eps)
    plain = reference_hosvd(x, eps)
    assert fast.ranks == plain.ranks
    for u, v in zip(fast.factors, plain.factors):
        torch.testing.assert_close(u @ u.T, v @ v.T, rtol=0, atol=1e-8)
    torch.testing.assert_close(fast.reconstruct(), plain.reconstruct(),
                               rtol=0, atol=1e-8)
    # the weight gradients from either set of factors agree
    geometry = ConvGeometry((1, 1), (1, 1), (1, 1), 1)
    grad_output = torch.randn(6, 5, 10, 9, dtype=torch.float64)
    weight_shape = (5, 288, 3, 3)
    for path in ('factored', 'rebuilt'):
        torch.testing.assert_close(
            hosvd_weight_grad(fast, grad_output, weight_shape, geometry,
                              path),
            hosvd_weight_grad(plain, grad_output, weight_shape, geometry,
                              path))
    # and with eps = 1 they are the exact gradient
    full = hosvd(x, 1.0)
    torch.testing.assert_close(
        hosvd_weight_grad(full, grad_output, weight_shape, geometry),
        conv_weight_grad(x, grad_output, weight_shape, geometry))


@pytest.mark.parametrize('eps', [0.6, 0.9])
def test_dual_gram_gives_the_primal_ranks_and_subspaces(eps):
    # channels (300) > batch * height * width (2 * 4 * 4): dual Gram
    x = low_rank((2, 300, 4, 4), (2, 5, 3, 3), noise=0.05, seed=1)
    assert unfolding_module.uses_dual_gram(x.shape, 1)
    fast = hosvd(x, eps)
    plain = reference_hosvd(x, eps)
    assert fast.ranks == plain.ranks
    for u, v in zip(fast.factors, plain.factors):
        torch.testing.assert_close(u @ u.T, v @ v.T, rtol=0, atol=1e-8)
        torch.testing.assert_close(u.T @ u, torch.eye(u.shape[1],
                                                      dtype=u.dtype))
    torch.testing.assert_close(fast.core.abs(), plain.core.abs(), rtol=0,
                               atol=1e-8)
    # float32 as in training
    fast32 = hosvd(x.float(), eps)
    assert fast32.ranks == plain.ranks
    for u, v in zip(fast32.factors, plain.factors):
        torch.testing.assert_close(u.double() @ u.double().T, v @ v.T,
                                   rtol=0, atol=1e-4)


@pytest.mark.parametrize('dtype,eps', [(torch.float64, 0.8),
                                       (torch.float32, 0.95)])
def test_partial_eigensolver_matches_the_reference(dtype, eps, monkeypatch):
    # 512 channels from 2*16*16 columns: a primal Gram big enough for the
    # eigvalsh + subspace-iteration path
    x = low_rank((2, 512, 16, 16), (2, 6, 4, 4), noise=0.05, seed=2)
    calls = []
    real = decomposition.leading_eigenvectors
    monkeypatch.setattr(decomposition, 'leading_eigenvectors',
                        lambda *a: calls.append(a) or real(*a))
    assert x.shape[1] >= decomposition.PARTIAL_EIGH_MIN
    plain = reference_hosvd(x, eps)
    fast = hosvd(x.to(dtype), eps)
    assert len(calls) == 1  # the channel mode took the partial path
    monkeypatch.setattr(decomposition, 'PARTIAL_MAX_ITERS', 0)
    full_eigh = hosvd(x.to(dtype), eps)  # every large Gram by full eigh
    atol = 1e-8 if dtype == torch.float64 else 1e-4
    for got in (fast, full_eigh):
        assert got.ranks == plain.ranks
        for u, v in zip(got.factors, plain.factors):
            u = u.double()
            torch.testing.assert_close(u @ u.T, v @ v.T, rtol=0, atol=atol)
            torch.testing.assert_close(u.T @ u, torch.eye(
                u.shape[1], dtype=u.dtype), rtol=0, atol=atol)


def test_partial_eigensolver_falls_back_on_a_flat_spectrum(monkeypatch):
    x = torch.randn(1, 512, 16, 32, dtype=torch.float64)  # flat spectrum
    calls = []
    real = decomposition.leading_eigenvectors
    monkeypatch.setattr(decomposition, 'leading_eigenvectors',
                        lambda *a: calls.append(a) or real(*a))
    fast = hosvd(x, 0.5)
    plain = reference_hosvd(x, 0.5)
    assert not calls  # decay too slow: full eigh
    assert fast.ranks == plain.ranks
    u, v = fast.factors[1], plain.factors[1]
    torch.testing.assert_close(u @ u.T, v @ v.T, rtol=0, atol=1e-8)


def test_lapack_keeps_the_process_thread_count(monkeypatch):
    """The eigensolvers run with torch's thread count: nothing in the
    decomposition changes process-wide state."""
    threads = torch.get_num_threads()
    seen = []
    real = torch.linalg.eigh

    def spy(*args, **kwargs):
        seen.append(torch.get_num_threads())
        return real(*args, **kwargs)

    monkeypatch.setattr(torch.linalg, 'eigh', spy)
    monkeypatch.setattr(torch, 'set_num_threads', lambda n: pytest.fail(
        f'set_num_threads({n}) called by the decomposition'))
    hosvd(torch.randn(2, 6, 5, 4), 0.8)
    assert seen and set(seen) == {threads}
    assert torch.get_num_threads() == threads
