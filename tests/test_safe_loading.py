"""Every checkpoint load goes through ``torch.load(weights_only=True)``,
explicitly: with torch's old default restored
(``TORCH_FORCE_NO_WEIGHTS_ONLY_LOAD=1``) a malicious ``load_from`` is still
refused and a real ``--resume`` still works."""
import os
import pickle
import subprocess
import sys
import textwrap

import numpy as np
import pytest
import torch
from mmengine.config import Config
from mmengine.logging import HistoryBuffer
from mmengine.runner.checkpoint import _load_checkpoint

from conftest import REPO, tiny_run_cfg
from mmseg_hosvd.engine.weights_only import (CheckpointRefusedError,
                                             load_weights_only)
from test_training import leaf_config

RUN_SCRIPT = textwrap.dedent('''
    """Train each config (argv[1:]) in turn, in this one process; print
    the last iteration of each."""
    import sys
    from mmengine.config import Config
    from mmengine.runner import Runner
    for path in sys.argv[1:]:
        runner = Runner.from_cfg(Config.fromfile(path))
        runner.train()
        print(f'{path}: trained to iteration {runner.iter}')
''')


class _Payload:
    """Unpickling this creates a file: a stand-in for arbitrary code."""

    def __init__(self, marker: str):
        self.marker = marker

    def __reduce__(self):
        return (open, (self.marker, 'w'))


def _old_default_env() -> dict:
    return dict(os.environ, PYTHONPATH=REPO, OMP_NUM_THREADS='1',
                TORCH_FORCE_NO_WEIGHTS_ONLY_LOAD='1')


def _train(tmp_path, **cfgs) -> subprocess.CompletedProcess:
    """Trains the configs ``name=cfg`` in turn in one subprocess with
    torch's old default; each is dumped to ``tmp_path / 'name.py'``."""
    script = tmp_path / 'run.py'
    script.write_text(RUN_SCRIPT)
    configs = []
    for name, cfg in cfgs.items():
        configs.append(str(tmp_path / f'{name}.py'))
        cfg.dump(configs[-1])
    return subprocess.run([sys.executable, str(script), *configs],
                          capture_output=True, text=True, cwd=str(tmp_path),
                          env=_old_default_env(), timeout=600)


def _tiny_cfg(tmp_path, tiny_voc, max_iters: int, **kwargs):
    return tiny_run_cfg(Config.fromfile(leaf_config('fcn', '5l', 'hosvd')),
                        str(tmp_path / 'run'), tiny_voc, max_iters=max_iters,
                        val=False, **kwargs)


@pytest.mark.slow
def test_old_default_refuses_a_malicious_load_from(tmp_path, tiny_voc):
    marker = tmp_path / 'pwned'
    malicious = tmp_path / 'malicious.pth'
    with open(malicious, 'wb') as f:
        pickle.dump({'state_dict': {}, 'meta': _Payload(str(marker))}, f)
    cfg = _tiny_cfg(tmp_path, tiny_voc, max_iters=1)
    cfg.load_from = str(malicious)
    result = _train(tmp_path, malicious=cfg)
    assert result.returncode != 0, result.stdout[-2000:]
    assert 'CheckpointRefusedError: refused to load checkpoint' in \
        result.stderr, result.stderr[-3000:]
    assert str(malicious) in result.stderr
    assert 'trained to iteration' not in result.stdout
    assert not marker.exists()


@pytest.mark.slow
def test_old_default_still_resumes(tmp_path, tiny_voc):
    """Two runs in one subprocess (one interpreter start less): 2
    iterations with a checkpoint, then a resumed run to 4 from it."""
    checkpoint = tmp_path / 'run' / 'iter_2.pth'
    cfg = _tiny_cfg(tmp_path, tiny_voc, 4, checkpoint_interval=4)
    cfg.resume = True
    cfg.load_from = str(checkpoint)
    resumed = _train(tmp_path,
                     first=_tiny_cfg(tmp_path, tiny_voc, 2,
                                     checkpoint_interval=2),
                     resumed=cfg)
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    assert f'{tmp_path / "first.py"}: trained to iteration 2' in \
        resumed.stdout, resumed.stdout[-2000:]
    assert checkpoint.is_file()
    assert f'{tmp_path / "resumed.py"}: trained to iteration 4' in \
        resumed.stdout
    output = resumed.stdout + resumed.stderr
    assert ('Loads checkpoint by local_weights_only backend from path: '
            f'{checkpoint}') in output
    assert 'Advance dataloader 2 steps' in output  # resumed at iteration 2


def test_numpy_data_is_allowed_and_nothing_broader(tmp_path):
    data = {'palette': np.arange(6).reshape(2, 3),
            'mean': np.float32(0.25), 'dtype': np.dtype('float64')}
    torch.save(data, tmp_path / 'numpy.pth')
    loaded = _load_checkpoint(str(tmp_path / 'numpy.pth'), 'cpu')
    np.testing.assert_array_equal(loaded['palette'], data['palette'])
    assert loaded['mean'] == pytest.approx(0.25)
    assert loaded['dtype'] == np.dtype('float64')
    # a HistoryBuffer pickles bound methods through builtins.getattr
    torch.save({'buffer': HistoryBuffer([1.0], [1])}, tmp_path / 'buffer.pth')
    with pytest.raises(CheckpointRefusedError,
                       match=r'\(builtins\.getattr, mmengine\.logging'
                       r'\.history_buffer\.HistoryBuffer\)'):
        load_weights_only(str(tmp_path / 'buffer.pth'))
    # the allow-list is scoped to the call: torch's own default is unchanged
    with pytest.raises(pickle.UnpicklingError):
        torch.load(tmp_path / 'numpy.pth', weights_only=True)
