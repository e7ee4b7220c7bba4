"""2-process DDP (gloo, CPU) through mmseg's own train script."""
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


@pytest.mark.slow
@pytest.mark.parametrize(
    'method', ['vanilla', 'gradient_filter', 'svd', 'hosvd', 'asi'])
def test_two_process_ddp_ranks_agree(tmp_path, tiny_voc, method):
    """Each rank compresses its own batch (its ranks may differ); after
    every step both ranks hold bit-identical weights, which did change."""
    cfg = tiny_run_cfg(
        Config.fromfile(leaf_config('deeplabv3', '10l', method)),
        str(tmp_path / 'work'), tiny_voc, max_iters=ITERS, val=False)
    cfg.custom_imports = dict(
        imports=['mmseg_hosvd', 'cpu_ddp'], allow_failed_imports=False)
    cfg.custom_hooks = [dict(type='RankDumpHook')]
    # the runner defaults device_ids to [LOCAL_RANK], a GPU; CPU DDP needs None
    cfg.model_wrapper_cfg.device_ids = None
    config = tmp_path / 'ddp_cfg.py'
    cfg.dump(str(config))
    env = dict(
        os.environ,
        PYTHONPATH=os.pathsep.join([REPO, osp.join(REPO, 'tests', 'support')]),
        OMP_NUM_THREADS='1')
    result = subprocess.run([
        sys.executable, '-m', 'torch.distributed.run', '--nproc_per_node=2',
        f'--master_port={_free_port()}', TRAIN_SCRIPT,
        str(config), '--launcher', 'pytorch'
    ], capture_output=True, text=True, env=env, cwd=REPO, timeout=600)
    assert result.returncode == 0, (result.stdout[-2000:] +
                                    result.stderr[-4000:])
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
