"""frozen_chunk and fold_frozen_norms: the frozen part of the model run on
chunks of the batch without grad, and its conv+BatchNorm pairs folded.

Losses and trainable gradients agree with the plain forward (float64, FCN
10L), state dicts and Parameters are untouched, remove() restores the
classes, batch-coupling modules are refused, and the step's peak memory
drops when the frozen stem dominates."""
import copy

import pytest
import torch
import torch.nn as nn
from mmengine.config import Config
from mmengine.structures import PixelData
from mmseg.registry import MODELS
from mmseg.structures import SegDataSample

from mmseg_hosvd.compression import CompressionConfig, apply_compression
from mmseg_hosvd.frozen_forward import FrozenChunkForward, frozen_module_paths
from mmseg_hosvd.ops.folding import LeanBatchNorm2d, NormFoldingConv2d
from mmseg_hosvd.peak_memory import PeakMemoryMeter
from test_lean_backward import _randomise_norms
from test_training import leaf_config

pytestmark = pytest.mark.usefixtures('single_thread', 'memoised_mmseg_bases')

SIZE = 32
FROZEN = ['backbone.stem', 'backbone.layer1', 'backbone.layer2',
          'backbone.layer3.0']


def _samples(batch: int, size: int, num_classes: int, seed: int = 0):
    generator = torch.Generator().manual_seed(seed)
    samples = []
    for _ in range(batch):
        label = torch.randint(0, num_classes, (1, size, size),
                              generator=generator)
        sample = SegDataSample(gt_sem_seg=PixelData(data=label))
        sample.set_metainfo(dict(img_shape=(size, size),
                                 ori_shape=(size, size),
                                 pad_shape=(size, size)))
        samples.append(sample)
    return samples


@pytest.fixture(scope='module')
def fcn():
    """FCN-R18 10L (hosvd) in float64 with random BN statistics: its config
    and a state dict."""
    cfg = Config.fromfile(leaf_config('fcn', '10l', 'hosvd'))
    torch.manual_seed(0)
    model = MODELS.build(copy.deepcopy(cfg.model)).double()
    model.init_weights()
    _randomise_norms(model, seed=1)
    return cfg, model.state_dict()


@pytest.fixture(scope='module')
def references(fcn):
    """Loss and gradients without the two keys, by ``lean_backward``."""
    cache = {}

    def reference(lean: str):
        if lean not in cache:
            cache[lean] = _loss_and_grads(_apply(fcn, lean_backward=lean)[0])
        return cache[lean]

    return reference


def _apply(fcn, **keys):
    cfg, state = fcn
    model = MODELS.build(copy.deepcopy(cfg.model)).double()
    model.load_state_dict(state)
    hook_cfg = copy.deepcopy(cfg.default_hooks.compression)
    hook_cfg.update(keys)
    applied = apply_compression(model,
                                CompressionConfig.from_hook_cfg(hook_cfg))
    model.train()
    applied.set_norm_eval()
    return model, applied


def _loss_and_grads(model: nn.Module, batch: int = 3):
    generator = torch.Generator().manual_seed(2)
    inputs = torch.randn(batch, 3, SIZE, SIZE, generator=generator,
                         dtype=torch.float64)
    losses = model(inputs, _samples(batch, SIZE, 21), mode='loss')
    loss, _ = model.parse_losses(losses)
    loss.backward()
    grads = {n: p.grad.clone() for n, p in model.named_parameters()
             if p.requires_grad}
    return loss.detach(), grads


def test_frozen_module_paths(fcn):
    model, applied = _apply(fcn)
    assert frozen_module_paths(model) == FROZEN
    assert not applied.frozen.chunked and not applied.frozen.folded


@pytest.mark.parametrize('keys', [
    dict(frozen_chunk=2),
    dict(fold_frozen_norms=True),
    dict(fold_frozen_norms=True, lean_backward='off'),
    dict(frozen_chunk=1, fold_frozen_norms=True, lean_backward='all'),
])
def test_same_loss_and_gradients(fcn, references, keys):
    ref_loss, ref_grads = references(keys.get('lean_backward', 'exact'))
    model, applied = _apply(fcn, **keys)
    plain_state = {k: v.clone() for k, v in fcn[1].items()}
    params = dict(model.named_parameters())
    batches, norm_outputs = [], []
    model.backbone.stem[0].register_forward_pre_hook(
        lambda module, args: batches.append(args[0].shape[0]))
    model.backbone.stem[1].register_forward_hook(
        lambda module, args, out: norm_outputs.append(out is args[0]))
    loss, grads = _loss_and_grads(model)
    # a folded BatchNorm makes no tensor of its own: the conv applied it
    assert norm_outputs == [keys.get('fold_frozen_norms', False)] * len(
        batches)
    chunk = keys.get('frozen_chunk')
    assert batches == ([2, 1] if chunk == 2 else [1, 1, 1]
                       if chunk == 1 else [3])
    assert list(applied.frozen.chunked) == (FROZEN if chunk else [])
    assert len(applied.frozen.folded) == (15 if 'fold_frozen_norms' in keys
                                          else 0)
    torch.testing.assert_close(loss, ref_loss, rtol=1e-10, atol=0)
    assert grads.keys() == ref_grads.keys() and grads
    for name, grad in ref_grads.items():
        torch.testing.assert_close(grads[name], grad, rtol=1e-9, atol=1e-12,
                                   msg=lambda m: f'{name}: {m}')
    # same names, same Parameter objects, same values
    assert list(model.state_dict()) == list(plain_state)
    assert all(params[n] is p for n, p in model.named_parameters())
    for name, value in model.state_dict().items():
        assert torch.equal(value, plain_state[name]), name


def test_remove_restores(fcn):
    plain, _ = _apply(fcn)
    classes = {n: type(m) for n, m in plain.named_modules()}
    model, applied = _apply(fcn, frozen_chunk=1, fold_frozen_norms=True)
    params = dict(model.named_parameters())
    assert isinstance(model.backbone.layer1, FrozenChunkForward)
    assert type(model.backbone.stem[0]) is NormFoldingConv2d
    assert isinstance(model.backbone.stem[1], LeanBatchNorm2d)
    keys = list(model.state_dict())
    applied.remove()
    built = {n: type(m) for n, m in
             MODELS.build(copy.deepcopy(fcn[0].model)).named_modules()}
    assert {n: type(m) for n, m in model.named_modules()} == built
    assert len(classes) == len(built)  # same modules as without the keys
    assert list(model.state_dict()) == keys
    assert all(params[n] is p for n, p in model.named_parameters())
    assert not hasattr(model.backbone.layer1, 'frozen_chunk')


def test_unchanged_in_eval_mode_and_with_grad_inputs(fcn):
    model, _ = _apply(fcn, frozen_chunk=1)
    batches = []
    model.backbone.layer1[0].conv1.register_forward_pre_hook(
        lambda module, args: batches.append(args[0].shape[0]))
    stem_out = model.backbone.maxpool(torch.randn(3, 64, 20, 20,
                                                  dtype=torch.float64))
    model.backbone.layer1(stem_out)
    assert batches == [1, 1, 1]
    model.eval()
    model.backbone.layer1(stem_out)
    assert batches[3:] == [3]
    model.train()
    out = model.backbone.layer1(stem_out.requires_grad_())
    assert batches[4:] == [3] and out.requires_grad


def test_config_refusals():
    base = dict(layers=['decode_head.conv_seg'])
    for value in (0, -1, True, 1.5, '1'):
        with pytest.raises(ValueError, match='frozen_chunk: expected'):
            CompressionConfig(frozen_chunk=value, **base)
    with pytest.raises(ValueError, match='fold_frozen_norms: expected'):
        CompressionConfig(fold_frozen_norms=1, **base)
    for key, value in (('frozen_chunk', 1), ('fold_frozen_norms', True)):
        with pytest.raises(ValueError,
                           match=f'{key} and norm_eval=False'):
            CompressionConfig(norm_eval=False, **{key: value}, **base)
    assert CompressionConfig(**base).frozen_chunk is None


def test_refuses_batch_coupled_modules(fcn):
    cfg, state = fcn
    model = MODELS.build(copy.deepcopy(cfg.model)).double()
    model.backbone.layer2[0].add_module('drop', nn.Dropout(0.1))
    hook_cfg = dict(copy.deepcopy(cfg.default_hooks.compression),
                    frozen_chunk=1)
    hook_cfg.pop('type')
    with pytest.raises(ValueError, match=r"frozen_chunk: 'backbone\.layer2"
                       r"\.0\.drop' \((Masked)?Dropout\) drops with p=0\.1"):
        apply_compression(model, CompressionConfig.from_dict(hook_cfg))
    # a BatchNorm put back in training mode after set_norm_eval()
    model, _ = _apply(fcn, frozen_chunk=1)
    model.backbone.stem[1].train()
    with pytest.raises(ValueError, match=r"frozen_chunk: 'backbone\.stem\.1'"
                       ' is a BatchNorm using batch statistics'):
        _loss_and_grads(model)


TINY = dict(
    type='EncoderDecoder',
    backbone=dict(type='ResNetV1c', depth=18, stem_channels=64,
                  base_channels=4, dilations=(1, 1, 1, 1),
                  strides=(1, 2, 2, 2), norm_eval=True),
    decode_head=dict(type='FCNHead', in_channels=32, in_index=3, channels=8,
                     num_convs=1, concat_input=False, num_classes=4,
                     loss_decode=dict(type='CrossEntropyLoss')),
    train_cfg=dict(), test_cfg=dict(mode='whole'))


def _step_peak(keys: dict, batch: int = 4, size: int = 96) -> int:
    torch.manual_seed(0)
    model = MODELS.build(copy.deepcopy(TINY))
    applied = apply_compression(model, CompressionConfig(
        layers=['backbone.layer4.1'], freeze=['backbone',
                                              '~backbone.layer4.1'],
        **keys))
    model.train()
    applied.set_norm_eval()
    inputs = torch.randn(batch, 3, size, size)
    samples = _samples(batch, size, 4)
    with PeakMemoryMeter('cpu') as meter:
        losses = model(inputs, samples, mode='loss')
        model.parse_losses(losses)[0].backward()
    return meter.peak_bytes


def test_step_peak_drops_when_the_frozen_stem_dominates():
    plain = _step_peak({})
    chunked = _step_peak(dict(frozen_chunk=1))
    # the stem's 64-channel conv at 48x48: (4, 64, 48, 48) float32 =
    # 2.25 MiB at batch 4, a quarter of that per chunk (5.6 -> 4.2 MiB)
    assert chunked < 0.85 * plain, (chunked, plain)
