"""One decomposition for an input read by several compressed convs (ASPP),
its cache's lifetime, memory totals that count shared storages once, and the
asi state's checkpoint round trip through the compression hook."""
import gc
import io

import pytest
import torch
import torch.nn as nn
from mmengine.registry import HOOKS

from mmseg_hosvd.compression import apply_compression
from mmseg_hosvd.engine.compression_hook import CHECKPOINT_KEY
from mmseg_hosvd.engine.memory_hook import ActivationMemoryHook, total_mib
from mmseg_hosvd.ops import CompressedConv2d, SubspaceTracker
from mmseg_hosvd.layer_paths import resolve_layers
from mmseg_hosvd.surgery import (compression_context, install_compression,
                                 remove_compression)

MIB = 2**20


class TinyASPP(nn.Module):
    """A stem, three branches reading one tensor, a bottleneck."""

    def __init__(self):
        super().__init__()
        self.stem = nn.Conv2d(3, 8, 3, padding=1)
        self.branches = nn.ModuleList([
            nn.Conv2d(8, 4, 1),
            nn.Conv2d(8, 4, 3, padding=1),
            nn.Conv2d(8, 4, 3, padding=2, dilation=2),
        ])
        self.bottleneck = nn.Conv2d(12, 5, 3, padding=1)

    def forward(self, x):
        x = torch.relu(self.stem(x))
        x = torch.cat([branch(x) for branch in self.branches], dim=1)
        return self.bottleneck(torch.relu(x))


LAYERS = ['branches.0', 'branches.1', 'branches.2', 'bottleneck']
BRANCHES = ['branches.0', 'branches.1', 'branches.2']


def smooth_input(seed=0):
    generator = torch.Generator().manual_seed(seed)
    x = torch.randn(4, 3, 12, 12, generator=generator)
    return nn.functional.avg_pool2d(x, 3, 1, 1)


def build(method, share_inputs, eps=0.8, **tracker):
    torch.manual_seed(0)
    model = TinyASPP()
    specs = resolve_layers(model, LAYERS, eps, 2)
    installed = install_compression(
        model, specs, method, share_inputs=share_inputs,
        subspaces=SubspaceTracker(**tracker) if tracker else None)
    return model, installed


def grads(model, x, steps=1):
    for _ in range(steps):
        model.zero_grad()
        x = x.detach().requires_grad_()
        model(x).square().sum().backward()
    return [x.grad] + [p.grad for p in model.parameters()]


@pytest.mark.parametrize('method', ['hosvd', 'svd', 'asi'])
def test_shared_decomposition_matches_per_conv(method):
    x = smooth_input()
    # asi: per-layer random starts differ by layer name; start both from
    # the exact factors so that the two runs must agree
    tracker = dict(init='hosvd') if method == 'asi' else {}
    shared, shared_convs = build(method, True, **tracker)
    separate, separate_convs = build(method, False, **tracker)
    for a, b in zip(grads(shared, x, 3), grads(separate, x, 3)):
        torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-6)
    for path in shared_convs:
        assert shared_convs[path].last_stats.ranks == \
            separate_convs[path].last_stats.ranks
    flags = [shared_convs[p].last_stats.reused for p in LAYERS]
    assert flags == [False, True, True, False]
    assert not any(separate_convs[p].last_stats.reused for p in LAYERS)
    context = compression_context(shared)
    assert context.aliases == {'branches.1': 'branches.0',
                               'branches.2': 'branches.0'}
    if method == 'asi':  # one state for the shared input
        assert set(context.subspaces.layers) == {'branches.0', 'bottleneck'}


def test_shared_factors_are_saved_once_and_counted_once():
    model, installed = build('hosvd', True)
    x = smooth_input().requires_grad_()
    saved = []

    def pack(tensor):
        saved.append(tensor)
        return tensor

    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        out = model(x)
    keys = [installed[p].last_stats.storage_keys for p in BRANCHES]
    assert keys[0] == keys[1] == keys[2] and keys[0]
    branch_stats = [installed[p].last_stats for p in BRANCHES]
    assert all(s.kept_bytes == branch_stats[0].kept_bytes
               for s in branch_stats)
    # autograd holds the same storages for the three branches
    ptrs = {t.untyped_storage().data_ptr() for t in saved}
    for key in keys[0]:
        assert key[1] in ptrs
    # totals: paper count per conv, kept bytes once per storage
    stats = ActivationMemoryHook().record(model)
    paper, kept = total_mib(stats)
    assert paper == pytest.approx(
        sum(s.paper_bytes for s in stats.values()) / MIB)
    bottleneck = stats['bottleneck'].kept_bytes
    assert kept == pytest.approx(
        (branch_stats[0].kept_bytes + bottleneck) / MIB)
    assert kept < sum(s.kept_bytes for s in stats.values()) / MIB
    out.sum().backward()


def test_vanilla_shared_input_is_counted_once():
    model, installed = build('vanilla', True)
    model(smooth_input().requires_grad_()).sum().backward()
    stats = ActivationMemoryHook().record(model)
    _, kept = total_mib(stats)
    expected = stats['branches.0'].kept_bytes + stats['bottleneck'].kept_bytes
    assert kept == pytest.approx(expected / MIB)


def test_cache_is_empty_after_the_forward_and_keeps_nothing_alive():
    model, installed = build('hosvd', True)
    cache = compression_context(model).cache
    x = smooth_input().requires_grad_()
    out = model(x)
    assert len(cache) == 0  # cleared by the model's forward hook
    assert cache.hits == 2
    # the branches alone (no model forward hook): entries die with the input
    stem = torch.relu(model.stem(x))
    outs = [model.branches[i](stem) for i in range(3)]
    assert len(cache) == 1
    del stem, outs
    gc.collect()
    assert len(cache) == 0
    out.sum().backward()
    assert remove_compression(model) == 4
    assert not model._forward_hooks


def test_in_place_change_invalidates_the_cache():
    model, installed = build('hosvd', True)
    x = torch.relu(model.stem(smooth_input()))
    first = installed['branches.0'](x)
    with torch.no_grad():
        x.mul_(2)  # bumps the version counter
    installed['branches.1'](x)
    assert not installed['branches.1'].last_stats.reused
    assert first.shape[1] == 4


def test_different_eps_are_not_shared():
    torch.manual_seed(0)
    model = TinyASPP()
    specs = resolve_layers(model, ['branches.0', dict(path='branches.1',
                                                      eps=0.95)], 0.8, 2)
    installed = install_compression(model, specs, 'hosvd')
    model(smooth_input().requires_grad_())
    assert not installed['branches.1'].last_stats.reused


# ------------------------------------------------------ hook and checkpoint


class FakeRunner:

    def __init__(self, model):
        self.model = model

        class Logger:

            def info(self, message):
                self.last = message

        self.logger = Logger()


def _hook(**kwargs):
    return HOOKS.build(dict(type='ActivationCompressionHook', method='asi',
                            eps=0.8, layers=LAYERS, **kwargs))


def test_asi_state_round_trips_through_the_hook_checkpoint():
    x = smooth_input(1)
    torch.manual_seed(0)
    model = TinyASPP()
    hook = _hook(seed=5)
    hook.applied = apply_compression(model, hook.config)  # as before_run
    grads(model, x, steps=2)
    checkpoint = dict(state_dict=model.state_dict())
    hook.before_save_checkpoint(FakeRunner(model), checkpoint)
    state = checkpoint[CHECKPOINT_KEY]
    assert set(state['asi']) == {'branches.0', 'bottleneck'}
    # state_dict keys are those of the plain model
    assert set(checkpoint['state_dict']) == set(TinyASPP().state_dict())
    buffer = io.BytesIO()
    torch.save(checkpoint, buffer)
    buffer.seek(0)
    loaded = torch.load(buffer, weights_only=True)

    torch.manual_seed(1)
    restored = TinyASPP()
    restored_hook = _hook(seed=6)  # a different seed: the state wins
    restored_hook.applied = apply_compression(restored, restored_hook.config)
    restored.load_state_dict(loaded['state_dict'])
    restored_hook.after_load_checkpoint(FakeRunner(restored), loaded)
    original_layers = compression_context(model).subspaces.layers
    restored_layers = compression_context(restored).subspaces.layers
    for name, layer in original_layers.items():
        assert restored_layers[name].ranks == layer.ranks
        assert restored_layers[name].steps == layer.steps
        for a, b in zip(restored_layers[name].bases, layer.bases):
            assert torch.equal(a, b)
    # the next step is identical
    for a, b in zip(grads(model, x), grads(restored, x)):
        torch.testing.assert_close(a, b)


def test_hook_ignores_state_for_other_methods_and_validates_budget():
    torch.manual_seed(0)
    model = TinyASPP()
    hook = HOOKS.build(dict(type='ActivationCompressionHook', method='hosvd',
                            layers=LAYERS))
    hook.applied = apply_compression(model, hook.config)  # as before_run
    checkpoint = {}
    hook.before_save_checkpoint(FakeRunner(model), checkpoint)
    assert CHECKPOINT_KEY not in checkpoint
    hook.after_load_checkpoint(FakeRunner(model),
                               {CHECKPOINT_KEY: {'asi': {'x': {}}}})
    with pytest.raises(ValueError, match='budget_mib is for'):
        HOOKS.build(dict(type='ActivationCompressionHook', method='hosvd',
                         budget_mib=1.0))
    with pytest.raises(ValueError, match='budget_mib must be'):
        HOOKS.build(dict(type='ActivationCompressionHook', method='asi',
                         budget_mib=-1))


def test_hook_budget_mode_respects_the_budget():
    x = smooth_input(2)
    torch.manual_seed(0)
    model = TinyASPP()
    budget_mib = 0.004
    installed = apply_compression(model,
                                  _hook(budget_mib=budget_mib).config).layers
    grads(model, x, steps=2)
    stats = {p: c.last_stats for p, c in installed.items()}
    _, kept = total_mib(stats)
    assert kept <= budget_mib
    assert compression_context(model).subspaces.pending_budget() == []


def test_global_rng_untouched_by_asi_training():
    model, _ = build('asi', True, seed=3)
    torch.manual_seed(42)
    state = torch.random.get_rng_state()
    grads(model, smooth_input(), steps=2)
    assert torch.equal(torch.random.get_rng_state(), state)


def test_compressed_conv_state_dict_has_no_extra_keys():
    model, installed = build('asi', True)
    grads(model, smooth_input(), steps=1)
    assert set(model.state_dict()) == set(TinyASPP().state_dict())
    assert all(isinstance(c, CompressedConv2d) for c in installed.values())


def test_model_with_installed_compression_pickles_and_deep_copies():
    import copy
    import pickle
    model, _ = build('asi', True)
    grads(model, smooth_input(), steps=1)
    clone = pickle.loads(pickle.dumps(model))
    assert compression_context(clone).subspaces.layers.keys() == \
        compression_context(model).subspaces.layers.keys()
    copied = copy.deepcopy(model)
    out = copied(smooth_input().requires_grad_())
    assert len(compression_context(copied).cache) == 0
    out.sum().backward()
