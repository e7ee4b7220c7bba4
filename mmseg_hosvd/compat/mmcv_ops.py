"""The one documented fallback: ``mmcv.ops`` without mmcv's compiled ops.

``mmcv-lite`` ships mmcv's Python sources but not its compiled extension
``mmcv._ext``; importing ``mmcv.ops`` then fails, and with it
``mmseg.models`` (its focal loss, point head and a few utilities import
``mmcv.ops`` at module level).

:func:`install_mmcv_ops_fallback` checks whether the real ``mmcv.ops``
imports. If it does (a full mmcv build, as GPU users have), nothing is
touched. If it fails *only* because ``mmcv._ext`` is missing, a stand-in
package ``mmcv.ops`` is put in ``sys.modules`` that

* serves pure-PyTorch submodules of the real package unchanged
  (``mmcv.ops.point_sample`` is loaded from mmcv's own file), and
* exposes every compiled op that mmseg imports as a placeholder that raises
  :class:`MMCVOpsUnavailableError` naming the op when it is *used*.

No other module is modified.
"""
import importlib
import importlib.util
import os.path as osp
import sys
import types
from typing import Any, Callable

import torch.nn as nn

#: compiled ops that mmseg 1.2.x imports from ``mmcv.ops`` (classes are
#: needed for ``isinstance`` checks, functions for ``from ... import``).
COMPILED_OP_CLASSES = ('CrissCrossAttention', 'PSAMask', 'DeformConv2d',
                       'ModulatedDeformConv2d', 'DeformConv2dPack',
                       'ModulatedDeformConv2dPack', 'RoIAlign', 'RoIPool',
                       'SyncBatchNorm', 'CARAFEPack')
COMPILED_OP_FUNCTIONS = ('sigmoid_focal_loss', 'softmax_focal_loss',
                         'roi_align', 'roi_pool', 'nms', 'batched_nms')
#: pure-PyTorch submodules of ``mmcv.ops`` re-exported by the stand-in.
PURE_TORCH_EXPORTS = {'point_sample': ('point_sample', 'bilinear_grid_sample',
                                       'rel_roi_point_to_rel_img_point')}

FALLBACK_MARKER = '__mmseg_hosvd_fallback__'


class MMCVOpsUnavailableError(RuntimeError):
    """Raised when a compiled mmcv op is used under the fallback."""


def _unavailable_message(name: str) -> str:
    return (f'mmcv.ops.{name} needs mmcv compiled ops (mmcv._ext), which '
            'this environment lacks (mmcv-lite). Install a full mmcv build '
            'to use it; mmseg_hosvd itself does not need it.')


def _placeholder_class(name: str) -> type:

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        raise MMCVOpsUnavailableError(_unavailable_message(name))

    return type(name, (nn.Module, ), {'__init__': __init__,
                                      '__doc__': _unavailable_message(name)})


def _placeholder_function(name: str) -> Callable:

    def op(*args: Any, **kwargs: Any) -> None:
        raise MMCVOpsUnavailableError(_unavailable_message(name))

    op.__name__ = name
    op.__doc__ = _unavailable_message(name)
    return op


def _missing_compiled_ext(error: ImportError) -> bool:
    return getattr(error, 'name', None) == 'mmcv._ext'


def _build_fallback(real_ops_dir: str) -> types.ModuleType:
    module = types.ModuleType('mmcv.ops', doc=__doc__)
    module.__path__ = [real_ops_dir]  # submodules load from mmcv's own files
    module.__package__ = 'mmcv.ops'
    setattr(module, FALLBACK_MARKER, True)
    for name in COMPILED_OP_CLASSES:
        setattr(module, name, _placeholder_class(name))
    for name in COMPILED_OP_FUNCTIONS:
        setattr(module, name, _placeholder_function(name))
    return module


def is_fallback_active() -> bool:
    """Whether ``sys.modules['mmcv.ops']`` is this module's stand-in."""
    return getattr(sys.modules.get('mmcv.ops'), FALLBACK_MARKER, False)


def install_mmcv_ops_fallback() -> bool:
    """Make ``import mmcv.ops`` work; return True if the fallback is used.

    A real ``mmcv.ops`` that imports is always preferred. Any import error
    other than the missing compiled extension is re-raised unchanged.
    """
    if 'mmcv.ops' in sys.modules:
        return is_fallback_active()
    try:
        importlib.import_module('mmcv.ops')
        return False
    except ImportError as error:
        if not _missing_compiled_ext(error):
            raise
    # drop the half-imported real package and its submodules
    for key in [k for k in sys.modules
                if k == 'mmcv.ops' or k.startswith('mmcv.ops.')]:
        del sys.modules[key]
    mmcv_spec = importlib.util.find_spec('mmcv')
    real_ops_dir = osp.join(osp.dirname(mmcv_spec.origin), 'ops')
    fallback = _build_fallback(real_ops_dir)
    sys.modules['mmcv.ops'] = fallback
    import mmcv
    mmcv.ops = fallback
    for submodule, names in PURE_TORCH_EXPORTS.items():
        loaded = importlib.import_module(f'mmcv.ops.{submodule}')
        for name in names:
            setattr(fallback, name, getattr(loaded, name))
    return True
