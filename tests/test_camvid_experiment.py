"""Smoke test of the CamVid experiment (tools/camvid_experiment.py, run
through :mod:`mmseg_hosvd.camvid.experiment`).

``--smoke``: 4 images per split, 2 iterations per run (pretraining
included), batch 2, 64x64 crops; FCN 10L with vanilla and HOSVD, on a
generated tree in the CamVid layout (``tiny_camvid`` of conftest: runs
everywhere). Checks the output files, the records and that the numbers are
sane (the vanilla count is checked exactly), then that a second call reuses
every run. The real CamVid tree (``../shared/data/camvid_voc`` relative to
the repository root) is only read by the data test at the end, skipped when
it is missing.
"""
import json
import os.path as osp
import re

import pytest
import torch

from mmseg_hosvd.bench import fixed_batches
from mmseg_hosvd.camvid import (finetune_config, parse_experiment_args,
                                parse_grad_check_args, run_experiment,
                                run_grad_check, set_data)

REPO = osp.dirname(osp.dirname(osp.abspath(__file__)))
DATA = osp.normpath(osp.join(REPO, '..', 'shared', 'data', 'camvid_voc'))
CAMVID_CONFIGS = osp.join(REPO, 'configs', 'camvid')
HAS_DATA = osp.isfile(
    osp.join(DATA, 'ImageSets', 'Segmentation', 'target_train.txt'))

# FCN 10L (docs/paper_setup.md): input channels of the counted convs: conv_cat
# (512 + 128, concat_input), convs.0, convs.1, layer4.1 conv1/conv2,
# layer4.0 conv1/conv2/downsample, layer3.1 conv1/conv2; all at 1/8 of the
# 64x64 smoke crop, batch 2, fp32
FCN_10L_CHANNELS = 640 + 512 + 128 + 512 + 512 + 256 + 512 + 256 + 256 + 256
FCN_10L_VANILLA_MIB = FCN_10L_CHANNELS * 2 * 8 * 8 * 4 / 2**20


def run(out, data_root, *extra):
    """What ``tools/camvid_experiment.py --smoke ...`` runs: its summary."""
    argv = [
        '--smoke', '--models', 'fcn', '--depths', '10l', '--methods',
        'vanilla', 'hosvd-eps0.8', '--seeds', '233', '--out', str(out),
        '--data-root', data_root, '--profile-iters', '1', '--quiet', *extra
    ]
    return run_experiment(parse_experiment_args(argv, REPO), REPO, print,
                          argv)


@pytest.fixture(scope='module')
def smoke_out(tmp_path_factory):
    return tmp_path_factory.mktemp('camvid') / 'out'


@pytest.mark.slow
def test_smoke(smoke_out, tiny_camvid, capsys):
    out = smoke_out
    summary = run(out, tiny_camvid)
    # a progress bar per run, also with --quiet
    err = capsys.readouterr().err
    assert re.search(r'pretrain fcn: 100%\|.*\| 2/2', err), err[-2000:]
    assert re.search(r'10l-hosvd-eps0\.8_.*_seed233: 100%\|.*\| 2/2', err)

    for name in ('results.json', 'results.md', 'pareto.png'):
        assert (out / name).is_file() and (out / name).stat().st_size > 0
    assert (out / 'pareto.png').read_bytes()[:8] == b'\x89PNG\r\n\x1a\n'
    with open(out / 'results.json') as f:
        saved = json.load(f)
    assert saved['wall_s'] > 0
    assert [r['tag'] for r in saved['runs']] == ['vanilla', 'hosvd-eps0.8']

    # the starting checkpoint: weights only, with its provenance
    (pre, ) = saved['pretrain']
    start = osp.join(REPO, pre['start_checkpoint']) if not osp.isabs(
        pre['start_checkpoint']) else pre['start_checkpoint']
    state = torch.load(start, map_location='cpu', weights_only=True)
    assert state['meta']['provenance']['data'] == 'source_train'
    assert state['meta']['provenance']['iters'] == 2
    assert 'decode_head.conv_seg.weight' in state['state_dict']
    assert state['state_dict']['decode_head.conv_seg.weight'].shape[0] == 11

    def path(p):
        return p if osp.isabs(p) else osp.join(REPO, p)

    for record in [pre] + saved['runs']:
        for split in ('target_val', 'val'):
            metrics = record[split]
            for key in ('mIoU', 'mAcc', 'aAcc'):
                assert 0 <= metrics[key] <= 100, (split, key, metrics)
        assert record['step_time_s'] > 0
        assert record['step_saved_mib'] > 0

    vanilla, hosvd = saved['runs']
    for record in (vanilla, hosvd):
        # mim-test-compatible work_dir: the dumped config and the checkpoint
        assert osp.isfile(path(record['checkpoint']))
        assert osp.isfile(path(record['dumped_config']))
        assert record['start_checkpoint'] == pre['start_checkpoint']
        assert record['iters'] == 2 and record['compressed_layers'] == 10
        assert 0 < record['act_mem_mean_mib'] <= record['act_mem_peak_mib']
    assert vanilla['act_mem_peak_mib'] == pytest.approx(FCN_10L_VANILLA_MIB)
    assert vanilla['act_mem_mean_mib'] == pytest.approx(FCN_10L_VANILLA_MIB)
    assert hosvd['act_mem_peak_mib'] < vanilla['act_mem_mean_mib']
    # the whole step saves more than the counted layers' inputs
    assert vanilla['step_saved_mib'] > vanilla['act_mem_peak_mib']
    assert hosvd['step_saved_mib'] < vanilla['step_saved_mib']

    text = re.sub(' +', ' ', (out / 'results.md').read_text())
    assert '| model | depth | method | eps | seed | mIoU target_val |' in text
    assert '| FCN | 10L | hosvd | 0.8 | 233 |' in text
    assert 'pretrained, not fine-tuned' in text

    # a second call reuses the pretraining and every run
    again = run(out, tiny_camvid)
    assert again['pretrain'][0]['sha256'] == pre['sha256']
    assert [r['checkpoint'] for r in again['runs']] == [
        r['checkpoint'] for r in summary['runs']
    ]


@pytest.mark.slow
def test_grad_check(smoke_out, tiny_camvid):
    """The gradient check (tools/camvid_grad_check.py) on the smoke run's
    starting checkpoint."""
    if not (smoke_out / 'checkpoints').is_dir():
        pytest.skip('needs the starting checkpoint of test_smoke')
    args = parse_grad_check_args([
        '--models', 'fcn', '--depths', '10l', '--methods', 'vanilla',
        'hosvd-eps0.8', '--batches', '1', '--data-root', tiny_camvid,
        '--out', str(smoke_out)
    ], REPO)
    rows = run_grad_check(args, REPO, print)
    (row, ) = rows  # vanilla is the reference, not a row
    assert (row['model'], row['depth'], row['tag'], row['batches']) == (
        'fcn', '10l', 'hosvd-eps0.8', 1)
    for scope in ('compressed', 'all'):
        assert -1 <= row[scope]['cos'] <= 1 + 1e-6
        assert row[scope]['rel_err'] >= 0
    with open(smoke_out / 'grad_check.json') as f:
        assert json.load(f) == rows
    text = re.sub(' +', ' ', (smoke_out / 'grad_check.md').read_text())
    assert (f'| FCN | 10L | hosvd-eps0.8 | {row["compressed"]["cos"]:.3f} |'
            in text)


def test_rejects_bad_data_root(tmp_path):
    with pytest.raises(SystemExit):
        parse_experiment_args(['--data-root', str(tmp_path)], REPO)


@pytest.mark.skipif(
    not HAS_DATA,
    reason=f'the CamVid tree {DATA} (../shared/data/camvid_voc relative to '
    'the repository root) is missing')
def test_real_camvid_batches():
    """The fine-tuning config's train pipeline on the real tree: 11-class
    labels (255 = unlabelled), crops no larger than the configured one."""
    from mmengine.config import Config
    cfg = Config.fromfile(
        finetune_config(CAMVID_CONFIGS, 'fcn', '10l', 'vanilla'))
    set_data(cfg, DATA)
    (batch, ) = fixed_batches(cfg.train_dataloader.dataset, 2, 1, 0)
    assert len(batch['inputs']) == 2
    crop = tuple(cfg.train_dataloader.dataset.pipeline[3]['crop_size'])
    for image, sample in zip(batch['inputs'], batch['data_samples']):
        assert image.dtype == torch.uint8
        assert image.shape[1] <= crop[0] and image.shape[2] <= crop[1]
        labels = set(sample.gt_sem_seg.data.unique().tolist())
        assert labels and labels <= set(range(11)) | {255}


SEGFORMER_TAGS = ['vanilla', 'gradient-filter', 'svd-eps0.8', 'hosvd-eps0.8',
                  'hosvd-eps0.9', 'asi-eps0.8', 'hosvd-eps0.8-lean-all']


@pytest.mark.parametrize('depth', ['5l', '10l'])
def test_segformer_finetune_configs_install_on_the_camvid_model(depth):
    """Every CamVid SegFormer-B0 fine-tuning leaf: the model builds (11
    classes, no drop path, no head dropout), its hook installs the VOC
    layer lists, and the 10L Gradient Filter leaf keeps the attention
    out-projection uncompressed (a linear)."""
    from mmengine.config import Config
    from mmseg.registry import MODELS
    from mmseg.utils import register_all_modules

    from mmseg_hosvd.compression import CompressionConfig, apply_compression
    from mmseg_hosvd.ops import CompressedConv2d, CompressedLinear
    register_all_modules()
    expected = {'5l': 5, '10l': 10}[depth]
    for tag in SEGFORMER_TAGS:
        cfg = Config.fromfile(
            finetune_config(CAMVID_CONFIGS, 'segformer', depth, tag))
        assert cfg.model.decode_head.num_classes == 11
        assert cfg.model.decode_head.dropout_ratio == 0
        assert cfg.model.backbone.drop_path_rate == 0
        assert cfg.optim_wrapper.optimizer.type == 'AdamW'
        model = MODELS.build(cfg.model)
        config = CompressionConfig.from_hook_cfg(cfg.default_hooks.compression)
        installed = apply_compression(model, config).layers
        assert len(installed) == expected, tag
        kinds = {type(m) for m in installed.values()}
        if depth == '10l':
            assert CompressedLinear in kinds
            out_proj = installed['backbone.layers.3.1.1.attn.attn.out_proj']
            assert out_proj.method == (
                'vanilla' if tag == 'gradient-filter' else config.method)
        else:
            assert kinds == {CompressedConv2d}


def test_micro_batch_keeps_the_optimizer_steps(tmp_path):
    """--micro-batch 2 of a batch-8 fine-tune: 4 micro-batches per
    optimizer step, and every iteration count 4 times longer, so that the
    optimizer takes the same 100 steps on the same effective batches."""
    from mmseg_hosvd.camvid.configs import run_cfg, set_micro_batch
    config = finetune_config(CAMVID_CONFIGS, 'fcn', '10l', 'hosvd-eps0.8')
    plain = run_cfg(config, str(tmp_path), str(tmp_path / 'a'), 0, None)
    micro = run_cfg(config, str(tmp_path), str(tmp_path / 'b'), 0, None,
                    micro_batch=2)
    assert plain.train_dataloader.batch_size == 8
    assert micro.train_dataloader.batch_size == 2
    assert micro.optim_wrapper.accumulative_counts == 4
    assert micro.train_cfg.max_iters == 4 * plain.train_cfg.max_iters
    assert [(s.begin, s.end) for s in micro.param_scheduler] == [
        (4 * s.begin, 4 * s.end) for s in plain.param_scheduler]
    assert (micro.default_hooks.checkpoint.interval ==
            4 * plain.default_hooks.checkpoint.interval)
    with pytest.raises(ValueError, match='micro_batch 3 does not divide'):
        set_micro_batch(plain, 3)
