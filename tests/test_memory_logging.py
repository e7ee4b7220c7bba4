"""The activation-memory hook's outputs: text log, TensorBoard, JSON."""
import glob
import json
import os.path as osp

import pytest
from mmengine.config import Config
from mmengine.runner import Runner
from tensorboard.backend.event_processing.event_accumulator import \
    EventAccumulator

from conftest import CONFIGS, tiny_run_cfg

DEMO = osp.join(CONFIGS, 'demo',
                'fcn_r18-d8_5l-hosvd-eps0.8_tiny-voc-64x64.py')
LAYERS = [
    'backbone.layer4.1.conv1', 'backbone.layer4.1.conv2',
    'decode_head.convs.0.conv', 'decode_head.convs.1.conv',
    'decode_head.conv_cat.conv'
]


@pytest.fixture(scope='module')
def demo_run(tmp_path_factory, tiny_voc):
    work_dir = str(tmp_path_factory.mktemp('demo_run'))
    cfg = tiny_run_cfg(Config.fromfile(DEMO), work_dir, tiny_voc,
                       max_iters=3, val=False)
    cfg.visualizer.vis_backends = [
        dict(type='LocalVisBackend'),
        dict(type='TensorboardVisBackend')
    ]
    cfg.log_level = 'INFO'
    Runner.from_cfg(cfg).train()
    return work_dir


@pytest.mark.slow
def test_activation_memory_json(demo_run):
    with open(osp.join(demo_run, 'activation_memory.json')) as f:
        summary = json.load(f)
    assert summary['iterations'] == 3
    assert summary['unit'] == 'MiB (2**20 bytes)'
    assert sorted(summary['layers']) == sorted(LAYERS)
    total = summary['total']['paper_mib']
    assert total['peak'] >= total['mean'] > 0 and total['std'] >= 0
    layer_means = sum(
        layer['paper_mib']['mean'] for layer in summary['layers'].values())
    assert layer_means == pytest.approx(total['mean'])
    for layer in summary['layers'].values():
        assert layer['method'] == 'hosvd'
        b, c, h, w = layer['input_shape']
        k1, k2, k3, k4 = layer['ranks']['last']
        assert 1 <= k1 <= b and 1 <= k2 <= c and 1 <= k3 <= h and 1 <= k4 <= w
        assert layer['kept_mib']['peak'] < b * c * h * w * 4 / 2**20


@pytest.mark.slow
def test_tensorboard_event_file_has_memory_scalars(demo_run):
    events = glob.glob(osp.join(demo_run, '*', 'vis_data', 'events.out.*'))
    assert len(events) == 1
    accumulator = EventAccumulator(events[0])
    accumulator.Reload()
    tags = set(accumulator.Tags()['scalars'])
    assert {'act_mem_mib', 'act_kept_mib'} <= tags
    for layer in LAYERS:
        assert f'act_mem_mib/{layer}' in tags
        assert f'rank/{layer}/channel' in tags
    values = accumulator.Scalars('act_mem_mib')
    assert [v.step for v in values] == [1, 2, 3]
    assert all(v.value > 0 for v in values)


@pytest.mark.slow
def test_text_log_shows_memory(demo_run):
    log = glob.glob(osp.join(demo_run, '*', '*.log'))[0]
    with open(log) as f:
        text = f.read()
    assert 'act_mem_mib: ' in text and 'act_kept_mib: ' in text
    assert 'ActivationCompressionHook: method=hosvd, 5 layer(s) compressed' \
        in text
