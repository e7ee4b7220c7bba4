"""Bad hook configuration fails before training, naming the key and value."""
import os.path as osp

import pytest
from mmengine.config import Config
from mmengine.registry import HOOKS
from mmengine.runner import Runner

from conftest import CONFIGS, tiny_run_cfg

DEMO = osp.join(CONFIGS, 'demo', 'fcn_r18-d8_5l-hosvd-eps0.8_tiny-voc-64x64.py')


@pytest.mark.parametrize('kwargs, message', [
    (dict(method='tucker'), "method: unknown method 'tucker'"),
    (dict(eps=0.0), 'eps'),
    (dict(eps=1.5), 'eps'),
    (dict(eps=float('nan')), 'eps'),
    (dict(radius=0), 'radius must be an int >= 1, got radius=0'),
    (dict(layers='backbone'), "layers: expected a list, got 'backbone'"),
    (dict(layers=[3]), r'layers: expected a list of str or dict, got \[3\]'),
    (dict(freeze=[dict(path='backbone')]),
     'freeze: expected a list of str, got'),
    (dict(layers=['a'], num_layers=3), 'layers and num_layers are exclusive'),
    (dict(freeze=['a'], num_layers=3), 'freeze and num_layers are exclusive'),
    (dict(num_layers=0), 'num_layers: expected an int >= 1, got 0'),
    (dict(layers=[dict(path='a', eps=2.0)]),
     r'layers\[0\]: eps must be in \(0, 1\], got eps=2.0'),
    (dict(non_finite='ignore'),
     r"non_finite: expected one of \('raise', 'skip'\), got 'ignore'"),
    (dict(), r"layers / num_layers: method='hosvd' has nothing to compress"),
    (dict(layers=[]), 'layers / num_layers: .*nothing to compress'),
    (dict(layers=None, num_layers=None), 'nothing to compress'),
    (dict(method='svd', freeze=['backbone']), 'nothing to compress'),
    (dict(method='vanilla'), "method='vanilla' has nothing to compress"),
    (dict(layers=['a'], lr=0.1), r"unknown compression key\(s\) \['lr'\]"),
])
def test_bad_arguments_fail_when_the_hook_is_built(kwargs, message):
    with pytest.raises(ValueError, match=message):
        HOOKS.build(dict(type='ActivationCompressionHook', **kwargs))


def _runner_with_hook(tmp_path, tiny_voc, **hook):
    cfg = tiny_run_cfg(Config.fromfile(DEMO), str(tmp_path), tiny_voc)
    cfg.custom_hooks = [dict(type='ActivationCompressionHook', **hook)]
    return Runner.from_cfg(cfg)


@pytest.mark.parametrize('hook, message', [
    (dict(layers=['decode_head.nope']),
     "layers\\[0\\]: path 'decode_head.nope' does not exist"),
    (dict(layers=['decode_head.convs']),
     "'decode_head.convs' is a Sequential, not an nn.Conv2d"),
    (dict(layers=['decode_head.conv_cat', 'decode_head.conv_cat.conv']),
     "'decode_head.conv_cat.conv'.*already listed"),
    (dict(freeze=['backbone'], layers=['backbone.layer4.1']),
     "'backbone.layer4.1' is listed as compressed but its conv "
     "'backbone.layer4.1.conv1' is frozen"),
    (dict(freeze=['backbone.layer9'], layers=['decode_head.conv_cat']),
     "freeze: path 'backbone.layer9'"),
    (dict(num_layers=10_000), 'num_layers=10000 but the model runs only'),
])
def test_bad_layers_fail_before_the_first_iteration(tmp_path, tiny_voc, hook,
                                                    message):
    runner = _runner_with_hook(tmp_path, tiny_voc, **hook)
    with pytest.raises(ValueError, match=message):
        runner.train()
    assert runner.iter == 0


def test_vanilla_with_a_freeze_list_only_freezes():
    """The calibration configs' freezing-only hook is not an error."""
    hook = HOOKS.build(dict(type='ActivationCompressionHook',
                            method='vanilla', layers=[],
                            freeze=['backbone']))
    assert hook.config.layers == () and hook.config.freeze == ('backbone', )


def test_the_hook_registers_its_step_guard(tmp_path, tiny_voc):
    """Without a NonFiniteStepGuardHook in the config the compression hook
    registers one with its own non_finite."""
    runner = _runner_with_hook(tmp_path, tiny_voc, non_finite='raise',
                               layers=['decode_head.conv_cat'])
    assert not any(type(h).__name__ == 'NonFiniteStepGuardHook'
                   for h in runner.hooks)
    runner.call_hook('before_run')
    guards = [h for h in runner.hooks
              if type(h).__name__ == 'NonFiniteStepGuardHook']
    assert len(guards) == 1 and guards[0].non_finite == 'raise'


def test_contradicting_guard_is_a_config_error(tmp_path, tiny_voc):
    cfg = tiny_run_cfg(Config.fromfile(DEMO), str(tmp_path), tiny_voc)
    cfg.custom_hooks = [
        dict(type='ActivationCompressionHook', non_finite='raise',
             layers=['decode_head.conv_cat']),
        dict(type='NonFiniteStepGuardHook', non_finite='skip')]
    runner = Runner.from_cfg(cfg)
    with pytest.raises(ValueError, match="non_finite='raise' but "
                       "NonFiniteStepGuardHook has non_finite='skip'"):
        runner.train()
    assert runner.iter == 0
