"""What the paper's config tests (``test_configs.py``) and the transformer
config tests (``test_transformer_configs.py``) share: the leaf names, the
cached config loader and the checks common to both families' leaves.

A leaf is ``configs/<folder>/<prefix>_<setup>-<tag>_<SUFFIX>.py``.
"""
import functools
import os.path as osp
from typing import List

from mmengine import Config

from conftest import CONFIGS
from mmseg_hosvd.bench import parse_leaf_tag

SUFFIX = '1xb8-20k_voc12aug-512x512'
SETUPS = ('5l', '10l')
# the file-name tags of the leaves
TAGS = ('vanilla', 'gradient-filter', 'svd-eps0.8', 'svd-eps0.9',
        'hosvd-eps0.8', 'hosvd-eps0.9', 'asi-eps0.8')
# file-name tag: (method, eps or None), read from the method registry
METHODS = {tag: parse_leaf_tag(tag) for tag in TAGS}


def leaf_config_path(folder: str, prefix: str, setup: str, tag: str) -> str:
    """Path of the fine-tuning leaf of one (model, setup, method tag)."""
    return osp.join(CONFIGS, folder, f'{prefix}_{setup}-{tag}_{SUFFIX}.py')


@functools.lru_cache(maxsize=None)
def load(path: str) -> Config:
    """``Config.fromfile(path)``, parsed once per path."""
    return Config.fromfile(path)


def check_sgd_and_hooks(cfg: Config) -> None:
    """SGD (lr 0.01, momentum 0.9), the weights-only checkpoint hook and no
    custom hooks: shared by every leaf and calibration config."""
    opt = cfg.optim_wrapper.optimizer
    assert (opt.type, opt.lr, opt.momentum) == ('SGD', 0.01, 0.9)
    assert cfg.default_hooks.weights_only_checkpoint.type == (
        'WeightsOnlyCheckpointHook')
    assert cfg.get('custom_hooks') is None


def check_hook_settings(hook: dict, tag: str, freeze: List[str]) -> None:
    """The compression hook of a leaf: method/eps from the file-name tag,
    default ``norm_eval``, no ``num_layers``, the setup's freeze list."""
    method, eps = METHODS[tag]
    assert hook['method'] == method
    if eps is not None:
        assert hook['eps'] == eps
    assert hook.get('norm_eval', True) is True
    assert hook.get('num_layers') is None
    assert list(hook['freeze']) == freeze
