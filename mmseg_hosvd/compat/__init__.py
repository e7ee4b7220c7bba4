"""What makes MMSegmentation importable in this environment.

:func:`prepare_mmseg` is the one entry point: modules that import
``mmseg.models`` or ``mmcv.cnn`` call it first (explicitly, never as a side
effect of importing :mod:`mmseg_hosvd` or :mod:`mmseg_hosvd.ops`);
:mod:`mmseg_hosvd.engine`, the target of the configs' ``custom_imports``,
calls it on import.
"""
from .prepare import prepare_mmseg

__all__ = ['prepare_mmseg']
