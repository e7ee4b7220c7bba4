"""Model surgery on a small model made of mmseg/mmcv building blocks."""
import pytest
import torch
import torch.nn as nn
from mmcv.cnn import ConvModule
from mmseg.models.backbones.resnet import BasicBlock

from mmseg_hosvd.ops import CompressedConv2d
from mmseg_hosvd.layer_paths import (expand_layer_paths, last_layer_paths,
                                     layer_execution_order, resolve_layers)
from mmseg_hosvd.surgery import (apply_freeze, batch_norms, check_trainable,
                                 compressed_layers, install_compression,
                                 remove_compression, set_norm_eval)


class Head(nn.Module):

    def __init__(self):
        super().__init__()
        self.bottleneck = ConvModule(
            8, 8, 3, padding=1, norm_cfg=dict(type='BN'))
        self.conv_seg = nn.Conv2d(8, 3, 1)

    def forward(self, x):
        return self.conv_seg(self.bottleneck(x))


class TinyNet(nn.Module):

    def __init__(self):
        super().__init__()
        self.stem = nn.Conv2d(3, 8, 3, padding=1)
        self.block = BasicBlock(8, 8)
        self.act = nn.ReLU()
        self.decode_head = Head()

    def forward(self, x):
        return self.decode_head(self.act(self.block(self.stem(x))))


def test_expand_layer_paths():
    model = TinyNet()
    assert expand_layer_paths(model, 'stem') == ('stem', )
    assert expand_layer_paths(model, 'decode_head.bottleneck') == (
        'decode_head.bottleneck.conv', )
    assert expand_layer_paths(model, 'block') == ('block.conv1', 'block.conv2')
    with pytest.raises(ValueError, match="'block.nope' does not exist"):
        expand_layer_paths(model, 'block.nope')
    with pytest.raises(ValueError, match="'act' is a ReLU, not an nn.Conv2d"):
        expand_layer_paths(model, 'act')


def test_resolve_layers_rejects_duplicates_classifier_and_bad_keys():
    model = TinyNet()
    specs = resolve_layers(
        model, ['stem', dict(path='block', eps=0.5, radius=3)], 0.9, 2)
    assert [(s.layer_paths, s.eps, s.radius) for s in specs] == [
        (('stem', ), 0.9, 2), (('block.conv1', 'block.conv2'), 0.5, 3)
    ]
    with pytest.raises(ValueError, match="'block.conv1'.*already listed"):
        resolve_layers(model, ['block', 'block.conv1'], 0.9, 2)
    with pytest.raises(ValueError, match='classifier conv_seg'):
        resolve_layers(model, ['decode_head.conv_seg'], 0.9, 2)
    with pytest.raises(ValueError, match=r"unknown key\(s\) \['rank'\]"):
        resolve_layers(model, [dict(path='stem', rank=3)], 0.9, 2)


def test_freeze_in_order_and_frozen_compressed_layer_rejected():
    model = TinyNet()
    apply_freeze(model, ['block', 'decode_head', '~decode_head.conv_seg'])
    assert not model.block.conv1.weight.requires_grad
    assert not model.decode_head.bottleneck.conv.weight.requires_grad
    assert model.decode_head.conv_seg.weight.requires_grad
    assert model.stem.weight.requires_grad
    with pytest.raises(ValueError, match="freeze: path 'missing'"):
        apply_freeze(model, ['missing'])
    specs = resolve_layers(model, ['block'], 0.9, 2)
    with pytest.raises(ValueError, match="'block' is listed as compressed"):
        check_trainable(model, specs)


def test_install_keeps_parameters_names_and_outputs():
    torch.manual_seed(0)
    model = TinyNet()
    x = torch.randn(2, 3, 12, 12)
    model.eval()
    expected = model(x)
    names_before = list(model.state_dict())
    params_before = dict(model.named_parameters())
    specs = resolve_layers(model, ['block', 'decode_head.bottleneck'], 0.9, 2)
    installed = install_compression(model, specs, 'hosvd')
    assert list(installed) == [
        'block.conv1', 'block.conv2', 'decode_head.bottleneck.conv'
    ]
    assert isinstance(model.block.conv1, CompressedConv2d)
    assert list(model.state_dict()) == names_before
    for name, param in model.named_parameters():
        assert param is params_before[name]
    torch.testing.assert_close(model(x), expected)
    assert set(compressed_layers(model)) == set(installed)
    assert remove_compression(model) == 3
    assert not compressed_layers(model)
    assert model.block.conv1.weight is params_before['block.conv1.weight']


def test_execution_order_and_last_convs():
    model = TinyNet()
    order = layer_execution_order(model, lambda: model(torch.zeros(1, 3, 8,
                                                                   8)))
    assert order == [
        'stem', 'block.conv1', 'block.conv2', 'decode_head.bottleneck.conv',
        'decode_head.conv_seg'
    ]
    assert last_layer_paths(order, 2) == [
        'block.conv2', 'decode_head.bottleneck.conv'
    ]
    with pytest.raises(ValueError, match='num_layers=5 but the model runs '
                       'only 4 layers'):
        last_layer_paths(order, 5)


def test_norm_eval():
    model = TinyNet().train()
    norms = batch_norms(model)
    assert len(norms) == 3
    set_norm_eval(norms)
    assert all(not n.training for n in norms)
    assert model.stem.training
