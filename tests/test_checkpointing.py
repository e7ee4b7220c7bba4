"""Activation checkpointing of the trainable modules: exact gradients,
frozen parts untouched, names unchanged; and what mmengine's own
``activation_checkpointing`` does after a frozen backbone."""
import copy
import os.path as osp
import warnings

import pytest
import torch
import torch.nn as nn
from mmengine.config import Config
from mmengine.runner import turn_on_activation_checkpointing
from mmseg.registry import MODELS

from mmseg_hosvd.checkpointing import (CheckpointedModule, checkpoint_modules,
                                       checkpoint_paths, remove_checkpointing)
from mmseg_hosvd.surgery import apply_freeze

CONFIGS = osp.join(osp.dirname(osp.dirname(osp.abspath(__file__))),
                   'configs')


def frozen_backbone_model():
    """frozen conv -> trainable block (conv, BN, ReLU) -> trainable head."""
    torch.manual_seed(0)
    model = nn.Sequential()
    model.add_module('backbone', nn.Conv2d(3, 4, 3, padding=1))
    model.add_module('block', nn.Sequential(nn.Conv2d(4, 4, 3, padding=1),
                                            nn.BatchNorm2d(4), nn.ReLU()))
    model.add_module('head', nn.Conv2d(4, 2, 1))
    model.backbone.requires_grad_(False)
    return model.double()


def grads(model):
    return {name: None if p.grad is None else p.grad.clone()
            for name, p in model.named_parameters() if p.requires_grad}


def run_step(model, x):
    model.zero_grad(set_to_none=True)
    model(x).square().sum().backward()
    return grads(model)


def test_mmengine_activation_checkpointing_loses_the_first_blocks_grads():
    x = torch.randn(2, 3, 8, 8, dtype=torch.float64)
    model = frozen_backbone_model()
    turn_on_activation_checkpointing(model, ['block'])
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter('always')
        result = run_step(model, x)
    messages = [str(w.message) for w in caught]
    # mmengine passes no use_reentrant: PyTorch warns and uses reentrant
    assert any('use_reentrant parameter should be passed explicitly' in m
               for m in messages)
    assert any('None of the inputs have requires_grad=True' in m
               for m in messages)
    # the block after the frozen backbone gets no gradient at all
    assert result['block.0.weight'] is None
    assert result['block.1.weight'] is None
    assert result['head.weight'] is not None


def test_ours_after_a_frozen_backbone_is_exact():
    x = torch.randn(2, 3, 8, 8, dtype=torch.float64)
    reference = frozen_backbone_model()
    expected = run_step(reference, x)
    model = frozen_backbone_model()
    checkpoint_modules(model, ['block'])
    assert isinstance(model.block, CheckpointedModule)
    with warnings.catch_warnings():
        warnings.simplefilter('error')
        result = run_step(model, x)
    assert result.keys() == expected.keys()
    for name in expected:
        torch.testing.assert_close(result[name], expected[name], rtol=0,
                                   atol=1e-12)
    assert model.backbone.weight.grad is None
    # BN running statistics updated once, as without checkpointing
    torch.testing.assert_close(model.block.inner[1].running_mean,
                               reference.block[1].running_mean)
    assert int(model.block.inner[1].num_batches_tracked) == 1
    assert model.state_dict().keys() == reference.state_dict().keys()


def test_no_grad_forward_is_the_plain_forward():
    x = torch.randn(2, 3, 8, 8, dtype=torch.float64)
    reference = frozen_backbone_model().eval()
    model = frozen_backbone_model().eval()
    checkpoint_modules(model, ['block'])
    with torch.no_grad():
        torch.testing.assert_close(model(x), reference(x), rtol=0, atol=0)


def test_train_eval_reaches_the_inner_module():
    model = frozen_backbone_model()
    checkpoint_modules(model, ['block'])
    model.eval()
    assert not model.block.inner.training
    assert not model.block.inner[1].training
    model.train()
    assert model.block.inner.training


def test_bad_paths():
    model = frozen_backbone_model()
    with pytest.raises(ValueError, match="no module 'nope'"):
        checkpoint_modules(model, ['nope'])
    with pytest.raises(ValueError, match='head: cannot checkpoint a Conv2d '
                       "with direct parameters or buffers \\['weight', "
                       "'bias'\\]"):
        checkpoint_modules(model, ['head'])
    with pytest.raises(ValueError, match='whole model'):
        checkpoint_modules(model, [''])
    checkpoint_modules(model, ['block'])
    with pytest.raises(ValueError, match='already checkpointed'):
        checkpoint_modules(model, ['block'])
    with pytest.raises(ValueError, match='placement must be one of'):
        checkpoint_paths(model, 'layer')


def model_10l(name='fcn', dtype=torch.float64):
    cfg = Config.fromfile(
        osp.join(CONFIGS, name, f'{name}_r18-d8_10l-vanilla_1xb8-20k_'
                 'voc12aug-512x512.py'))
    model_cfg = copy.deepcopy(cfg.model)
    model_cfg.pop('data_preprocessor', None)
    model_cfg.backbone['init_cfg'] = None
    torch.manual_seed(0)
    model = MODELS.build(model_cfg).to(dtype)
    apply_freeze(model, cfg.default_hooks.compression['freeze'])
    model.train()
    return model


def test_placements_on_fcn_10l():
    model = model_10l('fcn')
    assert checkpoint_paths(model, 'segment') == [
        'backbone.layer3.1', 'backbone.layer4', 'decode_head.convs',
        'decode_head.conv_cat'
    ]
    assert checkpoint_paths(model, 'block') == [
        'backbone.layer3.1', 'backbone.layer4.0', 'backbone.layer4.1',
        'decode_head.convs.0', 'decode_head.convs.1', 'decode_head.conv_cat'
    ]


def test_placements_on_deeplabv3_10l():
    # layer4's convs train, its BatchNorms and downsample are frozen
    model = model_10l('deeplabv3')
    aspp = [f'decode_head.aspp_modules.{i}' for i in range(4)]
    assert checkpoint_paths(model, 'segment') == [
        'backbone.layer4', *aspp, 'decode_head.bottleneck'
    ]
    assert checkpoint_paths(model, 'block') == [
        'backbone.layer4.0', 'backbone.layer4.1', *aspp,
        'decode_head.bottleneck'
    ]


@pytest.mark.parametrize('name, placement, count', [
    ('fcn', 'block', 6), ('fcn', 'segment', 4), ('deeplabv3', 'block', 7),
    ('deeplabv3', 'segment', 6)
])
def test_10l_gradients_equal_without_checkpointing(name, placement, count):
    images = torch.randn(2, 3, 32, 32, dtype=torch.float64)

    def step(model):
        model.zero_grad(set_to_none=True)
        feats = model.extract_feat(images)
        model.decode_head(feats).square().mean().backward()
        return grads(model)

    reference = model_10l(name)
    expected = step(reference)
    model = model_10l(name)
    frozen = {n: p.clone() for n, p in model.named_parameters()
              if not p.requires_grad}
    keys = list(model.state_dict())
    paths = checkpoint_modules(model, checkpoint_paths(model, placement))
    assert len(paths) == count
    assert list(model.state_dict()) == keys
    result = step(model)
    for name in expected:
        torch.testing.assert_close(result[name], expected[name])
    for name, param in model.named_parameters():
        if name in frozen:
            assert param.grad is None
            assert torch.equal(param, frozen[name])
    for (name, buf), ref in zip(model.named_buffers(), reference.buffers()):
        torch.testing.assert_close(buf, ref, msg=name)
    assert remove_checkpointing(model) == len(paths)
    assert list(model.state_dict()) == keys
    assert not any(isinstance(m, CheckpointedModule) for m in model.modules())


def test_the_hook_key_checkpoints_after_freezing_and_is_removed():
    from mmseg_hosvd.compression import CompressionConfig, apply_compression
    cfg = Config.fromfile(
        osp.join(CONFIGS, 'fcn', 'fcn_r18-d8_10l-vanilla_1xb8-20k_'
                 'voc12aug-512x512.py'))
    entry = dict(cfg.default_hooks.compression)
    entry.pop('type')
    model_cfg = copy.deepcopy(cfg.model)
    model_cfg.pop('data_preprocessor', None)
    model_cfg.backbone['init_cfg'] = None
    images = torch.randn(2, 3, 32, 32, dtype=torch.float64)

    def step(model):
        model.zero_grad(set_to_none=True)
        model.decode_head(model.extract_feat(images)).square().mean(
        ).backward()
        return grads(model)

    def built():
        torch.manual_seed(0)
        model = MODELS.build(copy.deepcopy(model_cfg)).double()
        model.train()
        return model

    def applied_to(model, placement):
        return apply_compression(model, CompressionConfig.from_hook_cfg(
            dict(entry, activation_checkpointing=placement,
                 release_unused_features=False)))

    reference = built()
    assert applied_to(reference, None).checkpointed == []
    expected = step(reference)
    model = built()
    keys = list(model.state_dict())
    applied = applied_to(model, 'block')
    assert applied.checkpointed == checkpoint_paths(model, 'block')
    assert len(applied.checkpointed) == 6
    assert 'checkpointed: backbone.layer3.1' in applied.summary()
    assert list(model.state_dict()) == keys
    result = step(model)
    assert result.keys() == expected.keys()
    for name in expected:
        torch.testing.assert_close(result[name], expected[name])
    applied.remove()
    assert not any(isinstance(m, CheckpointedModule) for m in model.modules())
    assert list(model.state_dict()) == keys


@pytest.mark.parametrize('values, message', [
    (dict(activation_checkpointing='layer'), "expected None or one of"),
    (dict(activation_checkpointing='block', method='hosvd'),
     "needs method='vanilla'"),
    (dict(activation_checkpointing='block', method='vanilla',
          layers=['a', dict(path='b', method='svd')]),
     "needs method='vanilla'"),
])
def test_the_hook_key_refuses_bad_values(values, message):
    from mmseg_hosvd.compression import CompressionConfig
    values = dict(dict(layers=['decode_head.conv_seg']), **values)
    with pytest.raises(ValueError, match=message) as error:
        CompressionConfig(**values)
    assert 'activation_checkpointing' in str(error.value)
