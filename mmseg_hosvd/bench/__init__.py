"""Benchmark support: one training-step path and its measurements.

* :class:`TrainingStep`: model, plugin hooks and optim wrapper built from a
  config with mmengine's builders; real ``model.train_step`` calls.
* :class:`StepProbe`: times forward/backward/optimizer step with one
  synchronised timer and meters the saved tensors, through hooks; a peak
  meter can wrap the step.
* :mod:`.configs`: the benchmarks' models and leaf configs.
* :mod:`.data`: synthetic and dataset batches.
* :class:`MemoryRow`: one row of the memory benchmark (warm-up, peak
  step, timed steps run round-robin with the other rows).
* :mod:`.report`: the memory benchmark's table, CSV and plot.
* :class:`StepProbeHook`, :class:`ProgressBarHook`: the probe and a
  progress bar as Runner hooks.
"""
from .configs import (LEAF_EPS, MODEL_CONFIGS, SETUPS, eps_tag,
                      leaf_config_path, load_leaf_config)
from .data import (dataset_batches, dataset_config, fixed_batches,
                   folder_batch, smooth_batch, synthetic_batches)
from .hooks import ProgressBarHook, StepProbeHook
from .memory_row import MemoryRow, per_round_ratios
from .probe import StepMeasurement, StepProbe, SyncTimer
from .step import (CPUBFloat16OptimWrapper, TrainingStep,
                   amp_optim_wrapper_cfg, compression_configs, quiet_logger)

__all__ = [
    'LEAF_EPS', 'MODEL_CONFIGS', 'SETUPS', 'eps_tag', 'leaf_config_path',
    'load_leaf_config', 'dataset_batches', 'dataset_config', 'fixed_batches',
    'folder_batch', 'smooth_batch', 'synthetic_batches', 'ProgressBarHook',
    'MemoryRow', 'per_round_ratios',
    'StepProbeHook', 'StepMeasurement',
    'StepProbe', 'SyncTimer', 'CPUBFloat16OptimWrapper', 'TrainingStep',
    'amp_optim_wrapper_cfg', 'compression_configs', 'quiet_logger'
]
