"""mmseg_hosvd: activation-map compression for memory-cheap fine-tuning.

Importing this package has no side effect: it imports neither mmengine,
mmcv nor mmseg. The layers, data flowing one way:

1. :mod:`mmseg_hosvd.decomposition`: HOSVD/SVD/ASI maths, pure torch;
2. :mod:`mmseg_hosvd.ops`: the compressed layers and their autograd
   Functions (torch only);
3. model surgery (:mod:`mmseg_hosvd.surgery` and its peers);
4. :mod:`mmseg_hosvd.engine`: the mmengine hooks. A config's
   ``custom_imports`` names ``mmseg_hosvd.engine``, whose import checks the
   installed mmcv, installs the documented ``mmcv.ops`` fallback
   (:func:`mmseg_hosvd.compat.prepare_mmseg`) and registers the hooks.

The public names below are imported on first access.
"""
import importlib
from typing import Any

__version__ = '0.1.0'

#: public name -> module that defines it (imported on first access)
_LAZY_NAMES = {
    'ActivationCompressionHook': 'mmseg_hosvd.engine',
    'ActivationMemoryHook': 'mmseg_hosvd.engine',
    'WeightsOnlyCheckpointHook': 'mmseg_hosvd.engine',
    'NonFiniteStepGuardHook': 'mmseg_hosvd.engine',
    'LeanLossEncoderDecoder': 'mmseg_hosvd.lean_loss',
    'install_lean_loss': 'mmseg_hosvd.lean_loss',
    'remove_lean_loss': 'mmseg_hosvd.lean_loss',
    'CompressedConv2d': 'mmseg_hosvd.ops',
    'CompressedLinear': 'mmseg_hosvd.ops',
    'CompressionStats': 'mmseg_hosvd.ops',
}

__all__ = sorted(_LAZY_NAMES) + ['__version__']


def __getattr__(name: str) -> Any:
    module = _LAZY_NAMES.get(name)
    if module is None:
        raise AttributeError(f'module {__name__!r} has no attribute {name!r}')
    return getattr(importlib.import_module(module), name)


def __dir__():
    return sorted(set(globals()) | set(_LAZY_NAMES))
