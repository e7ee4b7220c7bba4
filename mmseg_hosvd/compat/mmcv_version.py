"""Check at import that an mmcv distribution MMSegmentation 1.2 accepts exists.

mmseg_hosvd does not install mmcv (neither ``install_requires`` nor extras
name one): the user chooses, as mmseg itself leaves them to, between the full
``mmcv`` (compiled ops; on a GPU: ``mim install mmcv``) and ``mmcv-lite``
(pure Python; enough on a CPU thanks to :mod:`mmseg_hosvd.compat.mmcv_ops`).
Both distributions provide the same ``mmcv`` package, whose
``mmcv.__version__`` is checked here against the range mmseg 1.2.x asserts
at its own import (``2.0.0rc4 <= version < 2.2.0``), so that a wrong or
missing mmcv is reported before anything else fails.
"""
import importlib
from typing import Optional

from mmengine.utils import digit_version

#: the mmcv versions MMSegmentation 1.2.x accepts (``mmseg/__init__.py``).
MMCV_MIN = '2.0.0rc4'
MMCV_MAX = '2.2.0'

INSTALL_HINT = (
    'Install one mmcv distribution in ['
    f'{MMCV_MIN}, {MMCV_MAX}), e.g. 2.1.0: on a GPU the full mmcv with '
    "compiled ops ('pip install -U openmim && mim install \"mmcv==2.1.0\"'), "
    "on a CPU 'pip install \"mmcv-lite==2.1.0\"' (mmseg_hosvd provides the "
    'mmcv.ops fallback for it). Install only one of the two: both own the '
    'same mmcv package directory.')


def installed_mmcv_version() -> Optional[str]:
    """``mmcv.__version__``, or None when no ``mmcv`` package is importable.

    Any import error other than a missing ``mmcv`` package propagates.
    """
    try:
        mmcv = importlib.import_module('mmcv')
    except ImportError as error:
        if getattr(error, 'name', None) == 'mmcv':
            return None
        raise
    return getattr(mmcv, '__version__', None) or '0'


def check_mmcv_version(version: Optional[str]) -> None:
    """Raise ImportError unless ``version`` (``None``: missing) is accepted."""
    if version is None:
        raise ImportError('mmseg_hosvd needs mmcv, which is not installed. '
                          + INSTALL_HINT)
    try:
        parsed = digit_version(version)
    except Exception as error:  # a version string mmengine cannot parse
        raise ImportError(f'mmseg_hosvd: cannot parse mmcv.__version__ '
                          f'{version!r} ({error}). {INSTALL_HINT}') from None
    if not digit_version(MMCV_MIN) <= parsed < digit_version(MMCV_MAX):
        raise ImportError(
            f'mmseg_hosvd: mmcv {version} is installed, but MMSegmentation '
            f'1.2.x needs {MMCV_MIN} <= mmcv < {MMCV_MAX}. Remove it '
            "('pip uninstall mmcv mmcv-lite mmcv-full'). " + INSTALL_HINT)


def require_compatible_mmcv() -> str:
    """Check the installed mmcv; return its version or raise ImportError."""
    version = installed_mmcv_version()
    check_mmcv_version(version)
    return version
