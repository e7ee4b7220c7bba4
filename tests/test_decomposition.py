"""Tests of mmseg_hosvd.decomposition (layer 1: HOSVD/SVD math)."""
import math

import pytest
import torch

from mmseg_hosvd.bench.decomposition import low_rank_plus_noise
from mmseg_hosvd.ops import (SVDFactors, TuckerFactors, check_eps,
                             explained_variance_rank, hosvd,
                             hosvd_paper_elements, svd_paper_elements,
                             truncated_svd)
from mmseg_hosvd.decomposition import tucker as decomposition
from mmseg_hosvd.decomposition import unfolding as unfolding_module
from mmseg_hosvd.decomposition.unfolding import mode_gram, mode_product


pytestmark = pytest.mark.usefixtures('single_thread')


def unfolding(x: torch.Tensor, mode: int) -> torch.Tensor:
    return x.movedim(mode, 0).reshape(x.shape[mode], -1)


def definition_rank(singular_values: torch.Tensor, eps: float) -> int:
    """The paper's rule, written directly: smallest K reaching eps."""
    energy = singular_values.double()**2
    total = energy.sum().item()
    running = 0.0
    for k, value in enumerate(energy.tolist(), start=1):
        running += value
        if running >= eps * total:
            return k
    return len(energy)


def storage_is_compact(tensor: torch.Tensor) -> bool:
    return (tensor.untyped_storage().nbytes() == tensor.numel() *
            tensor.element_size())


# ----------------------------------------------------------------- check_eps
@pytest.mark.parametrize('eps', [1, 1.0, 0.5, 1e-6])
def test_check_eps_accepts(eps):
    assert check_eps(eps) == float(eps)
    assert isinstance(check_eps(eps), float)


@pytest.mark.parametrize(
    'eps', [0, 0.0, -0.1, 1.0000001, 2, float('nan'),
            float('inf'), True, False, '0.5', None, [0.5]])
def test_check_eps_rejects(eps):
    with pytest.raises(ValueError, match='eps') as info:
        check_eps(eps)
    assert repr(eps) in str(info.value)


# -------------------------------------------------- explained_variance_rank
@pytest.mark.parametrize('eps, expected', [(0.1, 1), (0.4, 1), (0.41, 2),
                                           (0.7, 2), (0.71, 3), (0.9, 3),
                                           (0.95, 4), (1.0, 4)])
def test_explained_variance_rank_values(eps, expected):
    eigenvalues = torch.tensor([4.0, 3.0, 2.0, 1.0])  # total 10
    rank = explained_variance_rank(eigenvalues, eps)
    assert isinstance(rank, torch.Tensor)
    assert rank.device == eigenvalues.device
    assert rank.item() == expected


def test_explained_variance_rank_edge_cases():
    assert explained_variance_rank(torch.zeros(5), 0.5).item() == 1
    assert explained_variance_rank(torch.zeros(5), 1.0).item() == 5
    # eps == 1 is the full size even when trailing values vanish/round < 0
    spectrum = torch.tensor([5.0, 1e-9, 0.0, -1e-7])
    assert explained_variance_rank(spectrum, 1.0).item() == 4
    assert explained_variance_rank(spectrum, 0.99).item() == 1
    batched = explained_variance_rank(
        torch.tensor([[4.0, 3.0, 2.0, 1.0], [1.0, 0.0, 0.0, 0.0]]), 0.5)
    assert batched.tolist() == [2, 1]


def test_explained_variance_rank_validates_eps():
    with pytest.raises(ValueError, match='eps'):
        explained_variance_rank(torch.ones(3), 0.0)


# ------------------------------------------------------------- paper counts
def test_paper_element_formulas():
    shape, ranks = (8, 512, 64, 64), (2, 30, 10, 12)
    assert hosvd_paper_elements(shape, ranks) == (2 * 30 * 10 * 12 + 8 * 2 +
                                                  512 * 30 + 64 * 10 +
                                                  64 * 12)
    assert svd_paper_elements(shape, 3) == 3 * (8 + 512 * 64 * 64)
    with pytest.raises(ValueError):
        hosvd_paper_elements(shape, ranks[:3])


# ---------------------------------------------------------------- helpers
def test_mode_gram_and_mode_product_match_unfoldings():
    x = torch.randn(3, 4, 5, 6, dtype=torch.float64)
    for mode in range(4):
        matrix = unfolding(x, mode)
        torch.testing.assert_close(mode_gram(x, mode), matrix @ matrix.T)
        projection = torch.randn(x.shape[mode], 2, dtype=torch.float64)
        expected = (projection.T @ matrix).reshape(
            (2, ) + tuple(x.movedim(mode, 0).shape[1:])).movedim(0, mode)
        torch.testing.assert_close(mode_product(x, projection, mode),
                                   expected)


# ------------------------------------------------------------------- HOSVD
@pytest.mark.parametrize('dtype, atol', [(torch.float32, 1e-5),
                                         (torch.float64, 1e-12)])
def test_hosvd_full_rank_is_exact(dtype, atol):
    x = torch.randn(3, 5, 7, 6, dtype=dtype)
    factors = hosvd(x, 1.0)
    assert isinstance(factors, TuckerFactors)
    assert factors.ranks == tuple(x.shape)
    assert factors.shape == tuple(x.shape)
    torch.testing.assert_close(factors.reconstruct(), x, atol=atol, rtol=0)


def test_hosvd_full_rank_of_rank_deficient_input():
    # batch mode size 6 > C*H*W = 4: the unfolding has rank <= 4, so eps=1
    # keeps 4 orthonormal columns (the rank cap), still exactly
    x = torch.randn(6, 1, 2, 2, dtype=torch.float64)
    factors = hosvd(x, 1.0)
    assert factors.ranks == (4, 1, 2, 2)
    batch_factor = factors.factors[0]
    torch.testing.assert_close(batch_factor.T @ batch_factor,
                               torch.eye(4, dtype=torch.float64))
    torch.testing.assert_close(factors.reconstruct(), x)


@pytest.mark.parametrize('dtype, atol', [(torch.float32, 1e-5),
                                         (torch.float64, 1e-12)])
def test_mode_rank_is_capped_by_the_other_modes(dtype, atol):
    """A mode longer than the product of the others (an (M, C) linear input
    viewed as (M, 1, 1, C)) keeps at most that product of columns at
    eps=1, exactly: its factor is (1024, 32), not (1024, 1024)."""
    x = torch.randn(1024, 1, 1, 32, dtype=dtype)
    factors = hosvd(x, 1.0)
    assert factors.ranks == (32, 1, 1, 32)
    assert factors.paper_elements() < 2 * x.numel()  # was 33x
    torch.testing.assert_close(factors.reconstruct(), x, atol=atol, rtol=0)
    svd = truncated_svd(x, 1.0)
    assert svd.rank == 32
    torch.testing.assert_close(svd.reconstruct(), x, atol=atol, rtol=0)


def test_max_elements_returns_none_before_the_bases():
    x = torch.randn(1024, 1, 1, 32)
    assert hosvd(x, 1.0, max_elements=x.numel()) is None
    assert truncated_svd(x, 1.0, max_elements=x.numel()) is None
    assert hosvd(x, 0.5, max_elements=x.numel()) is not None


@pytest.mark.parametrize('eps', [0.3, 0.6, 0.85, 0.97])
def test_hosvd_ranks_follow_the_rank_rule(eps):
    torch.manual_seed(0)
    x = torch.randn(4, 9, 8, 7, dtype=torch.float64)
    x = x + torch.randn(4, 1, 1, 1, dtype=torch.float64)  # uneven spectra
    factors = hosvd(x, eps)
    expected = tuple(
        definition_rank(torch.linalg.svdvals(unfolding(x, mode)), eps)
        for mode in range(4))
    assert factors.ranks == expected


def test_hosvd_factors_and_core():
    torch.manual_seed(1)
    x = torch.randn(4, 6, 5, 7, dtype=torch.float64)
    factors = hosvd(x, 0.7)
    expected_core = x
    for mode, factor in enumerate(factors.factors):
        assert factor.shape == (x.shape[mode], factors.ranks[mode])
        torch.testing.assert_close(
            factor.T @ factor,
            torch.eye(factor.shape[1], dtype=torch.float64))
        # leading left singular vectors, up to sign
        left, _, _ = torch.linalg.svd(unfolding(x, mode),
                                      full_matrices=False)
        overlap = (left[:, :factor.shape[1]].T @ factor).abs().diagonal()
        torch.testing.assert_close(overlap, torch.ones_like(overlap))
        expected_core = mode_product(expected_core, factor, mode)
    torch.testing.assert_close(factors.core, expected_core)


@pytest.mark.parametrize('method', [hosvd, truncated_svd])
def test_ranks_grow_with_eps(method):
    torch.manual_seed(2)
    x = torch.randn(6, 8, 9, 10)
    previous = None
    for eps in (0.05, 0.2, 0.4, 0.6, 0.8, 0.9, 0.99, 1.0):
        result = method(x, eps)
        ranks = result.ranks if method is hosvd else (result.rank, )
        if previous is not None:
            assert all(now >= before
                       for now, before in zip(ranks, previous)), (eps, ranks)
        previous = ranks
    full = (tuple(x.shape) if method is hosvd else (x.shape[0], ))
    assert previous == full


@pytest.mark.parametrize('dtype', [torch.float16, torch.bfloat16,
                                   torch.float32])
def test_decomposition_dtype_is_float32(dtype):
    x = torch.randn(2, 3, 4, 5).to(dtype)
    tucker = hosvd(x, 0.8)
    svd = truncated_svd(x, 0.8)
    for tensor in tucker.tensors() + svd.tensors():
        assert tensor.dtype == torch.float32
    torch.testing.assert_close(hosvd(x, 1.0).reconstruct(), x.float(),
                               atol=1e-5, rtol=0)


def test_decomposition_dtype_float64():
    x = torch.randn(2, 3, 4, 5, dtype=torch.float64)
    for tensor in hosvd(x, 0.8).tensors() + truncated_svd(x, 0.8).tensors():
        assert tensor.dtype == torch.float64


def test_factors_own_compact_storage():
    x = torch.randn(4, 6, 8, 8)  # H and W share a batched eigh call
    tucker = hosvd(x, 0.6)
    svd = truncated_svd(x, 0.6)
    for tensor in tucker.tensors() + svd.tensors():
        assert tensor.is_contiguous()
        assert storage_is_compact(tensor)
    kept = sum(t.untyped_storage().nbytes() for t in tucker.tensors())
    assert kept == 4 * hosvd_paper_elements(x.shape, tucker.ranks)
    kept = sum(t.untyped_storage().nbytes() for t in svd.tensors())
    assert kept == 4 * svd_paper_elements(x.shape, svd.rank)


def test_hosvd_detaches_input():
    x = torch.randn(2, 3, 4, 5, requires_grad=True)
    for tensor in hosvd(x, 0.9).tensors() + truncated_svd(x, 0.9).tensors():
        assert not tensor.requires_grad


@pytest.mark.parametrize('method', [hosvd, truncated_svd])
def test_all_zero_input(method):
    x = torch.zeros(3, 4, 5, 6)
    result = method(x, 0.8)
    ranks = result.ranks if method is hosvd else (result.rank, )
    assert all(rank == 1 for rank in ranks)
    for tensor in result.tensors():
        assert torch.isfinite(tensor).all()
    assert torch.equal(result.reconstruct(), x)


@pytest.mark.parametrize('method', [hosvd, truncated_svd])
@pytest.mark.parametrize('bad_value', [float('nan'), float('inf')])
def test_non_finite_input_raises(method, bad_value):
    x = torch.randn(2, 3, 4, 5)
    x[1, 2, 3, 4] = bad_value
    with pytest.raises(FloatingPointError, match='NaN/Inf'):
        method(x, 0.8)


def test_rejects_non_4d_and_bad_eps():
    with pytest.raises(ValueError, match='4-D'):
        hosvd(torch.randn(3, 4, 5), 0.8)
    with pytest.raises(ValueError, match='eps'):
        truncated_svd(torch.randn(2, 3, 4, 5), 1.5)


# --------------------------------------------------------------------- SVD
def test_truncated_svd_matches_definition():
    torch.manual_seed(3)
    x = torch.randn(7, 3, 4, 5, dtype=torch.float64)
    x = x + 2 * torch.randn(1, 3, 4, 5, dtype=torch.float64)
    matrix = x.reshape(7, -1)
    left_ref, values, right_ref = torch.linalg.svd(matrix,
                                                   full_matrices=False)
    for eps in (0.5, 0.8, 0.95):
        factors = truncated_svd(x, eps)
        assert isinstance(factors, SVDFactors)
        rank = definition_rank(values, eps)
        assert factors.rank == rank
        assert factors.left.shape == (7, rank)
        assert factors.right.shape == (rank, 60)
        expected = (left_ref[:, :rank] * values[:rank]) @ right_ref[:rank]
        torch.testing.assert_close(factors.reconstruct(),
                                   expected.reshape(x.shape))
    full = truncated_svd(x, 1.0)
    assert full.rank == 7
    torch.testing.assert_close(full.reconstruct(), x)


def test_hosvd_never_calls_svd_and_syncs_once(monkeypatch):
    calls = {'sync': 0, 'eigh': 0}

    def forbidden(*args, **kwargs):
        raise AssertionError('a full SVD was called')

    for module, name in ((torch.linalg, 'svd'), (torch.linalg, 'svdvals'),
                         (torch, 'svd'), (torch.Tensor, 'svd')):
        monkeypatch.setattr(module, name, forbidden)

    real_eigh = torch.linalg.eigh

    def counting_eigh(*args, **kwargs):
        calls['eigh'] += 1
        return real_eigh(*args, **kwargs)

    monkeypatch.setattr(torch.linalg, 'eigh', counting_eigh)
    for name in ('tolist', 'item', '__bool__', '__int__', '__float__',
                 '__index__'):
        real = getattr(torch.Tensor, name)

        def counting(self, *args, _real=real, **kwargs):
            calls['sync'] += 1
            return _real(self, *args, **kwargs)

        monkeypatch.setattr(torch.Tensor, name, counting)

    x = torch.randn(3, 4, 5, 6)
    hosvd(x, 0.7)
    assert calls['sync'] == 1
    assert 1 <= calls['eigh'] <= 4
    calls['sync'] = 0
    truncated_svd(x, 0.7)
    assert calls['sync'] == 1
    calls['sync'] = 0
    x[0, 0, 0, 0] = float('nan')
    with pytest.raises(FloatingPointError):
        hosvd(x, 0.7)
    assert calls['sync'] == 1


@pytest.mark.parametrize('failures', [1, 2])
def test_eigh_convergence_failure_falls_back_to_the_same_factors(
        monkeypatch, failures):
    """LAPACK eigh can fail to converge (seen on MobileNetV2 activations with
    hundreds of dead channels); the fallbacks give the same decomposition."""
    torch.manual_seed(0)
    x = torch.relu(torch.randn(4, 24, 6, 7))
    x[:, :10] = 0  # dead channels: many repeated zero eigenvalues
    expected = hosvd(x, 0.9)
    real_eigh = torch.linalg.eigh
    calls = []

    def flaky_eigh(matrix, *args, **kwargs):
        calls.append(matrix.dtype)
        if len(calls) <= failures:
            raise torch.linalg.LinAlgError('failed to converge (simulated)')
        return real_eigh(matrix, *args, **kwargs)

    monkeypatch.setattr(torch.linalg, 'eigh', flaky_eigh)
    got = hosvd(x, 0.9)
    assert got.ranks == expected.ranks
    torch.testing.assert_close(got.reconstruct(), expected.reconstruct(),
                               atol=1e-5, rtol=1e-4)
    assert torch.float64 in calls


def svd_truncation(x: torch.Tensor, ranks) -> torch.Tensor:
    """HOSVD approximation whose bases come from a full SVD of each mode
    unfolding (the accuracy to match), in ``x``'s dtype."""
    bases = [torch.linalg.svd(unfolding(x, mode),
                              full_matrices=False)[0][:, :rank]
             for mode, rank in enumerate(ranks)]
    projected = x
    for mode, basis in enumerate(bases):
        projected = mode_product(projected, basis @ basis.T, mode)
    return projected


@pytest.mark.parametrize('eps, refined', [(0.8, False), (0.9, False),
                                          (0.999, True)])
def test_float32_hosvd_is_as_accurate_as_an_svd(eps, refined, monkeypatch):
    """Squaring the unfolding squares its condition number: at eps near 1
    the weakest kept vectors of a float32 Gram lost accuracy (2.6e-3 vs
    1.4e-6 for an SVD on this input); the float64 Gram of those modes makes
    float32 HOSVD as accurate as an SVD, and lower eps never compute it."""
    real = decomposition.float64_mode_gram
    calls = []

    def counting(*args, **kwargs):
        calls.append(args[1])
        return real(*args, **kwargs)

    monkeypatch.setattr(decomposition, 'float64_mode_gram', counting)
    x = low_rank_plus_noise((8, 8, 32, 32), (4, 4, 8, 8), 0.1, seed=0)
    reference = hosvd(x.double(), eps)
    factors = hosvd(x, eps)
    assert factors.ranks == reference.ranks
    assert factors.core.dtype == torch.float32
    expected = reference.reconstruct()

    def error(approximation):
        return ((approximation.double() - expected).norm() /
                expected.norm()).item()

    svd_error = error(svd_truncation(x, factors.ranks))
    assert error(factors.reconstruct()) <= 2 * svd_error
    assert bool(calls) == refined


def test_float64_mode_gram_matches_the_unfolding(monkeypatch):
    monkeypatch.setattr(unfolding_module, 'COPY_CHUNK_ELEMENTS', 64)
    x = torch.randn(3, 4, 5, 6)
    for mode in range(4):
        matrix = unfolding(x, mode).double()
        torch.testing.assert_close(
            unfolding_module.float64_mode_gram(x, mode), matrix @ matrix.T)
        torch.testing.assert_close(
            unfolding_module.float64_mode_gram(x, mode, dual=True),
            matrix.T @ matrix)


def spread_spectrum_input(rows: int, columns: int,
                          seed: int = 0) -> torch.Tensor:
    """(rows, columns) float64 of rank min(rows, columns) whose singular
    values spread over four decades (the float32 Gram's rounding matters)."""
    generator = torch.Generator().manual_seed(seed)
    rank = min(rows, columns)
    left = torch.linalg.qr(torch.randn(rows, rank, generator=generator,
                                       dtype=torch.float64)).Q
    right = torch.linalg.qr(torch.randn(columns, rank, generator=generator,
                                        dtype=torch.float64)).Q
    values = torch.logspace(0, -4, rank, dtype=torch.float64)
    return (left * values) @ right.T


@pytest.mark.parametrize('shape, eps', [((64, 4, 6, 6), 0.999),
                                        ((512, 1, 1, 64), 0.9999)])
def test_float32_svd_is_as_accurate_as_an_svd_at_high_eps(shape, eps):
    """truncated_svd in float32 at high eps is refined in float64 like the
    HOSVD: within a small factor of a float32 LAPACK SVD of the same rank
    (a float32 Gram alone was 10x to 25x worse). (64, 144): the row Gram
    (convs); (512, 64): the column Gram (a linear's (M, C) input)."""
    rows = shape[0]
    x = spread_spectrum_input(rows, math.prod(shape[1:])).reshape(shape)
    reference = truncated_svd(x, eps)
    factors = truncated_svd(x.float(), eps)
    assert factors.rank == reference.rank
    assert factors.left.dtype == torch.float32
    expected = reference.reconstruct()

    def error(approximation):
        return ((approximation.double() - expected).norm() /
                expected.norm()).item()

    u, s, vh = torch.linalg.svd(x.float().reshape(rows, -1),
                                full_matrices=False)
    k = reference.rank
    lapack = ((u[:, :k] * s[:k]) @ vh[:k]).reshape(shape)
    assert error(factors.reconstruct()) < 3 * error(lapack) + 1e-7
