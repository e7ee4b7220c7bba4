"""2-process DDP (gloo, CPU) through mmseg's own train script."""
import json
import os
import os.path as osp
import socket
import subprocess
import sys

import mmseg
import pytest
import torch
from mmengine.config import Config

from conftest import REPO, tiny_run_cfg
from test_training import leaf_config

TRAIN_SCRIPT = osp.join(osp.dirname(mmseg.__file__), '.mim', 'tools',
                        'train.py')


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(('127.0.0.1', 0))
        return s.getsockname()[1]


ITERS = 2


def _torchrun(config, *options):
    """``torchrun --nproc_per_node=2 <mmseg train.py> config --launcher
    pytorch`` on the CPU (gloo); asserts exit code 0."""
    env = dict(
        os.environ,
        PYTHONPATH=os.pathsep.join([REPO, osp.join(REPO, 'tests', 'support')]),
        OMP_NUM_THREADS='1')
    result = subprocess.run([
        sys.executable, '-m', 'torch.distributed.run', '--nproc_per_node=2',
        f'--master_port={_free_port()}', TRAIN_SCRIPT,
        str(config), '--launcher', 'pytorch', *options
    ], capture_output=True, text=True, env=env, cwd=REPO, timeout=600)
    assert result.returncode == 0, (result.stdout[-2000:] +
                                    result.stderr[-4000:])
    return result


@pytest.mark.slow
@pytest.mark.parametrize('method', ['gradient_filter', 'hosvd', 'asi'])
def test_two_process_ddp_ranks_agree(tmp_path, tiny_voc, method):
    """Each rank compresses its own batch (its ranks may differ); after
    every step both ranks hold bit-identical weights, which did change."""
    cfg = tiny_run_cfg(
        Config.fromfile(leaf_config('deeplabv3', '10l', method)),
        str(tmp_path / 'work'), tiny_voc, max_iters=ITERS, val=False)
    cfg.custom_imports = dict(
        imports=['mmseg_hosvd.engine', 'cpu_ddp'], allow_failed_imports=False)
    cfg.custom_hooks = [dict(type='RankDumpHook')]
    # the runner defaults device_ids to [LOCAL_RANK], a GPU; CPU DDP needs None
    cfg.model_wrapper_cfg.device_ids = None
    config = tmp_path / 'ddp_cfg.py'
    cfg.dump(str(config))
    _torchrun(config)
    dumps = [
        torch.load(tmp_path / 'work' / f'rank{r}.pth', weights_only=True)
        for r in (0, 1)
    ]
    for dump in dumps:
        assert dump['wrapped'] and dump['iter'] == ITERS
        assert dump['compressed'] == 9  # DLV3 10L compresses (counts) 9 convs
        assert len(dump['steps']) == ITERS
    first, second = (d['state_dict'] for d in dumps)
    assert first.keys() == second.keys()
    for name in first:
        torch.testing.assert_close(first[name], second[name], msg=name)
    for step, (mine, theirs) in enumerate(zip(*(d['steps'] for d in dumps))):
        assert mine.keys() == theirs.keys() and mine
        for name, value in mine.items():
            assert torch.equal(value, theirs[name]), f'step {step}: {name}'
    before, after = dumps[0]['steps']
    assert any(not torch.equal(after[n], before[n]) for n in before)


@pytest.mark.parametrize('demo', [
    'segformer_mit-b0_10l-hosvd-eps0.8_tiny-voc-64x64.py',
    'fcn_r18-d8_5l-hosvd-eps0.8_tiny-voc-64x64.py'
])
@pytest.mark.slow
def test_demo_ddp_all_reduces_only_trainable_gradients(tmp_path, tiny_voc,
                                                       demo):
    """A demo config as shipped (no find_unused_parameters) under two-process
    DDP: the compression hook wraps the model again after freezing, so the
    bytes all-reduced per step are the trainable gradients' bytes and the
    frozen parameters stay bit-identical."""
    cfg = tiny_run_cfg(Config.fromfile(osp.join(REPO, 'configs', 'demo',
                                                demo)),
                       str(tmp_path / 'work'), tiny_voc, max_iters=2,
                       val=False)
    assert cfg.get('model_wrapper_cfg') is None
    assert not cfg.get('find_unused_parameters', False)
    cfg.custom_imports = dict(
        imports=['mmseg_hosvd.engine', 'cpu_ddp'], allow_failed_imports=False)
    cfg.custom_hooks = list(cfg.custom_hooks) + [dict(type='CommBytesHook')]
    # CPU DDP needs device_ids=None (the runner's default is [LOCAL_RANK])
    cfg.model_wrapper_cfg = dict(type='MMDistributedDataParallel',
                                 device_ids=None)
    config = tmp_path / 'ddp_cfg.py'
    cfg.dump(str(config))
    _torchrun(config)
    for rank in (0, 1):
        dump = torch.load(tmp_path / 'work' / f'comm{rank}.pth',
                          weights_only=True)
        assert dump['wrapper'] == 'MMDistributedDataParallel'
        assert dump['num_frozen'] > 0 and dump['frozen_unchanged']
        assert len(dump['step_bytes']) == 2
        assert dump['step_bytes'] == [dump['trainable_bytes']] * 2, dump
        print(f"{demo}: rank {rank}: all-reduced {dump['step_bytes']} B "
              f"per step, trainable gradients {dump['trainable_bytes']} B")


@pytest.mark.slow
def test_a_nan_on_one_rank_skips_the_step_on_every_rank(tmp_path, tiny_voc):
    """non_finite='skip' (the demo's default): a NaN batch on rank 1 only
    skips the first step on both ranks (one all_reduce of the flags); the
    second step trains, and the ranks stay bit-identical."""
    demo = 'segformer_mit-b0_10l-hosvd-eps0.8_tiny-voc-64x64.py'
    cfg = tiny_run_cfg(Config.fromfile(osp.join(REPO, 'configs', 'demo',
                                                demo)),
                       str(tmp_path / 'work'), tiny_voc, max_iters=2,
                       val=False)
    cfg.custom_imports = dict(
        imports=['mmseg_hosvd.engine', 'cpu_ddp'], allow_failed_imports=False)
    cfg.custom_hooks = list(cfg.custom_hooks) + [
        dict(type='RankDumpHook'),
        dict(type='RankPoisonHook', rank=1, iteration=0)
    ]
    cfg.model_wrapper_cfg = dict(type='MMDistributedDataParallel',
                                 device_ids=None)
    config = tmp_path / 'ddp_cfg.py'
    cfg.dump(str(config))
    log = _torchrun(config).stdout
    # rank 0 logs what rank 1 found (DDP spread the NaN gradient to rank 0)
    assert '(this is rank 0): rank 0: the gradient of' in log
    assert "; rank 1: the input batch, loss 'decode.loss_ce', " in log
    assert 'compressed layers with non-finite input: Compressed' in log
    # and rank 0's activation-memory report counts rank 1's NaN
    with open(tmp_path / 'work' / 'activation_memory.json') as f:
        report = json.load(f)
    assert report['ranks'] == 2 and report['non_finite_iterations'] == 1
    assert report['skipped_steps'] == 1 and report['iterations'] == 1
    assert len(report['layers']) == 10
    assert all(layer['non_finite'] == 1
               for layer in report['layers'].values())
    dumps = [
        torch.load(tmp_path / 'work' / f'rank{r}.pth', weights_only=True)
        for r in (0, 1)
    ]
    for dump in dumps:
        assert dump['skipped_steps'] == 1 and dump['iter'] == 2
        skipped, trained = dump['steps']
        for name, value in dump['initial'].items():
            assert torch.equal(skipped[name], value), name
        assert any(not torch.equal(trained[n], v)
                   for n, v in dump['initial'].items())
    for step, (mine, theirs) in enumerate(zip(*(d['steps'] for d in dumps))):
        for name, value in mine.items():
            assert torch.equal(value, theirs[name]), f'step {step}: {name}'
