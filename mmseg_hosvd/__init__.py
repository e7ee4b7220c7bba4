"""mmseg_hosvd: activation-map compression for memory-cheap fine-tuning.

Importing this package (e.g. through a config's ``custom_imports``) first
checks that an mmcv version MMSegmentation 1.2 accepts is installed (see
:mod:`mmseg_hosvd.compat.mmcv_version`; ImportError saying what to install
otherwise), then makes ``mmseg.models`` importable without mmcv's compiled
ops (see :mod:`mmseg_hosvd.compat.mmcv_ops`, the one documented fallback) and
registers the plugin's hooks in mmengine's ``HOOKS`` registry and makes
mmengine load local and ``http(s)://`` checkpoints with
``torch.load(weights_only=True)``, explicitly, whatever torch's default
(:func:`~mmseg_hosvd.engine.weights_only.install_weights_only_loader`).
"""
from .compat.mmcv_version import require_compatible_mmcv

require_compatible_mmcv()

from .compat.mmcv_ops import install_mmcv_ops_fallback  # noqa: E402

install_mmcv_ops_fallback()

from .engine import (ActivationCompressionHook,  # noqa: E402
                     ActivationMemoryHook, NonFiniteStepGuardHook,
                     WeightsOnlyCheckpointHook)
from .engine.weights_only import install_weights_only_loader  # noqa: E402

install_weights_only_loader()
from .lean_loss import (LeanLossEncoderDecoder,  # noqa: E402
                        install_lean_loss, remove_lean_loss)
from .ops import CompressedConv2d, CompressionStats  # noqa: E402

__version__ = '0.1.0'

__all__ = [
    'ActivationCompressionHook', 'ActivationMemoryHook',
    'WeightsOnlyCheckpointHook', 'NonFiniteStepGuardHook', 'CompressedConv2d',
    'CompressionStats', 'LeanLossEncoderDecoder', 'install_lean_loss',
    'remove_lean_loss', '__version__'
]
