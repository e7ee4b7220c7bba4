"""The compression hook's ``lean_loss`` option in a real run: the same
weights as mmseg's own loss after training, and bad values refused."""
import pytest
import torch
from mmengine.config import Config
from mmengine.runner import Runner

from conftest import tiny_run_cfg
from mmseg_hosvd import ActivationCompressionHook, LeanLossEncoderDecoder
from test_training import leaf_config


def trained_weights(tmp_path, tiny_voc, lean_loss: bool):
    cfg = Config.fromfile(leaf_config('fcn', '5l', 'hosvd'))
    cfg.default_hooks.compression.lean_loss = lean_loss
    cfg = tiny_run_cfg(cfg, str(tmp_path / str(lean_loss)), tiny_voc,
                       val=False)
    cfg.randomness = dict(seed=0)
    runner = Runner.from_cfg(cfg)
    runner.train()
    return runner.model, {
        name: param.detach().clone()
        for name, param in runner.model.named_parameters()
        if param.requires_grad
    }


@pytest.mark.slow
def test_lean_loss_trains_like_mmseg_loss(tmp_path, tiny_voc):
    plain, expected = trained_weights(tmp_path, tiny_voc, lean_loss=False)
    lean, weights = trained_weights(tmp_path, tiny_voc, lean_loss=True)
    assert type(plain) is not LeanLossEncoderDecoder
    assert type(lean) is LeanLossEncoderDecoder
    assert set(weights) == set(expected)
    for name, value in weights.items():
        torch.testing.assert_close(value, expected[name], rtol=1e-4,
                                   atol=1e-6, msg=name)


@pytest.mark.parametrize('value', ['yes', 1, None])
def test_lean_loss_must_be_a_bool(value):
    with pytest.raises(ValueError, match='lean_loss'):
        ActivationCompressionHook(lean_loss=value)
