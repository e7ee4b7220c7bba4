"""The explicit, idempotent preparation of ``import mmseg.models``."""
from .mmcv_ops import install_mmcv_ops_fallback
from .mmcv_version import require_compatible_mmcv


def prepare_mmseg() -> bool:
    """Check the installed mmcv (ImportError saying what to install
    otherwise, :mod:`.mmcv_version`), then make ``mmcv.ops`` importable
    without mmcv's compiled ops where they are missing (the documented
    fallback, :mod:`.mmcv_ops`). Safe to call any number of times.

    Returns:
        Whether the ``mmcv.ops`` fallback is in use.
    """
    require_compatible_mmcv()
    return install_mmcv_ops_fallback()
