"""Real configs, tiny data: each model family trains 2 iterations and
validates once with each method; freezing, BN eval and compression hold."""
import os.path as osp

import pytest
import torch
from mmengine.config import Config
from mmengine.hooks import Hook
from mmengine.runner import Runner

from conftest import CONFIGS, tiny_run_cfg
from mmseg_hosvd.ops import CompressedConv2d

FAMILIES = {
    'pspnet': 'pspnet/pspnet_r18-d8',
    'pspnet-m': 'mobilenet_v2/mobilenet-v2-d8_pspnet',
    'deeplabv3': 'deeplabv3/deeplabv3_r18-d8',
    'deeplabv3-m': 'mobilenet_v2/mobilenet-v2-d8_deeplabv3',
    'fcn': 'fcn/fcn_r18-d8',
    'upernet': 'upernet/upernet_r18',
}
METHOD_TAGS = {
    'vanilla': 'vanilla',
    'gradient_filter': 'gradient-filter',
    'svd': 'svd-eps0.8',
    'hosvd': 'hosvd-eps0.8',
}
#: every method a leaf config exists for (``asi`` is not in the training
#: matrix above but has leaf configs)
ALL_METHOD_TAGS = dict(METHOD_TAGS, asi='asi-eps0.8')


def leaf_config(family: str, setup: str, method: str) -> str:
    return osp.join(
        CONFIGS, f'{FAMILIES[family]}_{setup}-{ALL_METHOD_TAGS[method]}'
        '_1xb8-20k_voc12aug-512x512.py')


class SnapshotHook(Hook):
    """Records parameters, buffers and trainable flags once training starts
    (after weight init, freezing and loading)."""

    priority = 'LOWEST'

    def before_train(self, runner) -> None:
        model = runner.model
        self.params = {
            n: p.detach().clone()
            for n, p in model.named_parameters()
        }
        self.trainable = {
            n
            for n, p in model.named_parameters() if p.requires_grad
        }
        self.buffers = {n: b.clone() for n, b in model.named_buffers()}


def train_tiny(config: str, work_dir: str, data_root: str, **kwargs):
    cfg = tiny_run_cfg(Config.fromfile(config), work_dir, data_root,
                       **kwargs)
    runner = Runner.from_cfg(cfg)
    snapshot = SnapshotHook()
    runner.register_hook(snapshot)
    runner.train()
    return runner, snapshot


@pytest.mark.slow
@pytest.mark.parametrize('method', list(METHOD_TAGS))
@pytest.mark.parametrize('family', list(FAMILIES))
def test_two_iterations_and_validation(tmp_path, tiny_voc, family, method):
    runner, snapshot = train_tiny(
        leaf_config(family, '10l', method), str(tmp_path), tiny_voc)
    model = runner.model
    assert runner.iter == 2
    metrics = runner.message_hub.get_info('val/mIoU', None)
    scalars = runner.message_hub.log_scalars
    assert 'val/mIoU' in scalars or metrics is not None

    compressed = {
        n: m
        for n, m in model.named_modules() if isinstance(m, CompressedConv2d)
    }
    assert compressed, 'no conv was compressed/counted'
    assert all(m.method == method for m in compressed.values())
    compressed_weights = {f'{n}.weight' for n in compressed}
    assert compressed_weights <= snapshot.trainable
    assert 'decode_head.conv_seg.weight' in snapshot.trainable
    assert not any(n.startswith('decode_head.conv_seg') for n in compressed)
    for name, param in model.named_parameters():
        before = snapshot.params[name]
        if name not in snapshot.trainable:
            assert torch.equal(param, before), f'frozen {name} changed'
        elif name in compressed_weights:
            assert not torch.equal(param, before), f'{name} did not train'
    for name, buffer in model.named_buffers():
        assert torch.equal(buffer, snapshot.buffers[name]), \
            f'BN statistic {name} changed'

    hook = next(h for h in runner.hooks
                if type(h).__name__ == 'ActivationMemoryHook')
    summary = hook.summary()
    assert summary['iterations'] == 2
    assert set(summary['layers']) == set(compressed)
    if method == 'vanilla':
        for path, layer in summary['layers'].items():
            b, c, h, w = layer['input_shape']
            assert layer['paper_mib']['peak'] == pytest.approx(
                b * c * h * w * 4 / 2**20)
    else:
        assert summary['total']['kept_mib']['mean'] < sum(
            float(torch.Size(layer['input_shape']).numel()) * 4 / 2**20
            for layer in summary['layers'].values())


@pytest.mark.slow
@pytest.mark.parametrize('family', ['pspnet', 'deeplabv3-m'])
def test_five_layer_setups_train(tmp_path, tiny_voc, family):
    runner, snapshot = train_tiny(
        leaf_config(family, '5l', 'hosvd'), str(tmp_path), tiny_voc,
        val=False)
    assert runner.iter == 2
    assert not any(
        n.startswith('backbone') and 'layer' in n for n in snapshot.trainable)


@pytest.mark.slow
def test_num_layers_traces_the_last_convs(tmp_path, tiny_voc):
    cfg = Config.fromfile(leaf_config('fcn', '5l', 'hosvd'))
    cfg.default_hooks.compression = dict(
        type='ActivationCompressionHook', method='hosvd', eps=0.8,
        num_layers=5)
    cfg = tiny_run_cfg(cfg, str(tmp_path), tiny_voc, val=False)
    runner = Runner.from_cfg(cfg)
    snapshot = SnapshotHook()
    runner.register_hook(snapshot)
    runner.train()
    compressed = [
        n for n, m in runner.model.named_modules()
        if isinstance(m, CompressedConv2d)
    ]
    # FCN-R18 runs ... layer4.1.conv1, layer4.1.conv2, then the head's
    # convs.0, convs.1, conv_cat and finally conv_seg (trained, not counted)
    assert compressed == [
        'backbone.layer4.1.conv1', 'backbone.layer4.1.conv2',
        'decode_head.convs.0.conv', 'decode_head.convs.1.conv',
        'decode_head.conv_cat.conv'
    ]
    assert snapshot.trainable == {f'{n}.weight' for n in compressed} | {
        'decode_head.conv_seg.weight', 'decode_head.conv_seg.bias'
    }
