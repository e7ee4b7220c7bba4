"""Checkpoints: plain-mmseg compatible, safe to load, resumable."""
import glob
import os.path as osp
import pickle
import subprocess
import sys
import textwrap

import pytest
import torch
from mmengine.config import Config
from mmengine.runner import Runner

from conftest import REPO, tiny_run_cfg
from test_training import leaf_config

PLAIN_MMSEG_SCRIPT = textwrap.dedent('''
    """Load a compressed run's checkpoint into plain MMSegmentation."""
    import importlib.util, sys
    import torch
    # mmcv-lite has no compiled ops: load only the fallback module, by file,
    # so that `import mmseg.models` works; the plugin package is NOT imported.
    spec = importlib.util.spec_from_file_location('mmcv_ops_fallback', sys.argv[1])
    fallback = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(fallback)
    fallback.install_mmcv_ops_fallback()
    from mmengine.config import Config
    from mmseg.registry import MODELS
    from mmseg.utils import register_all_modules
    register_all_modules()
    model = MODELS.build(Config.fromfile(sys.argv[2]).model).eval()
    checkpoint = torch.load(sys.argv[3], map_location='cpu', weights_only=True)
    model.load_state_dict(checkpoint['state_dict'], strict=True)
    inputs = torch.load(sys.argv[4], weights_only=True)
    with torch.no_grad():
        torch.save(model(inputs, mode='tensor'), sys.argv[5])
    assert not any(m.startswith('mmseg_hosvd') for m in sys.modules), 'plugin imported'
    assert all(type(m).__module__.startswith(('torch', 'mmcv', 'mmseg'))
               for m in model.modules())
    print('plain mmseg load ok')
''')


def _run_with_checkpoint(tmp_path, tiny_voc, method='hosvd', max_iters=2,
                         family='deeplabv3'):
    cfg = tiny_run_cfg(
        Config.fromfile(leaf_config(family, '10l', method)),
        str(tmp_path / 'run'), tiny_voc, max_iters=max_iters, val=False,
        checkpoint_interval=max_iters)
    runner = Runner.from_cfg(cfg)
    runner.train()
    return cfg, runner, osp.join(cfg.work_dir, f'iter_{max_iters}.pth')


@pytest.fixture(scope='module')
def hosvd_run(tmp_path_factory, tiny_voc):
    """One DLV3 10L HOSVD run of 2 iterations and its checkpoint, read (not
    changed) by the two tests below: ``(cfg, runner, checkpoint)``."""
    return _run_with_checkpoint(tmp_path_factory.mktemp('hosvd_run'),
                                tiny_voc)


@pytest.mark.slow
def test_checkpoint_loads_into_plain_mmseg_with_same_outputs(
        tmp_path, hosvd_run):
    cfg, runner, checkpoint = hosvd_run
    model_cfg = tmp_path / 'model_cfg.py'
    Config(dict(model=cfg.model.to_dict())).dump(str(model_cfg))
    inputs = torch.randn(1, 3, 64, 64)
    torch.save(inputs, tmp_path / 'inputs.pt')
    model = runner.model.eval()
    with torch.no_grad():
        expected = model(inputs, mode='tensor')
    script = tmp_path / 'plain_load.py'
    script.write_text(PLAIN_MMSEG_SCRIPT)
    fallback = osp.join(REPO, 'mmseg_hosvd', 'compat', 'mmcv_ops.py')
    result = subprocess.run([
        sys.executable,
        str(script), fallback,
        str(model_cfg), checkpoint,
        str(tmp_path / 'inputs.pt'),
        str(tmp_path / 'outputs.pt')
    ], capture_output=True, text=True, cwd=str(tmp_path))
    assert result.returncode == 0, result.stderr[-3000:]
    assert 'plain mmseg load ok' in result.stdout
    torch.testing.assert_close(
        torch.load(tmp_path / 'outputs.pt', weights_only=True), expected)


@pytest.mark.slow
def test_checkpoint_is_weights_only_loadable(hosvd_run):
    _, runner, checkpoint = hosvd_run
    loaded = torch.load(checkpoint, map_location='cpu', weights_only=True)
    assert set(loaded['state_dict']) == set(runner.model.state_dict())
    assert {'meta', 'message_hub', 'optimizer', 'param_schedulers'
            } <= set(loaded)


@pytest.mark.slow
@pytest.mark.parametrize(
    'method', ['vanilla', 'gradient_filter', 'svd', 'hosvd', 'asi'])
def test_resume_reaches_the_uninterrupted_weights(tmp_path, tiny_voc,
                                                  method):
    _, straight, _ = _run_with_checkpoint(
        tmp_path / 'straight', tiny_voc, method=method, max_iters=4)
    _, _, checkpoint = _run_with_checkpoint(
        tmp_path / 'first', tiny_voc, method=method, max_iters=2)
    cfg = tiny_run_cfg(
        Config.fromfile(leaf_config('deeplabv3', '10l', method)),
        str(tmp_path / 'first' / 'run'), tiny_voc, max_iters=4, val=False,
        checkpoint_interval=4)
    cfg.resume = True
    cfg.load_from = checkpoint
    resumed = Runner.from_cfg(cfg)
    resumed.train()
    assert resumed.iter == 4
    # CPU, deterministic: bit-identical weights and losses (asi: its bases
    # come back from checkpoint['compression_state'])
    straight_state = straight.model.state_dict()
    resumed_state = resumed.model.state_dict()
    assert straight_state.keys() == resumed_state.keys()
    for name, value in straight_state.items():
        assert torch.equal(resumed_state[name], value), name
    losses = [
        runner.message_hub.get_scalar('train/loss').data[0][-2:].tolist()
        for runner in (straight, resumed)
    ]
    assert losses[0] == losses[1]  # iterations 3 and 4


class _Payload:
    """Unpickling this would create a file: a stand-in for arbitrary code."""

    def __init__(self, marker: str):
        self.marker = marker

    def __reduce__(self):
        return (open, (self.marker, 'w'))


def test_load_from_refuses_a_malicious_pickle(tmp_path, tiny_voc):
    marker = tmp_path / 'pwned'
    malicious = tmp_path / 'malicious.pth'
    with open(malicious, 'wb') as f:
        pickle.dump({'state_dict': {}, 'meta': _Payload(str(marker))}, f)
    cfg = tiny_run_cfg(
        Config.fromfile(leaf_config('fcn', '5l', 'hosvd')),
        str(tmp_path / 'run'), tiny_voc, val=False)
    cfg.load_from = str(malicious)
    runner = Runner.from_cfg(cfg)
    with pytest.raises(pickle.UnpicklingError, match='Weights only load'):
        runner.train()
    assert not marker.exists()
    assert not glob.glob(str(tmp_path / 'run' / '*.pth'))
