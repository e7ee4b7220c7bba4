"""Layer 4: the mmengine hooks, registered in mmengine's ``HOOKS``.

This package is what a config's ``custom_imports`` names
(``custom_imports = dict(imports=['mmseg_hosvd.engine'], ...)``): importing
it first runs :func:`mmseg_hosvd.compat.prepare_mmseg` (mmcv version
check, then the documented ``mmcv.ops`` fallback), then imports the
hooks and the CPU mixed-precision optim wrapper, which registers them, and
makes mmengine load local and ``http(s)://`` checkpoints with
``torch.load(weights_only=True)``, explicitly, whatever torch's default (:func:`.weights_only.install_weights_only_loader`).
"""
from ..compat import prepare_mmseg

prepare_mmseg()

from .checkpoint_hook import WeightsOnlyCheckpointHook  # noqa: E402
from .compression_hook import ActivationCompressionHook  # noqa: E402
from .guard_hook import NonFiniteStepGuardHook  # noqa: E402
from .memory_hook import ActivationMemoryHook  # noqa: E402
from .optim_wrapper import CPUBFloat16OptimWrapper  # noqa: E402
from .tensor_memory_hook import TensorMemoryHook  # noqa: E402
from .weights_only import install_weights_only_loader  # noqa: E402

install_weights_only_loader()

__all__ = [
    'ActivationCompressionHook', 'ActivationMemoryHook',
    'WeightsOnlyCheckpointHook', 'NonFiniteStepGuardHook',
    'CPUBFloat16OptimWrapper', 'TensorMemoryHook'
]
