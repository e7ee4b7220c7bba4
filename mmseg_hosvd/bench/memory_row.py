"""One row of the memory benchmark: a training step and what it measured.

:class:`MemoryRow` owns a :class:`~.step.TrainingStep` built from a config,
its batches and its meters. The memory benchmark builds every row of one
model and setup first (:meth:`MemoryRow.warm_up`: one warm-up step, then
one untimed step inside a :class:`~mmseg_hosvd.peak_memory.PeakMemoryMeter`
for ``step_peak_mib``), then times them round-robin
(:meth:`MemoryRow.timed_step`, one row after the other in each round), so
that a load that drifts during the run slows every row alike; the per-round
time ratios (:func:`per_round_ratios`) are then comparable within a table.
"""
import copy
import statistics
from typing import Any, Dict, Iterator, List, Optional, Sequence

import torch

from ..checkpointing import CheckpointedModule
from ..peak_memory import PeakMemoryMeter
from .anatomy import PeakAnatomy, peak_anatomy
from .data import split_batch
from .probe import StepMeasurement, StepProbe
from .step import TrainingStep


class MemoryRow:
    """A training step of one benchmark row, measured step by step.

    Args:
        cfg: the row's mmengine ``Config`` (plugin hooks keyed in
            ``default_hooks``, ``activation_memory`` among them).
        batches: the row's data batches (one per step).
        device: where the step runs.
        checkpoint: weights to start from, or None (random).
        amp: mixed precision (see :meth:`TrainingStep.from_config`).
        seed: the model's initialisation seed.
        activation_checkpointing: ``'block'``/``'segment'``, or None.
        micro_batch: run each batch as micro-batches of this many samples
            through gradient accumulation (None: the whole batch in one
            ``train_step``); the peak and the times are then those of the
            effective batch: from its first micro-batch's forward to the
            optimizer step, gradients kept in between included.

    Attributes:
        seed: the initialisation seed.
        step: the :class:`TrainingStep`.
        peak_bytes: the warm-up's peak step, bytes above what was held.
        measurements: one :class:`StepMeasurement` per timed step.
        cuda_peaks: CUDA only: each timed step's
            ``max_memory_allocated`` above what was allocated before it
            (bytes; other rows' models, resident, are not counted).
        last_stats: the compressed layers' statistics of the last timed
            step, by path.
    """

    def __init__(self, cfg, batches: Iterator[dict], device: torch.device,
                 checkpoint: Optional[str] = None, amp: bool = False,
                 seed: int = 0,
                 activation_checkpointing: Optional[str] = None,
                 micro_batch: Optional[int] = None) -> None:
        self.cfg = cfg
        self.micro_batch = micro_batch
        self.seed = seed
        self.batches = batches
        self.device = device
        # the first batch, read ahead: how many micro-batches it makes
        first = next(batches)
        counts = 1 if micro_batch is None else len(
            split_batch(first, micro_batch))
        self._first: Optional[dict] = first
        self.step = TrainingStep.from_config(
            cfg, device, checkpoint=checkpoint, amp=amp, seed=seed,
            init_weights=False,
            activation_checkpointing=activation_checkpointing,
            accumulative_counts=counts)
        # no graph walk through checkpointed modules (this argument's or
        # the hook's activation_checkpointing): reading their saved
        # tensors would run the recomputation there, outside backward
        checkpointed = any(isinstance(module, CheckpointedModule)
                           for module in self.step.model.modules())
        self.probe = StepProbe(self.step.model,
                               self.step.optim_wrapper.optimizer,
                               self.step.trainable_parameters(),
                               self.step.state_tensors(), device,
                               breakdown=not checkpointed)
        self.peak_bytes: Optional[int] = None
        self.measurements: List[StepMeasurement] = []
        self.cuda_peaks: List[int] = []
        self.last_stats: Dict[str, Any] = {}
        self._memory_hook = None

    @property
    def installed(self) -> Dict[str, Any]:
        """The compressed (or counted) layers, by path."""
        return self.step.installed

    def _next_batch(self) -> dict:
        data, self._first = self._first, None
        return next(self.batches) if data is None else data

    def _effective_step(self, data: dict) -> None:
        """One optimizer step on ``data``: one ``train_step``, or one per
        micro-batch."""
        if self.micro_batch is None:
            self.step.run(data)
        else:
            self.step.run_accumulated(split_batch(data, self.micro_batch))

    def _run(self) -> StepMeasurement:
        data = self._next_batch()
        with self.probe:
            return self.probe.measure(lambda: self._effective_step(data))

    def warm_up(self) -> None:
        """One warm-up step (optimizer state created), then the peak of one
        whole step (:attr:`peak_bytes`, untimed: the CPU meter's profiler
        slows the step)."""
        from mmengine.registry import HOOKS
        self._run()
        data = self._next_batch()
        meter = PeakMemoryMeter(self.device)
        with meter:
            self._effective_step(data)
        del data
        self.peak_bytes = int(meter.peak_bytes)
        hook_cfg = self.cfg.default_hooks.activation_memory
        # the warm-up's statistics go to a throwaway hook
        HOOKS.build(copy.deepcopy(hook_cfg)).record(self.step.model)
        self._memory_hook = HOOKS.build(copy.deepcopy(hook_cfg))

    def anatomy(self) -> PeakAnatomy:
        """One more (untimed) effective step, profiled: what is live at its
        peak (:func:`~.anatomy.peak_anatomy`)."""
        data = self._next_batch()
        return peak_anatomy(lambda: self._effective_step(data),
                            self.step.model,
                            self.step.optim_wrapper.optimizer, self.device)

    def timed_step(self) -> StepMeasurement:
        """One timed and metered step; its layer statistics are recorded.

        Raises:
            RuntimeError: before :meth:`warm_up`, or when an installed
                layer recorded nothing (it ran without grad).
        """
        if self._memory_hook is None:
            raise RuntimeError('MemoryRow: call warm_up() first')
        cuda = self.device.type == 'cuda'
        if cuda:
            torch.cuda.reset_peak_memory_stats(self.device)
            before = torch.cuda.memory_allocated(self.device)
        measured = self._run()
        if cuda:
            self.cuda_peaks.append(
                torch.cuda.max_memory_allocated(self.device) - before)
        stats = self._memory_hook.record(self.step.model)
        missing = set(self.installed) - set(stats)
        if missing:
            raise RuntimeError(f'no statistics from {sorted(missing)} (did '
                               'they run with grad enabled?)')
        self.last_stats = stats
        self.measurements.append(measured)
        return measured

    def memory_summary(self) -> dict:
        """The :class:`~mmseg_hosvd.engine.ActivationMemoryHook` summary of
        the timed steps."""
        return self._memory_hook.summary()

    def close(self) -> None:
        """Drop the model, optimizer state and meters."""
        self.step = self.probe = self._memory_hook = None
        self.measurements = []
        if self.device.type == 'cuda':
            torch.cuda.empty_cache()


def per_round_ratios(times: Sequence[Sequence[float]],
                     reference: int = 0) -> List[Optional[float]]:
    """Median over rounds of each row's step time divided by the
    ``reference`` row's time in the same round.

    Args:
        times: ``times[row][round]`` in seconds, every row the same number
            of rounds.

    Returns:
        One ratio per row (None for a row without rounds).
    """
    base = times[reference]
    ratios: List[Optional[float]] = []
    for row in times:
        pairs = [t / b for t, b in zip(row, base) if b > 0]
        ratios.append(statistics.median(pairs) if pairs else None)
    return ratios
