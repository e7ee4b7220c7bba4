"""Which leaf config of ``configs/`` a benchmark row runs.

The config tree lives beside the package in the repository, not inside it:
every function takes the ``configs`` folder explicitly.
"""
import math
import os.path as osp
from typing import Optional, Sequence, Tuple

from ..ops import METHOD_SPECS, method_spec

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


def eps_tag(eps: float) -> str:
    """``0.8 -> 'eps0.8'``, as in the leaf config names."""
    return f'eps{eps:g}'


def leaf_tag(method: str, eps: Optional[float] = None) -> str:
    """The method tag of a leaf config name: ``('hosvd', 0.8) ->
    'hosvd-eps0.8'``, ``('gradient_filter', None) -> 'gradient-filter'``
    (the registry's ``config_tag``, and the eps of low-rank methods).

    Raises:
        ValueError: an unknown method, or a low-rank one without eps.
    """
    spec = method_spec(method)
    if not spec.low_rank:
        return spec.config_tag
    if eps is None:
        raise ValueError(f'method {method!r}: its leaf tag needs an eps')
    return f'{spec.config_tag}-{eps_tag(eps)}'


def parse_leaf_tag(tag: str) -> Tuple[str, Optional[float]]:
    """``(method, eps)`` of a leaf tag: ``'hosvd-eps0.8' -> ('hosvd',
    0.8)``; a suffix after the eps (``'hosvd-eps0.8-lean-all'``) names a
    variant of the same method and eps.

    Raises:
        ValueError: no method's ``config_tag`` starts ``tag``.
    """
    for method, spec in METHOD_SPECS.items():
        if not spec.low_rank and tag == spec.config_tag:
            return method.value, None
        prefix = f'{spec.config_tag}-eps'
        if spec.low_rank and tag.startswith(prefix):
            return method.value, float(tag[len(prefix):].split('-', 1)[0])
    raise ValueError(f'leaf tag {tag!r}: expected one of '
                     f'{[s.config_tag for s in METHOD_SPECS.values()]}, '
                     'low-rank ones followed by -eps<value>')


def leaf_config_path(configs: str, model: str, setup: str, method: str,
                     eps: Optional[float] = None
                     ) -> Tuple[str, Optional[float]]:
    """Path of the VOC leaf config of ``model``/``setup``/``method`` under
    ``configs`` and the eps to override in it (None: keep the leaf's).

    Args:
        configs: the ``configs`` folder of the repository.
        model: a key of :data:`MODEL_CONFIGS`.
        setup: one of :data:`SETUPS`.
        method: a compression method (:class:`mmseg_hosvd.ops.Method`).
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
    override, leaf_eps = None, None
    if method_spec(method).low_rank:
        eps = 0.8 if eps is None else eps
        leaf_eps = eps if any(math.isclose(eps, e)
                              for e in LEAF_EPS) else 0.8
        if not math.isclose(leaf_eps, eps):
            override = eps
    tag = leaf_tag(method, leaf_eps)
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
