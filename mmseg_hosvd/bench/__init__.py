"""Benchmark support: one training-step path and its measurements.

* :class:`TrainingStep`: model, plugin hooks and optim wrapper built from a
  config with mmengine's builders; real ``model.train_step`` calls.
* :class:`StepProbe`: times forward/backward/optimizer step with one
  synchronised timer and meters the saved tensors, through hooks; a peak
  meter can wrap the step.
* :mod:`.configs`: the benchmarks' models and leaf configs.
* :mod:`.rows`: the benchmarks' methods, :class:`BenchmarkRow` and the
  memory benchmark's presets.
* :mod:`.arguments`: the command-line options the benchmark tools share.
* :mod:`.memory`, :mod:`.speed` (on :mod:`.layer_timing`),
  :mod:`.decomposition`: what ``tools/benchmark_memory.py``,
  ``tools/benchmark_speed.py`` and ``tools/benchmark_decomposition.py``
  run.
* :mod:`.data`: synthetic and dataset batches.
* :class:`MemoryRow`: one row of the memory benchmark (warm-up, peak
  step, timed steps run round-robin with the other rows).
* :mod:`.report`: the memory benchmark's table, CSV and plot.
* :class:`StepProbeHook`, :class:`ProgressBarHook`: the probe and a
  progress bar as Runner hooks.
"""
from ..engine.optim_wrapper import CPUBFloat16OptimWrapper
from .configs import (LEAF_EPS, MODEL_CONFIGS, SETUPS, eps_tag,
                      leaf_config_path, leaf_tag, load_leaf_config,
                      parse_leaf_tag)
from .data import (dataset_batches, dataset_config, fixed_batches,
                   folder_batch, smooth_batch, synthetic_batches)
from .hooks import ProgressBarHook, StepProbeHook
from .memory_row import MemoryRow, per_round_ratios
from .probe import StepMeasurement, StepProbe, SyncTimer
from .rows import (CHECKPOINT, DEFAULT_LEAN_BACKWARD, MEMORY_METHODS,
                   METHODS, PRESETS, BenchmarkRow, memory_rows)
from .step import (TrainingStep, amp_optim_wrapper_cfg, compression_configs,
                   quiet_logger)

__all__ = [
    'LEAF_EPS', 'MODEL_CONFIGS', 'SETUPS', 'eps_tag', 'leaf_config_path',
    'leaf_tag', 'parse_leaf_tag', 'load_leaf_config', 'CHECKPOINT',
    'DEFAULT_LEAN_BACKWARD', 'MEMORY_METHODS', 'METHODS', 'PRESETS',
    'BenchmarkRow', 'memory_rows', 'dataset_batches', 'dataset_config',
    'fixed_batches', 'folder_batch', 'smooth_batch', 'synthetic_batches',
    'ProgressBarHook', 'MemoryRow', 'per_round_ratios', 'StepProbeHook',
    'StepMeasurement', 'StepProbe', 'SyncTimer', 'CPUBFloat16OptimWrapper',
    'TrainingStep', 'amp_optim_wrapper_cfg', 'compression_configs', 'quiet_logger'
]
