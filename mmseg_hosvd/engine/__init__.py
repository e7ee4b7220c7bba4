from .checkpoint_hook import WeightsOnlyCheckpointHook
from .compression_hook import ActivationCompressionHook
from .guard_hook import NonFiniteStepGuardHook
from .memory_hook import ActivationMemoryHook

__all__ = [
    'ActivationCompressionHook', 'ActivationMemoryHook',
    'WeightsOnlyCheckpointHook', 'NonFiniteStepGuardHook'
]
