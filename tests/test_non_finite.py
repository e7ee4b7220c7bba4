"""``non_finite`` has one meaning for every method, whether or not the
config lists a ``NonFiniteStepGuardHook`` (the compression hook registers
one): ``'raise'`` stops before the optimizer step that would have taken a
NaN, naming the iteration, the rank and the first non-finite tensor;
``'skip'`` skips that step and training goes on."""
import pytest
import torch
from mmengine.config import Config
from mmengine.runner import Runner

from conftest import tiny_run_cfg
from test_bad_data import METHODS, PoisonHook
from test_training import leaf_config


class PoisonLogitsHook(PoisonHook):
    """Writes ``plan[iteration]`` into the classifier's output (the
    compressed layers' inputs stay finite, the loss does not)."""

    def before_train(self, runner) -> None:
        super().before_train(runner)
        model = runner.model.module if hasattr(runner.model, 'module') \
            else runner.model
        model.decode_head.conv_seg.register_forward_hook(self._poison_logits)

    def _poison(self, module, args, output):
        return output

    def _poison_logits(self, module, args, output):
        if self.value is not None and module.training:
            output = output.clone()
            output[0, :, 1, 1] = self.value
        return output


def _runner(tmp_path, tiny_voc, method, poison, max_iters, non_finite):
    cfg = tiny_run_cfg(Config.fromfile(leaf_config('fcn', '5l', method)),
                       str(tmp_path), tiny_voc, max_iters=max_iters,
                       val=False)
    cfg.default_hooks.pop('non_finite_guard')  # the hook registers its own
    cfg.default_hooks.compression.non_finite = non_finite
    runner = Runner.from_cfg(cfg)
    runner.register_hook(poison)
    return runner


def _trainable(runner):
    return {n: p.detach().clone() for n, p in runner.model.named_parameters()
            if p.requires_grad}


def _assert_unchanged(runner, before):
    after = _trainable(runner)
    assert after.keys() == before.keys()
    for name, value in after.items():
        assert torch.equal(value, before[name]), f'{name} changed'


@pytest.mark.slow
@pytest.mark.parametrize('method', METHODS)
def test_raise_on_a_nan_input_names_iteration_rank_and_layer(
        tmp_path, tiny_voc, method):
    poison = PoisonHook({1: float('nan')})
    runner = _runner(tmp_path, tiny_voc, method, poison, 3, 'raise')
    with pytest.raises(FloatingPointError) as error:
        runner.train()
    message = str(error.value)
    assert 'iteration 2 on rank(s) 0' in message, message
    assert 'the input batch' in message, message
    assert (f"CompressedConv2d 'backbone.layer4.1.conv1' (method="
            f"'{method}'): input contains NaN/Inf") in message, message
    assert 'the optimizer step was not taken' in message
    assert runner.iter == 1
    _assert_unchanged(runner, poison.params[-1])
    assert len(poison.params) == 2  # before training, after iteration 1


@pytest.mark.slow
@pytest.mark.parametrize('method', ['vanilla', 'hosvd'])
def test_raise_on_a_nan_loss_names_the_loss(tmp_path, tiny_voc, method):
    poison = PoisonLogitsHook({0: float('nan')})
    runner = _runner(tmp_path, tiny_voc, method, poison, 2, 'raise')
    with pytest.raises(FloatingPointError) as error:
        runner.train()
    message = str(error.value)
    assert "iteration 1 on rank(s) 0 (this is rank 0): loss " \
        "'decode.loss_ce'" in message, message
    assert 'input contains' not in message, message  # not a layer input
    assert runner.iter == 0
    _assert_unchanged(runner, poison.params[0])


@pytest.mark.slow
@pytest.mark.parametrize('method', ['vanilla', 'hosvd'])
def test_skip_without_a_guard_in_the_config(tmp_path, tiny_voc, method):
    poison = PoisonLogitsHook({1: float('nan')})
    runner = _runner(tmp_path, tiny_voc, method, poison, 3, 'skip')
    runner.train()
    assert runner.iter == 3
    before, skipped, after = poison.params[1:]
    assert all(torch.equal(skipped[n], before[n]) for n in before)
    assert any(not torch.equal(after[n], skipped[n]) for n in before)
    for name, param in runner.model.named_parameters():
        assert torch.isfinite(param).all(), name
    guard = next(h for h in runner.hooks
                 if type(h).__name__ == 'NonFiniteStepGuardHook')
    assert guard.skipped_steps == 1
