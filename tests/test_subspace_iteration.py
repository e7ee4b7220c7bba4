"""ASI (warm-started subspace iteration): math, convergence to the HOSVD
subspace, rank rules (eps, budget), seeding without the global RNG, float32
under autocast, and the state round trip."""
import pytest
import torch
import torch.nn as nn

from mmseg_hosvd.ops import CompressedConv2d, hosvd
from mmseg_hosvd.ops.conv_gradients import hosvd_weight_grad, ConvGeometry
from mmseg_hosvd.decomposition import TuckerFactors
from mmseg_hosvd.decomposition.subspace_iteration import (SubspaceTracker, gram_route,
                                                gram_times, mode_cross,
                                                random_orthonormal,
                                                resize_basis,
                                                subspace_iteration_step)


def unfolding(x, mode):
    return x.movedim(mode, 0).reshape(x.shape[mode], -1)


def low_rank(shape, ranks, noise=0.01, seed=0, dtype=torch.float32):
    generator = torch.Generator().manual_seed(seed)
    x = torch.randn(ranks, generator=generator, dtype=torch.float64)
    for mode, (size, rank) in enumerate(zip(shape, ranks)):
        # decaying, well separated singular values per mode
        factor = torch.linalg.qr(
            torch.randn(size, rank, generator=generator,
                        dtype=torch.float64)).Q * torch.linspace(
                            2, 1, rank, dtype=torch.float64)
        x = torch.tensordot(x, factor, dims=([mode], [1])).movedim(-1, mode)
    x = x / x.std()
    x = x + noise * torch.randn(shape, generator=generator,
                                dtype=torch.float64)
    return x.to(dtype).contiguous()


def projector_distance(u, v):
    """Spectral norm of ``U U^T - V V^T`` (sine of the largest principal
    angle between the two subspaces)."""
    u, v = u.double(), v.double()
    return torch.linalg.matrix_norm(u @ u.T - v @ v.T, ord=2).item()


@pytest.mark.parametrize('mode', range(4))
def test_gram_times_routes_agree(mode):
    x = torch.randn(3, 7, 5, 6, dtype=torch.float64)
    basis = torch.linalg.qr(torch.randn(x.shape[mode], 2,
                                        dtype=torch.float64)).Q
    a = unfolding(x, mode)
    expected = a @ (a.T @ basis)
    torch.testing.assert_close(gram_times(x, mode, basis), expected)
    projected = torch.tensordot(x, basis, dims=([mode], [0])).movedim(-1,
                                                                      mode)
    torch.testing.assert_close(mode_cross(x, projected.contiguous(), mode),
                               expected)


def test_gram_route_picks_direct_for_large_modes_only():
    shape = (8, 512, 32, 32)
    assert gram_route(shape, 1, 8) == 'direct'
    assert gram_route(shape, 0, 4) == 'gram'
    assert gram_route(shape, 2, 16) == 'gram'
    assert gram_route(shape, 1, 512) == 'gram'


def test_converges_to_the_hosvd_subspace():
    x = low_rank((6, 24, 10, 12), (2, 4, 3, 3))
    exact = hosvd(x, 0.99)
    assert exact.ranks == (2, 4, 3, 3)
    generator = torch.Generator().manual_seed(0)
    bases = [random_orthonormal(n, k, generator)
             for n, k in zip(x.shape, exact.ranks)]
    distances = []
    for _ in range(4):
        factors = subspace_iteration_step(x, bases)
        bases = list(factors.factors)
        distances.append(max(projector_distance(u, v) for u, v in zip(
            bases, exact.factors)))
    assert distances[-1] < 1e-3, distances
    assert distances[-1] <= distances[0]
    # the approximation is as good as the HOSVD's
    error_asi = (factors.reconstruct() - x).norm()
    error_hosvd = (exact.reconstruct() - x).norm()
    assert error_asi <= error_hosvd * (1 + 1e-4)
    for basis in bases:
        torch.testing.assert_close(basis.T @ basis,
                                   torch.eye(basis.shape[1]),
                                   atol=1e-5, rtol=0)


def test_step_keeps_full_modes_as_identity_and_own_storage():
    x = torch.randn(2, 5, 4, 3)
    bases = [torch.eye(2), torch.linalg.qr(torch.randn(5, 2)).Q,
             torch.linalg.qr(torch.randn(4, 4)).Q,
             torch.linalg.qr(torch.randn(3, 1)).Q]
    factors = subspace_iteration_step(x, bases)
    assert factors.ranks == (2, 2, 4, 1)
    torch.testing.assert_close(factors.factors[0], torch.eye(2))
    torch.testing.assert_close(factors.factors[2], torch.eye(4))
    assert all(t.dtype == torch.float32 for t in factors.tensors())


def test_non_finite_input_keeps_the_previous_bases():
    x = torch.randn(2, 5, 4, 3)
    bases = [torch.linalg.qr(torch.randn(n, 1)).Q for n in x.shape]
    x[0, 0, 0, 0] = float('nan')
    factors = subspace_iteration_step(x, bases)
    for new, old in zip(factors.factors, bases):
        torch.testing.assert_close(new, old)
    assert torch.isnan(factors.core).any()


def test_resize_basis():
    generator = torch.Generator().manual_seed(0)
    basis = random_orthonormal(9, 3, generator)
    smaller = resize_basis(basis, 2, generator)
    torch.testing.assert_close(smaller, basis[:, :2])
    larger = resize_basis(basis, 5, generator)
    assert larger.shape == (9, 5)
    torch.testing.assert_close(larger.T @ larger, torch.eye(5), atol=1e-5,
                               rtol=0)
    # the old columns' span is kept
    assert projector_distance(larger[:, :3], basis) < 1e-5


# ------------------------------------------------------------------ tracker


def test_tracker_eps_rule_and_hosvd_init_match_hosvd():
    x = low_rank((4, 16, 8, 8), (2, 3, 2, 2), noise=0.05, seed=1)
    tracker = SubspaceTracker(init='hosvd')
    factors = tracker.decompose('layer', x, 0.8)
    exact = hosvd(x, 0.8)
    assert factors.ranks == exact.ranks
    for a, b in zip(factors.tensors(), exact.tensors()):
        torch.testing.assert_close(a, b)
    second = tracker.decompose('layer', x, 0.8)
    assert second.ranks == exact.ranks  # fixed
    assert tracker.layers['layer'].steps == 2


def test_tracker_random_init_is_seeded_and_leaves_global_rng_alone():
    x = low_rank((4, 16, 8, 8), (2, 3, 2, 2), noise=0.05, seed=2)
    torch.manual_seed(123)
    state = torch.random.get_rng_state()
    results = []
    for _ in range(2):
        tracker = SubspaceTracker(seed=7)
        results.append([tracker.decompose('a', x, 0.8).core
                        for _ in range(3)])
    assert torch.equal(torch.random.get_rng_state(), state)
    for a, b in zip(*results):
        assert torch.equal(a, b)
    other = SubspaceTracker(seed=8).decompose('a', x, 0.8).core
    assert not torch.equal(other, results[0][0])


def test_tracker_converges_from_random_start():
    x = low_rank((6, 24, 10, 12), (2, 4, 3, 3), seed=3)
    exact = hosvd(x, 0.99)
    tracker = SubspaceTracker(seed=0)
    for _ in range(5):
        factors = tracker.decompose('layer', x, 0.99)
    assert factors.ranks == exact.ranks
    assert max(projector_distance(u, v) for u, v in zip(
        factors.factors, exact.factors)) < 1e-3


def test_tracker_restarts_modes_whose_size_changed():
    tracker = SubspaceTracker(seed=0)
    tracker.decompose('layer', low_rank((4, 16, 8, 8), (2, 3, 2, 2)), 0.9)
    ranks = tracker.layers['layer'].ranks
    factors = tracker.decompose('layer',
                                low_rank((1, 16, 8, 8), (1, 3, 2, 2)), 0.9)
    assert factors.ranks == (1, ) + ranks[1:]
    assert factors.shape == (1, 16, 8, 8)


def test_tracker_budget_allocates_on_the_second_step():
    xs = {
        'a': low_rank((4, 16, 8, 8), (2, 4, 3, 3), noise=0.1, seed=4),
        'b': low_rank((4, 24, 6, 6), (2, 5, 2, 2), noise=0.1, seed=5),
    }
    budget_bytes = 3000
    tracker = SubspaceTracker(budget_mib=budget_bytes / 2**20, seed=0)
    first = {n: tracker.decompose(n, x, 0.8) for n, x in xs.items()}
    assert tracker.pending_budget() == ['a', 'b']
    second = {n: tracker.decompose(n, x, 0.8) for n, x in xs.items()}
    assert tracker.pending_budget() == []
    total = sum(f.paper_elements() * 4 for f in second.values())
    assert total <= budget_bytes
    assert any(second[n].ranks != first[n].ranks for n in xs)
    # ranks stay fixed afterwards
    third = {n: tracker.decompose(n, x, 0.8) for n, x in xs.items()}
    assert {n: f.ranks for n, f in third.items()} == {
        n: f.ranks for n, f in second.items()}
    with pytest.raises(ValueError, match='budget_mib=1e-06'):
        small = SubspaceTracker(budget_mib=1e-6)
        small.decompose('a', xs['a'], 0.8)
        small.decompose('a', xs['a'], 0.8)


def test_tracker_state_dict_round_trip():
    x = low_rank((4, 16, 8, 8), (2, 3, 2, 2), noise=0.05, seed=6)
    tracker = SubspaceTracker(seed=3)
    for _ in range(2):
        tracker.decompose('layer', x, 0.8)
    state = tracker.state_dict()
    assert all(isinstance(v, torch.Tensor) for v in state['layer'].values())
    restored = SubspaceTracker(seed=99)
    restored.load_state_dict(state)
    a = tracker.decompose('layer', x, 0.8)
    b = restored.decompose('layer', x, 0.8)
    for u, v in zip(a.tensors(), b.tensors()):
        assert torch.equal(u, v)
    assert restored.layers['layer'].steps == 3


def test_tracker_validates_arguments():
    with pytest.raises(ValueError, match='budget_mib'):
        SubspaceTracker(budget_mib=0)
    with pytest.raises(ValueError, match='init'):
        SubspaceTracker(init='svd')
    with pytest.raises(ValueError, match='seed'):
        SubspaceTracker(seed=1.5)
    with pytest.raises(FloatingPointError):
        SubspaceTracker().decompose('a', torch.full((2, 3, 4, 4),
                                                    float('inf')), 0.8)


# ------------------------------------------------------------------- module


def test_module_asi_gradients_match_hosvd_with_the_same_factors():
    torch.manual_seed(0)
    conv = nn.Conv2d(6, 5, 3, padding=1)
    asi = CompressedConv2d.from_conv(conv, 'asi', eps=0.9, name='c')
    x = low_rank((3, 6, 9, 9), (2, 3, 3, 3), noise=0.05).requires_grad_()
    grad_output = torch.randn(3, 5, 9, 9)
    for _ in range(3):
        output = asi(x)
        torch.testing.assert_close(output, conv(x))
        grads = torch.autograd.grad(output, (x, conv.weight, conv.bias),
                                    grad_output)
    stats = asi.last_stats
    assert stats.method == 'asi' and len(stats.ranks) == 4
    bases = asi.context.subspaces.layers['c'].bases
    factors = TuckerFactors(
        core=torch.empty(0), factors=tuple(bases))  # bases of the last step
    core = x.detach()
    for mode, basis in enumerate(factors.factors):
        core = torch.tensordot(core, basis, dims=([mode], [0])).movedim(
            -1, mode)
    expected_weight = hosvd_weight_grad(
        TuckerFactors(core=core.contiguous(), factors=factors.factors),
        grad_output, conv.weight.shape, ConvGeometry((1, 1), (1, 1), (1, 1),
                                                     1))
    torch.testing.assert_close(grads[1], expected_weight, rtol=1e-4,
                               atol=1e-5)
    expected_input = torch.autograd.grad(conv(x), x, grad_output)[0]
    torch.testing.assert_close(grads[0], expected_input)
    assert 'context' not in dict(asi.named_buffers())
    assert set(asi.state_dict()) == set(conv.state_dict())


def test_module_asi_under_autocast_orthogonalises_in_float32():
    torch.manual_seed(1)
    conv = nn.Conv2d(4, 6, 3, padding=1)
    asi = CompressedConv2d.from_conv(conv, 'asi', eps=0.9, name='c')
    x = torch.randn(2, 4, 8, 8, requires_grad=True)
    with torch.autocast('cpu', dtype=torch.bfloat16):
        for _ in range(2):
            output = asi(x)
    assert output.dtype == torch.bfloat16
    output.float().sum().backward()
    assert conv.weight.grad.dtype == torch.float32
    for basis in asi.context.subspaces.layers['c'].bases:
        assert basis.dtype == torch.float32
        torch.testing.assert_close(basis.T @ basis,
                                   torch.eye(basis.shape[1]), atol=1e-5,
                                   rtol=0)
    # kept in the autocast dtype (bf16): never more bytes than that input
    assert asi.last_stats.kept_bytes == 2 * asi.last_stats.paper_elements
    assert asi.last_stats.kept_bytes <= 2 * x.numel()
