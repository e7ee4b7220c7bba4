"""The transformer segmentors' configs: SegFormer MiT-B0
(``configs/segformer``) and UPerNet Swin-T (``configs/swin``), 14
fine-tuning leaves and one calibration config each, and the SegFormer demo
(``configs/demo``).

Every config parses; its model is mmseg's (checked against mmseg's own
config) with our documented changes, and builds without network access; the
5L/10L lists are the weight layers nearest the loss in a traced forward pass
(conv, linear, multi-head attention); the freeze lists leave exactly those
layers and ``conv_seg`` trainable; ``load_from`` is what checkpoints.md
says.

Compressing a linear (the SegFormer 10L attention out-projection) needs the
plugin's linear support (``mmseg_hosvd.ops.CompressedLinear``, with the
per-entry ``method`` override of ``layers``); until the plugin has it, the
tests that install those lists or train the demo are skipped, with a reason
that says so.
"""
import copy
import functools
import glob
import json
import os.path as osp
import re
import socket
import subprocess

import mmseg
import pytest
import torch
import torch.nn as nn
import yaml
from mmcv.cnn import ConvModule
from mmengine import Config
from mmseg.registry import HOOKS, MODELS
from mmseg.utils import register_all_modules

import mmseg_hosvd.ops
from conftest import CONFIGS, REPO
from leaf_configs import (METHODS, SETUPS, check_hook_settings,
                          check_sgd_and_hooks, leaf_config_path, load)
from mmseg_hosvd.compression import CompressionConfig, apply_compression
from mmseg_hosvd import surgery

MMSEG_CONFIGS = osp.join(osp.dirname(mmseg.__file__), '.mim', 'configs')
LINEAR_SUPPORT = hasattr(mmseg_hosvd.ops, 'CompressedLinear')
needs_linear = pytest.mark.skipif(
    not LINEAR_SUPPORT,
    reason='waits for linear/attention layer paths in the compression hook '
    '(mmseg_hosvd.ops.CompressedLinear, branch transformer)')

# model: (folder, name prefix, mmseg config of the architecture, its metafile
# entry's checkpoint URL, our local folder for that download)
TRANSFORMERS = {
    'SegFormer': (
        'segformer', 'segformer_mit-b0',
        'segformer/segformer_mit-b0_8xb1-160k_cityscapes-1024x1024.py',
        'https://download.openmmlab.com/mmsegmentation/v0.5/segformer/'
        'segformer_mit-b0_8x1_1024x1024_160k_cityscapes/'
        'segformer_mit-b0_8x1_1024x1024_160k_cityscapes_20211208_101857-'
        'e7f88502.pth', 'checkpoints/cityscapes'),
    'Swin': (
        'swin', 'upernet_swin-t',
        'swin/swin-tiny-patch4-window7-in1k-pre_upernet_8xb2-160k_ade20k-'
        '512x512.py',
        'https://download.openmmlab.com/mmsegmentation/v0.5/swin/'
        'upernet_swin_tiny_patch4_window7_512x512_160k_ade20k_pretrain_'
        '224x224_1K/upernet_swin_tiny_patch4_window7_512x512_160k_ade20k_'
        'pretrain_224x224_1K_20210531_112542-e380ad3e.pth',
        'checkpoints/ade20k'),
}
MHA = 'backbone.layers.3.1.1.attn.attn'

# (freeze, [(path, radius or None for a linear)]), nearest the loss first
_SEG_5L = [('decode_head.fusion_conv', 8), ('decode_head.convs.3', 2),
           ('decode_head.convs.2', 2), ('decode_head.convs.1', 4),
           ('decode_head.convs.0', 8)]
_SWIN_FREEZE = [
    'backbone', 'decode_head', '~decode_head.conv_seg',
    '~decode_head.fpn_bottleneck', '~decode_head.fpn_convs',
    '~decode_head.bottleneck'
]
_SWIN_5L = [('decode_head.fpn_bottleneck', 8), ('decode_head.fpn_convs.2', 2),
            ('decode_head.fpn_convs.1', 4), ('decode_head.fpn_convs.0', 8),
            ('decode_head.bottleneck', 2)]
LAYERS = {
    ('SegFormer', '5l'): (['backbone'], _SEG_5L),
    ('SegFormer', '10l'): ([
        'backbone', '~backbone.layers.3.1.1.ffn', f'~{MHA}.out_proj',
        '~backbone.layers.3.1.0.ffn.layers.4'
    ], _SEG_5L + [('backbone.layers.3.1.1.ffn.layers.4', 2),
                  ('backbone.layers.3.1.1.ffn.layers.1', 2),
                  ('backbone.layers.3.1.1.ffn.layers.0', 2), (MHA, None),
                  ('backbone.layers.3.1.0.ffn.layers.4', 2)]),
    ('Swin', '5l'): (_SWIN_FREEZE, _SWIN_5L),
    ('Swin', '10l'): (_SWIN_FREEZE + [
        '~decode_head.psp_modules', '~decode_head.lateral_convs.2'
    ], _SWIN_5L + [('decode_head.psp_modules.3.1', 1),
                   ('decode_head.psp_modules.2.1', 1),
                   ('decode_head.psp_modules.1.1', 1),
                   ('decode_head.psp_modules.0.1', 1),
                   ('decode_head.lateral_convs.2', 2)]),
}
DEMO = osp.join(CONFIGS, 'demo',
                'segformer_mit-b0_10l-hosvd-eps0.8_tiny-voc-64x64.py')


def leaf_path(model, setup, tag):
    return leaf_config_path(*TRANSFORMERS[model][:2], setup, tag)


def calib_path(model):
    folder, prefix = TRANSFORMERS[model][:2]
    return osp.join(CONFIGS, folder,
                    f'{prefix}_calib_1xb8-1k_voc12aug-512x512.py')


def calibrated_checkpoint(model):
    name = osp.splitext(osp.basename(calib_path(model)))[0]
    return f'checkpoints/calibrated/{name}.pth'


LEAVES = [(m, s, t) for m in TRANSFORMERS for s in SETUPS for t in METHODS]



@pytest.fixture
def no_network(monkeypatch):
    """Any attempt to open a connection fails the test."""

    def refuse(*args, **kwargs):
        raise AssertionError(f'network access attempted: {args!r}')

    monkeypatch.setattr(socket.socket, 'connect', refuse)
    monkeypatch.setattr(socket, 'create_connection', refuse)


def build(model_name):
    """A freshly built (trainable, unmodified) model, 64x64 preprocessing."""
    register_all_modules()
    cfg = load(leaf_path(model_name, '5l', 'vanilla'))
    model = MODELS.build(cfg.model)
    model.init_weights()
    return model


@functools.lru_cache(maxsize=None)
def traced_order(model_name):
    """Paths of the weight layers in forward execution order: nn.Conv2d,
    nn.Linear, and each nn.MultiheadAttention once (its out-projection runs
    inside the call, through the functional API, after the in-projection)."""
    model = build(model_name).eval()
    order, handles = [], []
    for name, module in model.named_modules():
        if isinstance(module, (nn.Conv2d, nn.Linear, nn.MultiheadAttention)):
            handles.append(
                module.register_forward_pre_hook(
                    lambda mod, args, name=name: order.append(name)))
    with torch.no_grad():
        model(torch.zeros(1, 3, 64, 64), mode='tensor')
    for handle in handles:
        handle.remove()
    return tuple(dict.fromkeys(order))


def layer_names(model, path):
    """The traced names a list entry stands for: a ConvModule's ``.conv``,
    an nn.Conv2d or an nn.MultiheadAttention itself."""
    module = model.get_submodule(path)
    if isinstance(module, ConvModule):
        return [f'{path}.conv']
    assert isinstance(module, (nn.Conv2d, nn.MultiheadAttention)), path
    return [path]


def weight_layers(model):
    """{path: its own parameters} of every weight layer, an
    nn.MultiheadAttention's out-projection named by the attention."""
    layers = {}
    for name, module in model.named_modules():
        if isinstance(module, nn.MultiheadAttention):
            layers[name] = list(module.out_proj.parameters())
        elif isinstance(module, (nn.Conv2d, nn.Linear)) and not name.endswith(
                '.out_proj'):
            layers[name] = list(module.parameters())
    return layers


# --------------------------------------------------------------- inventory


def test_inventory():
    for model_name, (folder, *_) in TRANSFORMERS.items():
        found = set(glob.glob(osp.join(CONFIGS, folder, '*.py')))
        expected = {
            leaf_path(model_name, s, t)
            for s in SETUPS for t in METHODS
        } | {calib_path(model_name)}
        assert len(expected) == 15
        assert found == expected, (sorted(found - expected),
                                   sorted(expected - found))


# ------------------------------------------------------------------ models


def expected_model(model_name):
    """mmseg's config of the architecture with our documented changes."""
    return copy.deepcopy(_expected_model(model_name))


@functools.lru_cache(maxsize=None)
def _expected_model(model_name):
    mmseg_cfg = Config.fromfile(
        osp.join(MMSEG_CONFIGS, TRANSFORMERS[model_name][2]))
    model = mmseg_cfg.model.to_dict()
    model['data_preprocessor']['size'] = (512, 512)
    model['pretrained'] = None
    model['test_cfg'] = dict(mode='whole')
    model['backbone'].update(drop_path_rate=0.0, init_cfg=None)
    model['decode_head'].update(
        num_classes=21,
        dropout_ratio=0,
        norm_cfg=dict(type='BN', requires_grad=True))
    if model_name == 'Swin':
        model['auxiliary_head'] = None
    return model


def our_model(cfg):
    model = cfg.model.to_dict()
    model.pop('_scope_', None)  # set by the mmseg:: base
    return model


@pytest.mark.parametrize('model_name', list(TRANSFORMERS))
def test_model_is_mmseg_with_our_changes(model_name):
    for path in [leaf_path(model_name, s, t) for s in SETUPS
                 for t in METHODS] + [calib_path(model_name)]:
        cfg = load(path)
        assert our_model(cfg) == expected_model(model_name), path
        text = repr(cfg.to_dict())  # (pretty_text is slow)
        assert 'SyncBN' not in text and 'Pretrained' not in text


@pytest.mark.parametrize('model_name', list(TRANSFORMERS))
def test_model_builds_offline(model_name, no_network):
    model = build(model_name)
    head = model.decode_head
    assert head.num_classes == 21 and head.conv_seg.out_channels == 21
    assert not model.with_auxiliary_head
    assert not any('SyncBatchNorm' in type(m).__name__
                   for m in model.modules())


@pytest.mark.parametrize('model_name,setup',
                         [(m, s) for m in TRANSFORMERS for s in SETUPS])
def test_lists_are_the_last_traced_layers(model_name, setup):
    """5L/10L = the 5/10 weight layers nearest the loss (conv_seg, the last
    one, excluded), listed nearest the loss first."""
    order = traced_order(model_name)
    assert order[-1] == 'decode_head.conv_seg'
    count = 5 if setup == '5l' else 10
    model = build(model_name)
    listed = [
        name for path, _ in LAYERS[(model_name, setup)][1]
        for name in layer_names(model, path)
    ]
    assert listed == list(reversed(order[-1 - count:-1]))


def test_swin_lists_lie_in_the_head():
    order = traced_order('Swin')
    head = [p for p in order if p.startswith('decode_head')]
    assert len(head) == 13  # 12 UPerHead convs and conv_seg
    assert order[-13:] == tuple(head)


# ------------------------------------------------------------- the configs


def check_data_and_runtime(cfg):
    assert 'mmseg_hosvd.engine' in cfg.custom_imports.imports
    assert cfg.randomness.seed == 233
    assert cfg.model_wrapper_cfg.find_unused_parameters is False
    train = cfg.train_dataloader
    assert train.batch_size == 8 and train.dataset.type == 'ConcatDataset'
    crop = [t for t in train.dataset.datasets[0].pipeline
            if t.type == 'RandomCrop'][0]
    assert crop.crop_size == (512, 512)
    assert cfg.val_dataloader.dataset.ann_file == (
        'ImageSets/Segmentation/val.txt')
    check_sgd_and_hooks(cfg)
    assert cfg.default_hooks.non_finite_guard.type == 'NonFiniteStepGuardHook'


@pytest.mark.parametrize('model_name,setup,tag', LEAVES)
def test_finetune_leaf(model_name, setup, tag):
    cfg = load(leaf_path(model_name, setup, tag))
    check_data_and_runtime(cfg)
    wd = 1e-4 if model_name == 'Swin' else 5e-4  # UPerNet's weight decay
    assert cfg.optim_wrapper.optimizer.weight_decay == wd
    assert cfg.optim_wrapper.clip_grad == dict(max_norm=1, norm_type=2)
    assert [s.type for s in cfg.param_scheduler] == [
        'LinearLR', 'CosineAnnealingLR'
    ]
    assert cfg.train_cfg.max_iters == 20000
    assert cfg.train_cfg.val_interval == 2000
    assert cfg.default_hooks.activation_memory.type == 'ActivationMemoryHook'
    assert cfg.load_from == calibrated_checkpoint(model_name)

    hook = cfg.default_hooks.compression
    method = METHODS[tag][0]
    freeze, layers = LAYERS[(model_name, setup)]
    check_hook_settings(hook, tag, freeze)
    assert list(cfg.freeze_layers) == freeze
    entries = [dict(d) for d in hook['layers']]
    assert [d['path'] for d in entries] == [p for p, _ in layers]
    for entry, (path, radius) in zip(entries, layers):
        if radius is None:  # a linear: no Gradient Filter
            expected = dict(path=path)
            if method == 'gradient_filter':
                expected['method'] = 'vanilla'
            assert entry == expected
        else:
            assert entry == dict(path=path, radius=radius)
    if method != 'gradient_filter':
        assert [dict(d) for d in cfg.compressed_layers] == entries
    # the hook's constructor validates the arguments
    HOOKS.build(dict(hook))


def test_gradient_filter_leaf_says_why_the_linear_is_vanilla():
    path = leaf_path('SegFormer', '10l', 'gradient-filter')
    with open(path) as f:
        text = f.read()
    assert 'convs only' in text and "method='vanilla'" in text


@pytest.mark.parametrize('model_name', list(TRANSFORMERS))
def test_calibration(model_name):
    cfg = load(calib_path(model_name))
    check_data_and_runtime(cfg)
    url = TRANSFORMERS[model_name][3]
    assert cfg.load_from == url
    assert re.search(r'-[0-9a-f]{8}\.pth$', cfg.load_from)
    # the URL is the one mmseg's metafile gives for the architecture
    folder = TRANSFORMERS[model_name][2].split('/')[0]
    with open(osp.join(MMSEG_CONFIGS, folder, 'metafile.yaml')) as f:
        meta = yaml.safe_load(f)
    weights = {m['Name']: m.get('Weights') for m in meta['Models']}
    assert url in weights.values()
    assert cfg.optim_wrapper.optimizer.weight_decay == 5e-4
    (poly, ) = cfg.param_scheduler
    assert (poly.type, poly.end) == ('PolyLR', 1000)
    assert cfg.train_cfg.max_iters == 1000
    assert cfg.default_hooks.checkpoint.interval == 1000
    hook = cfg.default_hooks.compression
    assert hook['method'] == 'vanilla' and list(hook['layers']) == []
    assert hook['norm_eval'] is False
    assert list(hook['freeze']) == [
        'backbone', 'decode_head', '~decode_head.conv_seg'
    ]
    model = build(model_name)
    surgery.apply_freeze(model, hook['freeze'])
    assert {n for n, p in model.named_parameters() if p.requires_grad} == {
        'decode_head.conv_seg.weight', 'decode_head.conv_seg.bias'
    }


def test_checkpoints_md():
    with open(osp.join(REPO, 'checkpoints.md')) as f:
        text = f.read()
    for model_name, (*_, url, local) in TRANSFORMERS.items():
        name = osp.basename(url)
        assert url in text and f'{local}/{name}' in text
        assert osp.relpath(calib_path(model_name), REPO) in text
        assert calibrated_checkpoint(model_name) in text
        assert f'--cfg-options load_from={local}/{name}' in text


# ----------------------------------------------------- freezing, resolving


@pytest.mark.parametrize('model_name,setup',
                         [(m, s) for m in TRANSFORMERS for s in SETUPS])
def test_freeze_leaves_exactly_the_listed_layers(model_name, setup):
    model = build(model_name)
    freeze, layers = LAYERS[(model_name, setup)]
    surgery.apply_freeze(model, freeze)
    listed = {p for p, _ in layers}
    trainable_layers = {
        name
        for name, params in weight_layers(model).items()
        if any(p.requires_grad for p in params)
    }
    # ConvModule paths name their .conv in weight_layers
    expected = {
        name
        for path in listed for name in layer_names(model, path)
    } | {'decode_head.conv_seg'}
    assert trainable_layers == expected
    # nothing else trains but the listed modules (ConvModules with their BN)
    # and conv_seg: no in-projection, no LayerNorm
    owners = tuple(f'{p}.out_proj.' if p == MHA else f'{p}.'
                   for p in listed | {'decode_head.conv_seg'})
    for name, param in model.named_parameters():
        assert param.requires_grad == name.startswith(owners), name


@pytest.mark.parametrize('model_name,setup,tag', [
    ('SegFormer', '5l', 'hosvd-eps0.8'),
    ('Swin', '5l', 'hosvd-eps0.8'),
    ('Swin', '10l', 'hosvd-eps0.8'),
    ('Swin', '10l', 'gradient-filter'),
    pytest.param('SegFormer', '10l', 'hosvd-eps0.8', marks=needs_linear),
    pytest.param('SegFormer', '10l', 'gradient-filter', marks=needs_linear),
    pytest.param('SegFormer', '10l', 'vanilla', marks=needs_linear),
])
def test_hook_installs_the_lists(model_name, setup, tag):
    """The compression hook resolves the lists on the built model and
    installs compression on exactly those layers."""
    cfg = load(leaf_path(model_name, setup, tag))
    model = build(model_name)
    installed = apply_compression(model, CompressionConfig.from_hook_cfg(
        cfg.default_hooks.compression)).layers
    method = METHODS[tag][0]
    expected = {}
    for path, radius in LAYERS[(model_name, setup)][1]:
        if radius is None:  # the attention's out-projection, a linear
            expected[f'{path}.out_proj'] = (
                'vanilla' if method == 'gradient_filter' else method)
        else:
            (name, ) = layer_names(model, path)
            expected[name] = method
    assert {path: m.method for path, m in installed.items()} == expected
    if (model_name, setup) == ('SegFormer', '10l'):
        assert type(model.get_submodule(MHA)).__name__ == (
            'CompressedMultiheadAttention')
    trainable = {n for n, p in model.named_parameters() if p.requires_grad}
    assert {'decode_head.conv_seg.weight',
            'decode_head.conv_seg.bias'} <= trainable


@pytest.mark.parametrize('model_name,setup', [
    ('SegFormer', '5l'), ('Swin', '5l'), ('Swin', '10l'),
    pytest.param('SegFormer', '10l', marks=needs_linear)
])
def test_num_layers_picks_the_listed_layers(model_name, setup):
    """The hook's own tracing (``num_layers``) finds the same layers."""
    listed = load(leaf_path(model_name, setup, 'hosvd-eps0.8'))
    model = build(model_name)
    by_list = set(apply_compression(model, CompressionConfig.from_hook_cfg(
        listed.default_hooks.compression)).layers)
    model = build(model_name)
    config = CompressionConfig(method='hosvd', eps=0.8,
                               num_layers=5 if setup == '5l' else 10)
    assert set(apply_compression(model, config).layers) == by_list


# ------------------------------------------------------------------- demo


def test_demo_config():
    cfg = load(DEMO)
    assert cfg.get('load_from') is None
    assert cfg.model.data_preprocessor.size == (64, 64)
    model = our_model(cfg)
    model['data_preprocessor']['size'] = (512, 512)
    assert model == expected_model('SegFormer')
    hook, *others = cfg.custom_hooks
    assert (hook['type'], hook['method'], hook['eps']) == (
        'ActivationCompressionHook', 'hosvd', 0.8)
    freeze, layers = LAYERS[('SegFormer', '10l')]
    assert list(hook['freeze']) == freeze
    assert [d['path'] for d in hook['layers']] == [p for p, _ in layers]
    assert [h['type'] for h in others] == [
        'NonFiniteStepGuardHook', 'ActivationMemoryHook',
        'WeightsOnlyCheckpointHook'
    ]
    assert cfg.train_cfg.max_iters <= 50
    assert cfg.train_dataloader.dataset.data_root == 'data/tiny_voc'


@pytest.mark.slow
@needs_linear
def test_demo_mim_train(tmp_path, tiny_voc):
    """``mim train mmsegmentation`` on the SegFormer demo (2 iterations of
    its config on the tiny dataset, then validation and a checkpoint)."""
    from mmseg_hosvd.demo import (last_val_metrics, train_command,
                                  train_env)
    work_dir = str(tmp_path / 'work')
    command = train_command(DEMO, work_dir, tiny_voc, [
        'train_cfg.max_iters=2', 'train_cfg.val_interval=2',
        'default_hooks.checkpoint.interval=2'
    ])
    result = subprocess.run(
        command, capture_output=True, text=True, cwd=REPO,
        env=dict(train_env(), OMP_NUM_THREADS='1', MKL_NUM_THREADS='1'),
        timeout=600)
    assert result.returncode == 0, (result.stdout[-3000:] +
                                    result.stderr[-3000:])
    assert 'mIoU' in last_val_metrics(work_dir)
    assert 'pkg_resources is deprecated' not in result.stderr
    with open(osp.join(work_dir, 'activation_memory.json')) as f:
        memory = json.load(f)
    assert memory['iterations'] == 2
    assert len(memory['layers']) == 10
    assert any(p.startswith(MHA) for p in memory['layers'])
    checkpoint = torch.load(osp.join(work_dir, 'iter_2.pth'),
                            map_location='cpu', weights_only=True)
    assert 'decode_head.conv_seg.weight' in checkpoint['state_dict']


@pytest.mark.slow
@pytest.mark.parametrize('model_name,tag', [
    ('Swin', 'gradient-filter'),
    pytest.param('SegFormer', 'gradient-filter', marks=needs_linear),
    pytest.param('SegFormer', 'asi-eps0.8', marks=needs_linear),
])
def test_10l_leaf_trains_two_iterations(tmp_path, tiny_voc, model_name, tag):
    """The real 10L leaf, shrunk to tiny data: the Gradient Filter with a
    linear counted as vanilla (SegFormer), r=1 on the pooled maps (Swin),
    ASI through the attention."""
    from mmengine.runner import Runner

    from conftest import tiny_run_cfg
    from test_training import SnapshotHook
    cfg = tiny_run_cfg(load(leaf_path(model_name, '10l', tag)),
                       str(tmp_path), tiny_voc, val=False)
    runner = Runner.from_cfg(cfg)
    snapshot = SnapshotHook()  # after weight init and freezing
    runner.register_hook(snapshot)
    runner.train()
    assert runner.iter == 2
    changed = {
        n
        for n, p in runner.model.named_parameters()
        if not torch.equal(p, snapshot.params[n])
    }
    _, layers = LAYERS[(model_name, '10l')]
    for path, _ in layers:
        suffix = '.out_proj.weight' if path == MHA else '.weight'
        name = path + ('.conv' if path.startswith('decode_head') else '')
        assert name + suffix in changed, path
    assert all(
        n.startswith(('decode_head', 'backbone.layers.3.1')) for n in changed)
