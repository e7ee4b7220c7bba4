"""The paper's configs: 84 fine-tuning leaves (72 of the paper's methods, 12
ASI) and 6 calibration configs.

Every runnable config under ``configs/`` (not ``_base_`` folders, not
``configs/demo``) is parsed; one model per (model, setup) is built and the
freeze / compressed-layer paths of all its leaves are resolved on it. The
values are those of docs/paper_setup.md. Every config's hooks are built
(their constructors validate the arguments).
"""
import functools
import glob
import os.path as osp
import re

import pytest
import torch.nn as nn

import mmseg_hosvd.engine  # noqa: F401  (before mmseg.models: mmcv.ops fallback)
from mmseg.registry import HOOKS, MODELS
from mmseg.utils import register_all_modules

from conftest import CONFIGS, REPO
from leaf_configs import (METHODS, SETUPS, check_hook_settings,
                          check_sgd_and_hooks, leaf_config_path, load)
from mmseg_hosvd import surgery
from mmseg_hosvd.layer_paths import expand_layer_paths

URL_ROOT = 'https://download.openmmlab.com/mmsegmentation/v0.5/'

# model: (folder, name prefix, calibration iterations, checkpoint path)
MODELS_ = {
    'PSPNet': ('pspnet', 'pspnet_r18-d8', 1000,
               'pspnet/pspnet_r18-d8_512x1024_80k_cityscapes/'
               'pspnet_r18-d8_512x1024_80k_cityscapes_20201225_021458-'
               '09ffa746.pth'),
    'PSPNet-M': ('mobilenet_v2', 'mobilenet-v2-d8_pspnet', 5000,
                 'mobilenet_v2/pspnet_m-v2-d8_512x1024_80k_cityscapes/'
                 'pspnet_m-v2-d8_512x1024_80k_cityscapes_20200825_124817-'
                 '19e81d51.pth'),
    'DLV3': ('deeplabv3', 'deeplabv3_r18-d8', 1000,
             'deeplabv3/deeplabv3_r18-d8_512x1024_80k_cityscapes/'
             'deeplabv3_r18-d8_512x1024_80k_cityscapes_20201225_021506-'
             '23dffbe2.pth'),
    'DLV3-M': ('mobilenet_v2', 'mobilenet-v2-d8_deeplabv3', 5000,
               'mobilenet_v2/deeplabv3_m-v2-d8_512x1024_80k_cityscapes/'
               'deeplabv3_m-v2-d8_512x1024_80k_cityscapes_20200825_124836-'
               'bef03590.pth'),
    'FCN': ('fcn', 'fcn_r18-d8', 1000,
            'fcn/fcn_r18-d8_512x1024_80k_cityscapes/'
            'fcn_r18-d8_512x1024_80k_cityscapes_20201225_021327-6c50f8b4.pth'),
    'UPerNet': ('upernet', 'upernet_r18', 1000,
                'upernet/upernet_r18_512x1024_40k_cityscapes/'
                'upernet_r18_512x1024_40k_cityscapes_20220615_113231-'
                '12ee861d.pth'),
}
# docs/paper_setup.md, "Which layers": (freeze, [(compressed path, radius)]).
_DLV3_5L = ([
    'backbone', 'decode_head', '~decode_head.conv_seg',
    '~decode_head.bottleneck', '~decode_head.aspp_modules'
], [('decode_head.bottleneck', 3), ('decode_head.aspp_modules.0', 3),
    ('decode_head.aspp_modules.1', 3), ('decode_head.aspp_modules.2', 6),
    ('decode_head.aspp_modules.3', 9)])
_UPER_5L = ([
    'backbone', 'decode_head', '~decode_head.conv_seg',
    '~decode_head.fpn_bottleneck', '~decode_head.fpn_convs',
    '~decode_head.bottleneck'
], [('decode_head.fpn_bottleneck', 8), ('decode_head.fpn_convs.0', 8),
    ('decode_head.fpn_convs.1', 4), ('decode_head.fpn_convs.2', 2),
    ('decode_head.bottleneck', 2)])
PAPER_LAYERS = {
    ('PSPNet', '5l'): (['backbone'], [('decode_head.bottleneck', 4)]),
    ('PSPNet', '10l'): (['backbone', '~backbone.layer4'],
                        [('decode_head.bottleneck', 4),
                         ('backbone.layer4.1', 4), ('backbone.layer4.0', 4)]),
    ('PSPNet-M', '5l'): (['backbone'], [('decode_head.bottleneck', 4)]),
    ('PSPNet-M', '10l'): ([
        'backbone', '~backbone.layer7', '~backbone.layer6.2.conv.2',
        '~backbone.layer6.2.conv.1'
    ], [('decode_head.bottleneck', 4), ('backbone.layer7.0.conv.2', 4),
        ('backbone.layer7.0.conv.1', 4), ('backbone.layer7.0.conv.0', 4),
        ('backbone.layer6.2.conv.2', 4), ('backbone.layer6.2.conv.1', 4)]),
    ('DLV3', '5l'): _DLV3_5L,
    ('DLV3', '10l'): (_DLV3_5L[0] + [
        '~backbone.layer4.1.conv2', '~backbone.layer4.1.conv1',
        '~backbone.layer4.0.conv2', '~backbone.layer4.0.conv1'
    ], _DLV3_5L[1] + [('backbone.layer4.1', 2), ('backbone.layer4.0', 2)]),
    ('DLV3-M', '5l'): _DLV3_5L,
    ('DLV3-M', '10l'): (
        ['backbone', '~backbone.layer7', '~backbone.layer6.2.conv.2'],
        _DLV3_5L[1] + [('backbone.layer7.0.conv.2', 3),
                       ('backbone.layer7.0.conv.1', 3),
                       ('backbone.layer7.0.conv.0', 3),
                       ('backbone.layer6.2.conv.2', 3)]),
    ('FCN', '5l'): (['backbone', '~backbone.layer4.1'],
                    [('decode_head.conv_cat', 4), ('decode_head.convs.0', 4),
                     ('decode_head.convs.1', 4), ('backbone.layer4.1', 4)]),
    ('FCN', '10l'): (['backbone', '~backbone.layer4', '~backbone.layer3.1'],
                     [('decode_head.conv_cat', 2), ('decode_head.convs.0', 2),
                      ('decode_head.convs.1', 2), ('backbone.layer4.1', 2),
                      ('backbone.layer4.0', 2),
                      ('backbone.layer4.0.downsample.0', 2),
                      ('backbone.layer3.1', 2)]),
    ('UPerNet', '5l'): _UPER_5L,
    ('UPerNet', '10l'): (_UPER_5L[0] + [
        '~decode_head.lateral_convs', '~decode_head.psp_modules.0',
        '~decode_head.psp_modules.1'
    ], _UPER_5L[1] + [('decode_head.lateral_convs.0', 8),
                      ('decode_head.lateral_convs.1', 4),
                      ('decode_head.lateral_convs.2', 2)]),
}
# (trainable convs besides conv_seg after the freeze list, compressed convs
# once BasicBlocks are expanded to conv1 + conv2)
CONV_COUNTS = {
    ('PSPNet', '5l'): (5, 1), ('PSPNet', '10l'): (10, 5),
    ('PSPNet-M', '5l'): (5, 1), ('PSPNet-M', '10l'): (10, 6),
    ('DLV3', '5l'): (5, 5), ('DLV3', '10l'): (9, 9),
    ('DLV3-M', '5l'): (5, 5), ('DLV3-M', '10l'): (10, 9),
    ('FCN', '5l'): (5, 5), ('FCN', '10l'): (10, 10),
    ('UPerNet', '5l'): (5, 5), ('UPerNet', '10l'): (10, 8),
}

RESNET_D8 = dict(strides=(1, 2, 1, 1), dilations=(1, 1, 2, 4))
MOBILENET = dict(
    type='MobileNetV2',
    widen_factor=1.,
    strides=(1, 2, 2, 1, 1, 1, 1),
    dilations=(1, 1, 1, 2, 2, 4, 4),
    out_indices=(1, 2, 4, 6))
ARCH = {
    'PSPNet': (dict(type='ResNetV1c', depth=18, **RESNET_D8),
               dict(type='PSPHead', in_channels=512, channels=128,
                    pool_scales=(1, 2, 3, 6))),
    'PSPNet-M': (MOBILENET,
                 dict(type='PSPHead', in_channels=320, channels=128,
                      pool_scales=(1, 2, 3, 6))),
    'DLV3': (dict(type='ResNetV1c', depth=18, **RESNET_D8),
             dict(type='ASPPHead', in_channels=512, channels=128,
                  dilations=(1, 12, 24, 36))),
    'DLV3-M': (MOBILENET,
               dict(type='ASPPHead', in_channels=320, channels=128,
                    dilations=(1, 12, 24, 36))),
    'FCN': (dict(type='ResNetV1c', depth=18, **RESNET_D8),
            dict(type='FCNHead', in_channels=512, channels=128, num_convs=2,
                 concat_input=True)),
    'UPerNet': (dict(type='ResNetV1c', depth=18, strides=(1, 2, 2, 2),
                     dilations=(1, 1, 1, 1)),
                dict(type='UPerHead', in_channels=[64, 128, 256, 512],
                     channels=512, pool_scales=(1, 2, 3, 6))),
}


def leaf_path(model, setup, tag):
    return leaf_config_path(*MODELS_[model][:2], setup, tag)


def calib_path(model):
    folder, prefix, iters = MODELS_[model][:3]
    name = f'{prefix}_calib_1xb8-{iters // 1000}k_voc12aug-512x512.py'
    return osp.join(CONFIGS, folder, name)


LEAVES = [(m, s, t) for m in MODELS_ for s in SETUPS for t in METHODS]


def runnable_configs():
    """Every .py under configs/ except bases (``_base_`` folders) and demo."""
    found = []
    for path in glob.glob(osp.join(CONFIGS, '**', '*.py'), recursive=True):
        parts = osp.relpath(path, CONFIGS).split(osp.sep)
        if '_base_' in parts or parts[0] == 'demo':
            continue
        found.append(path)
    return sorted(found)



@functools.lru_cache(maxsize=None)
def build(model, setup):
    register_all_modules()
    cfg = load(leaf_path(model, setup, 'vanilla'))
    return MODELS.build(cfg.model)


def expand(model, path):
    """The nn.Conv2d paths a compressed-layer path stands for."""
    return list(expand_layer_paths(model, path))


def apply_freeze(model, freeze):
    """The freeze list applied to the (cached, shared) model from scratch."""
    model.requires_grad_(True)
    surgery.apply_freeze(model, freeze)


def hook_args(cfg):
    hook = cfg.default_hooks['compression']
    assert hook['type'] == 'ActivationCompressionHook'
    return hook


# --------------------------------------------------------------- inventory


def test_inventory():
    # configs/camvid holds the CPU CamVid experiment, configs/segformer and
    # configs/swin the transformer segmentors
    # (tests/test_transformer_configs.py), not the paper's configs
    found = {
        p
        for p in runnable_configs() if osp.relpath(p, CONFIGS).split(
            osp.sep)[0] not in ('camvid', 'segformer', 'swin')
    }
    leaves = {leaf_path(*leaf) for leaf in LEAVES}
    calibs = {calib_path(m) for m in MODELS_}
    assert len(leaves) == 84 and len(calibs) == 6
    assert found == leaves | calibs, (
        f'missing: {sorted((leaves | calibs) - found)}; '
        f'unexpected: {sorted(found - leaves - calibs)}')


# ------------------------------------------------------------- every config


def check_common(cfg, model_name, calibration):
    backbone, head = ARCH[model_name]
    m = cfg.model
    assert m.type == 'EncoderDecoder'
    assert m.pretrained is None
    assert m.auxiliary_head is None
    assert m.backbone.get('init_cfg') is None
    assert m.backbone.get('pretrained') is None
    for key, value in backbone.items():
        assert m.backbone[key] == value, key
    assert m.backbone.norm_eval is (not calibration)
    for key, value in head.items():
        assert m.decode_head[key] == value, key
    assert m.decode_head.num_classes == 21
    assert m.decode_head.dropout_ratio == 0
    assert m.data_preprocessor.size == (512, 512)
    assert m.test_cfg == dict(mode='whole')
    text = cfg.pretty_text
    assert 'open-mmlab://' not in text and 'mmcls://' not in text

    assert 'mmseg_hosvd.engine' in cfg.custom_imports.imports
    assert cfg.randomness.seed == 233
    assert cfg.model_wrapper_cfg.find_unused_parameters is False
    assert cfg.load_from

    # data: augmented VOC, 512x512 crops, batch 8
    train = cfg.train_dataloader
    assert train.batch_size == 8
    assert train.dataset.type == 'ConcatDataset'
    parts = train.dataset.datasets
    assert [(d.ann_file, d.data_prefix.seg_map_path) for d in parts] == [
        ('ImageSets/Segmentation/train.txt', 'SegmentationClass'),
        ('ImageSets/Segmentation/aug.txt', 'SegmentationClassAug')
    ]
    pipeline = {t.type: t for t in parts[0].pipeline}
    assert pipeline['RandomResize'].scale == (2048, 512)
    assert pipeline['RandomResize'].ratio_range == (0.5, 2.0)
    assert pipeline['RandomResize'].keep_ratio is True
    assert pipeline['RandomCrop'].crop_size == (512, 512)
    assert pipeline['RandomCrop'].cat_max_ratio == 0.75
    assert pipeline['RandomFlip'].prob == 0.5
    assert 'PhotoMetricDistortion' in pipeline
    val = cfg.val_dataloader
    assert val.dataset.ann_file == 'ImageSets/Segmentation/val.txt'
    resize = [t for t in val.dataset.pipeline if t.type == 'Resize'][0]
    assert resize.scale == (2048, 512) and resize.keep_ratio is True

    # optimizer shared by fine-tuning and calibration (UPerNet fine-tuning
    # overrides the weight decay)
    check_sgd_and_hooks(cfg)
    assert cfg.train_cfg.type == 'IterBasedTrainLoop'


@pytest.mark.parametrize('model_name,setup,tag', LEAVES)
def test_finetune_leaf(model_name, setup, tag):
    cfg = load(leaf_path(model_name, setup, tag))
    check_common(cfg, model_name, calibration=False)

    # optimizer and schedule
    wd = 1e-4 if model_name == 'UPerNet' else 5e-4
    assert cfg.optim_wrapper.optimizer.weight_decay == wd
    assert cfg.optim_wrapper.clip_grad == dict(max_norm=1, norm_type=2)
    warmup, cosine = cfg.param_scheduler
    assert (warmup.type, warmup.start_factor, warmup.begin, warmup.end,
            warmup.by_epoch) == ('LinearLR', 0.1, 0, 1000, False)
    assert (cosine.type, cosine.eta_min, cosine.begin, cosine.end,
            cosine.by_epoch) == ('CosineAnnealingLR', 1e-4, 1000, 20000,
                                 False)
    assert cfg.train_cfg.max_iters == 20000
    assert cfg.train_cfg.val_interval == 2000
    ckpt = cfg.default_hooks.checkpoint
    assert ckpt.interval == 2000 and ckpt.by_epoch is False
    assert list(ckpt.save_best) == ['mIoU', 'mAcc'] and ckpt.rule == 'greater'
    assert ckpt.get('max_keep_ckpts', -1) == -1  # ranks are read on each one
    assert cfg.default_hooks.activation_memory.type == 'ActivationMemoryHook'

    # starts from the calibrated checkpoint that the calibration writes
    calib = osp.splitext(osp.basename(calib_path(model_name)))[0]
    assert cfg.load_from == f'checkpoints/calibrated/{calib}.pth'

    # the compression hook: method/eps from the name, layers from the paper
    hook = hook_args(cfg)
    freeze, layers = PAPER_LAYERS[(model_name, setup)]
    check_hook_settings(hook, tag, freeze)
    assert [(d['path'], d['radius']) for d in hook['layers']] == layers
    assert list(cfg.freeze_layers) == freeze  # the setup base's variables
    assert list(cfg.compressed_layers) == list(hook['layers'])


@pytest.mark.parametrize('model_name', list(MODELS_))
def test_calibration(model_name):
    cfg = load(calib_path(model_name))
    check_common(cfg, model_name, calibration=True)
    iters = MODELS_[model_name][2]
    url = URL_ROOT + MODELS_[model_name][3]
    assert cfg.load_from == url
    assert re.search(r'-[0-9a-f]{8}\.pth$', cfg.load_from)
    assert cfg.optim_wrapper.optimizer.weight_decay == 5e-4
    (poly, ) = cfg.param_scheduler
    assert (poly.type, poly.end, poly.by_epoch) == ('PolyLR', iters, False)
    assert cfg.train_cfg.max_iters == iters
    assert cfg.default_hooks.checkpoint.interval == iters
    hook = hook_args(cfg)
    assert hook['method'] == 'vanilla'
    assert list(hook['layers']) == []
    assert hook['norm_eval'] is False
    if iters == 1000:  # ResNet-18: only the classifier trains
        assert list(hook['freeze']) == [
            'backbone', 'decode_head', '~decode_head.conv_seg'
        ]
    else:  # MobileNetV2: frozen backbone, whole decode head trains
        assert list(hook['freeze']) == ['backbone']
    # the same network as the fine-tuning configs, BN in train mode
    finetune = load(leaf_path(model_name, '5l', 'vanilla'))
    model = cfg.model.copy()
    model.backbone = dict(model.backbone, norm_eval=True)
    assert model.to_dict() == finetune.model.to_dict()


# ------------------------------------------------- built models and paths


@pytest.mark.parametrize('model_name,setup',
                         [(m, s) for m in MODELS_ for s in SETUPS])
def test_layer_paths(model_name, setup):
    model = build(model_name, setup)
    head = model.decode_head
    assert head.num_classes == 21 and head.conv_seg.out_channels == 21
    assert not model.with_auxiliary_head

    hooks = [
        hook_args(load(leaf_path(model_name, setup, tag))) for tag in METHODS
    ]
    freeze, layers = hooks[0]['freeze'], hooks[0]['layers']
    for hook in hooks[1:]:  # the method leaves share freeze and layers
        assert hook['freeze'] == freeze and hook['layers'] == layers

    for entry in freeze:
        model.get_submodule(entry.lstrip('~'))  # raises if missing
    apply_freeze(model, freeze)
    compressed = [c for d in layers for c in expand(model, d['path'])]
    assert len(compressed) == len(set(compressed))
    assert not any(c.endswith('conv_seg') for c in compressed)
    for conv in compressed:
        assert model.get_submodule(conv).weight.requires_grad, conv
    assert head.conv_seg.weight.requires_grad
    trainable = [
        name for name, m in model.named_modules()
        if isinstance(m, nn.Conv2d) and m.weight.requires_grad
        and not name.endswith('conv_seg')
    ]
    assert (len(trainable),
            len(compressed)) == CONV_COUNTS[(model_name, setup)]


@pytest.mark.parametrize('model_name', list(MODELS_))
def test_calibration_freeze(model_name):
    model = build(model_name, '5l')
    hook = hook_args(load(calib_path(model_name)))
    apply_freeze(model, hook['freeze'])
    trainable = {n for n, p in model.named_parameters() if p.requires_grad}
    if MODELS_[model_name][2] == 1000:
        expected = {'decode_head.conv_seg.weight', 'decode_head.conv_seg.bias'}
    else:
        expected = {
            n
            for n, _ in model.named_parameters() if n.startswith('decode_head')
        }
    assert trainable == expected


def test_finetune_lr_curve():
    """Warm-up 0.001 -> 0.01 over 1k iterations, cosine down to 1e-4."""
    from mmengine.optim import build_optim_wrapper
    from mmengine.registry import PARAM_SCHEDULERS
    cfg = load(leaf_path('PSPNet', '5l', 'vanilla'))
    wrapper = build_optim_wrapper(nn.Linear(1, 1), cfg.optim_wrapper)
    schedulers = [
        PARAM_SCHEDULERS.build(dict(s, optimizer=wrapper))
        for s in cfg.param_scheduler
    ]
    lrs = []
    for _ in range(20000):
        lrs.append(wrapper.optimizer.param_groups[0]['lr'])
        wrapper.optimizer.step()  # no gradients: changes nothing
        for s in schedulers:
            s.step()
    assert lrs[0] == pytest.approx(0.001)
    assert lrs[1000] == pytest.approx(0.01)
    assert lrs[10500] == pytest.approx((0.01 + 1e-4) / 2, rel=1e-3)
    assert lrs[-1] == pytest.approx(1e-4, rel=1e-2)
    assert all(a >= b for a, b in zip(lrs[1000:], lrs[1001:]))


# --------------------------------------------------------- documentation


def test_checkpoints_md_lists_every_checkpoint():
    with open(osp.join(REPO, 'checkpoints.md')) as f:
        text = f.read()
    for model_name, (_, _, _, ckpt) in MODELS_.items():
        assert URL_ROOT + ckpt in text, model_name
        assert osp.basename(ckpt) in text
        calib = osp.basename(calib_path(model_name))
        assert osp.relpath(calib_path(model_name), REPO) in text
        assert f'checkpoints/calibrated/{osp.splitext(calib)[0]}.pth' in text


PLUGIN_HOOKS = {'ActivationCompressionHook', 'ActivationMemoryHook',
                'WeightsOnlyCheckpointHook', 'NonFiniteStepGuardHook'}


@pytest.mark.parametrize('path', runnable_configs(),
                         ids=lambda p: osp.relpath(p, CONFIGS))
def test_hooks_build(path):
    """The plugin's hooks of every runnable config build (their constructors
    validate the arguments)."""
    cfg = load(path)
    entries = list(cfg.default_hooks.values()) + list(
        cfg.get('custom_hooks', []))
    ours = [e for e in entries if e and e.get('type') in PLUGIN_HOOKS]
    built = {type(HOOKS.build(entry)).__name__ for entry in ours}
    # every config writes weights-only checkpoints; all but plain
    # pretraining (configs/camvid) freeze/compress
    assert 'WeightsOnlyCheckpointHook' in built
    if 'pretrain' not in osp.basename(path):
        assert 'ActivationCompressionHook' in built
        # the step guard of its non_finite (the hook registers one if a
        # config lists none)
        assert 'NonFiniteStepGuardHook' in built
