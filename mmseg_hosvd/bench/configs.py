"""Which leaf config of ``configs/`` a benchmark row runs.

The config tree lives beside the package in the repository, not inside it:
every function takes the ``configs`` folder explicitly.
"""
import math
import os.path as osp
from typing import Optional, Sequence, Tuple

#: model choice of the benchmarks -> (config folder, config model name)
MODEL_CONFIGS = {
    'pspnet': ('pspnet', 'pspnet_r18-d8'),
    'pspnet-m': ('mobilenet_v2', 'mobilenet-v2-d8_pspnet'),
    'deeplabv3': ('deeplabv3', 'deeplabv3_r18-d8'),
    'deeplabv3-m': ('mobilenet_v2', 'mobilenet-v2-d8_deeplabv3'),
    'fcn': ('fcn', 'fcn_r18-d8'),
    'upernet': ('upernet', 'upernet_r18'),
    'segformer': ('segformer', 'segformer_mit-b0'),
    'swin': ('swin', 'upernet_swin-t'),
}
#: the paper's layer sets
SETUPS = ('5L', '10L')
#: eps values that have their own leaf config; others use eps0.8's leaf
#: with ``eps`` overridden
LEAF_EPS = (0.8, 0.9)
#: methods whose leaf config carries an eps
LEAF_EPS_METHODS = ('svd', 'hosvd', 'asi')


def eps_tag(eps: float) -> str:
    """``0.8 -> 'eps0.8'``, as in the leaf config names."""
    return f'eps{eps:g}'


def leaf_config_path(configs: str, model: str, setup: str, method: str,
                     eps: Optional[float] = None
                     ) -> Tuple[str, Optional[float]]:
    """Path of the VOC leaf config of ``model``/``setup``/``method`` under
    ``configs`` and the eps to override in it (None: keep the leaf's).

    Args:
        configs: the ``configs`` folder of the repository.
        model: a key of :data:`MODEL_CONFIGS`.
        setup: one of :data:`SETUPS`.
        method: ``'vanilla'``, ``'gradient_filter'``, ``'svd'``,
            ``'hosvd'`` or ``'asi'``.
        eps: explained-variance threshold of svd/hosvd/asi (default 0.8).

    Raises:
        ValueError: an unknown model, setup or method.
    """
    if model not in MODEL_CONFIGS:
        raise ValueError(f'model: expected one of {list(MODEL_CONFIGS)}, '
                         f'got {model!r}')
    if setup not in SETUPS:
        raise ValueError(f'setup: expected one of {SETUPS}, got {setup!r}')
    folder, name = MODEL_CONFIGS[model]
    override = None
    if method == 'vanilla':
        tag = 'vanilla'
    elif method == 'gradient_filter':
        tag = 'gradient-filter'
    elif method in LEAF_EPS_METHODS:
        eps = 0.8 if eps is None else eps
        leaf_eps = eps if any(math.isclose(eps, e)
                              for e in LEAF_EPS) else 0.8
        if not math.isclose(leaf_eps, eps):
            override = eps
        tag = f'{method}-{eps_tag(leaf_eps)}'
    else:
        raise ValueError(f'method: unknown {method!r}')
    path = osp.join(configs, folder,
                    f'{name}_{setup.lower()}-{tag}_1xb8-20k_voc12aug-'
                    '512x512.py')
    return path, override


def load_leaf_config(configs: str, model: str, setup: str, method: str,
                     eps: Optional[float] = None,
                     crop: Optional[Sequence[int]] = None):
    """The leaf config (mmengine ``Config``) with ``eps`` and the data
    preprocessor's ``size`` (``crop``, (H, W) pixels) applied.

    Raises:
        FileNotFoundError: no such leaf config.
        ValueError: the leaf's compression method is not ``method``.
    """
    from mmengine.config import Config
    path, override = leaf_config_path(configs, model, setup, method, eps)
    if not osp.isfile(path):
        raise FileNotFoundError(f'config not found: {path}')
    cfg = Config.fromfile(path)
    compression = cfg.default_hooks.compression
    if compression.method != method:
        raise ValueError(f'{path}: compression method is '
                         f'{compression.method!r}, expected {method!r}')
    if override is not None:
        compression.eps = override
    if crop is not None:
        cfg.model.data_preprocessor.size = tuple(crop)
    return cfg
