"""release_unused_features: in training, the backbone outputs no head
reads are dropped from its output tuple; losses and gradients are
bitwise the same, and the memory held after the backbone drops."""
import copy

import pytest
import torch
from mmengine.config import Config
from mmseg.registry import MODELS

from mmseg_hosvd.compression import CompressionConfig, apply_compression
from mmseg_hosvd.peak_memory import PeakMemoryMeter
from mmseg_hosvd.unused_features import install_feature_release
from test_frozen_forward import _samples
from test_training import leaf_config

pytestmark = pytest.mark.usefixtures('single_thread', 'memoised_mmseg_bases')

SIZE = 64


def fcn(release=True, cfg=None):
    cfg = cfg or Config.fromfile(leaf_config('fcn', '10l', 'hosvd'))
    torch.manual_seed(0)
    model = MODELS.build(copy.deepcopy(cfg.model))
    model.init_weights()
    hook = dict(cfg.default_hooks.compression)
    hook.pop('type')
    hook['release_unused_features'] = release
    applied = apply_compression(model, CompressionConfig.from_dict(hook))
    model.train()
    applied.set_norm_eval()
    return model, applied


def loss_and_grads(model):
    torch.manual_seed(1)
    inputs = torch.randn(2, 3, SIZE, SIZE)
    losses = model.loss(inputs, _samples(2, SIZE, 21))
    loss, _ = model.parse_losses(losses)
    loss.backward()
    return loss.detach(), {n: p.grad.clone()
                           for n, p in model.named_parameters()
                           if p.grad is not None}


def test_same_loss_and_gradients_bitwise():
    (plain, _), (lean, applied) = fcn(False), fcn(True)
    assert 'backbone outputs other than [3] released' in applied.summary()
    loss, grads = loss_and_grads(plain)
    lean_loss, lean_grads = loss_and_grads(lean)
    assert torch.equal(loss, lean_loss)
    assert grads.keys() == lean_grads.keys() and grads
    assert all(torch.equal(grads[n], lean_grads[n]) for n in grads)


def test_training_mode_only_and_removable():
    model, applied = fcn()
    x = torch.randn(1, 3, SIZE, SIZE)
    outs = model.backbone(x)
    assert [o is None for o in outs] == [True, True, True, False]
    model.eval()
    assert all(o is not None for o in model.backbone(x))
    model.train()
    applied.remove()
    assert tuple(model.backbone.out_indices) == (0, 1, 2, 3)
    assert all(o is not None for o in model.backbone(x))


def test_memory_in_and_after_the_backbone():
    """FCN-R18-d8 at batch 2, 64x64: the stage outputs of 64 and 128
    channels at 16x16 and 8x8 are not kept while layer3 and layer4 run
    (the backbone's own peak), nor is layer3's (256 channels, 8x8) after
    it returns."""
    held, peak = {}, {}
    for release in (False, True):
        model, _ = fcn(release)
        x = torch.randn(2, 3, SIZE, SIZE)
        meter = PeakMemoryMeter('cpu')
        with meter:
            outs = model.extract_feat(x)
        held[release], peak[release] = meter.net_bytes, meter.peak_bytes
        assert len(outs) == 4 and outs[3].shape == (2, 512, 8, 8)
        del outs
    assert peak[False] - peak[True] >= 4 * 2 * (64 * 16 * 16 + 128 * 8 * 8)
    freed = 4 * 2 * (64 * 16 * 16 + 128 * 8 * 8 + 256 * 8 * 8)
    assert held[False] - held[True] >= freed


def test_heads_reading_every_output_or_unknown_readers():
    """SegFormer's head reads all four stages: nothing is dropped. A head
    that reads its inputs its own way: the release does nothing, and says
    why."""
    from transformer_models import build
    model = build('segformer')
    release = install_feature_release(model)
    assert release.read == (0, 1, 2, 3)
    model.train()
    outs = model.backbone(torch.randn(1, 3, 32, 32))
    assert all(o is not None for o in outs)

    head = type(model.decode_head)
    odd = type('OddHead', (head, ), {'__module__': 'user_heads',
        '_transform_inputs': lambda self, inputs: inputs})
    model.decode_head.__class__ = odd
    release = install_feature_release(model)
    assert release.handles == []
    assert release.reason == ('decode_head: OddHead is not known to read '
                              'only in_index')


def test_bad_value_names_the_key():
    with pytest.raises(ValueError, match='release_unused_features: expected'):
        CompressionConfig(layers=['x'], release_unused_features='yes')
