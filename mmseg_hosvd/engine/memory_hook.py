import json
import math
import os.path as osp
from dataclasses import dataclass, field
from typing import Dict, List, Optional, Sequence, Tuple

import torch.nn as nn
from mmengine.dist import master_only
from mmengine.hooks import Hook
from mmengine.model import is_model_wrapper
from mmengine.registry import HOOKS

from ..ops import (MIB, CompressionStats, distinct_kept_bytes,
                   non_finite_layers)
from ..surgery import compressed_layers
from .guard_hook import NonFiniteStepGuardHook


def total_mib(stats: Dict[str, CompressionStats]) -> Tuple[float, float]:
    """(paper-count MiB, really kept MiB) summed over layers.

    The paper count adds every layer's count (an input shared by several
    convs counts once per conv, as in the paper); the kept MiB count each
    storage once (:func:`~mmseg_hosvd.ops.distinct_kept_bytes`), so factors
    shared by several convs (or a vanilla input read by several convs) are
    not counted twice.
    """
    return (sum(s.paper_bytes for s in stats.values()) / MIB,
            distinct_kept_bytes(list(stats.values())) / MIB)


@dataclass
class RunningStat:
    """Peak, mean and (population) std of a scalar series, in O(1) memory."""
    count: int = 0
    total: float = 0.0
    total_sq: float = 0.0
    peak: float = 0.0

    def add(self, value: float) -> None:
        self.count += 1
        self.total += value
        self.total_sq += value * value
        self.peak = max(self.peak, value) if self.count > 1 else value

    def summary(self) -> Dict[str, float]:
        if self.count == 0:
            return dict(peak=0.0, mean=0.0, std=0.0)
        mean = self.total / self.count
        var = max(self.total_sq / self.count - mean * mean, 0.0)
        return dict(peak=self.peak, mean=mean, std=math.sqrt(var))


@dataclass
class LayerRecord:
    """Per-layer series: paper-count MiB, kept MiB, and ranks per mode, over
    the calls with a finite input; ``non_finite`` counts the other calls."""
    method: str = ''
    input_shape: Sequence[int] = ()
    paper_mib: RunningStat = field(default_factory=RunningStat)
    kept_mib: RunningStat = field(default_factory=RunningStat)
    ranks: List[RunningStat] = field(default_factory=list)
    last_ranks: Sequence[int] = ()
    non_finite: int = 0

    def add(self, stats, non_finite: bool = False) -> None:
        self.method = stats.method
        self.input_shape = tuple(stats.input_shape)
        if non_finite:
            self.non_finite += 1
            return
        self.paper_mib.add(stats.paper_bytes / MIB)
        self.kept_mib.add(stats.kept_bytes / MIB)
        if not self.ranks:
            self.ranks = [RunningStat() for _ in stats.ranks]
        for stat, rank in zip(self.ranks, stats.ranks):
            stat.add(float(rank))
        self.last_ranks = tuple(stats.ranks)

    def summary(self) -> dict:
        return dict(
            method=self.method,
            input_shape=list(self.input_shape),
            paper_mib=self.paper_mib.summary(),
            kept_mib=self.kept_mib.summary(),
            ranks=dict(
                mean=[s.summary()['mean'] for s in self.ranks],
                peak=[s.peak for s in self.ranks],
                last=list(self.last_ranks)),
            non_finite=self.non_finite)


@HOOKS.register_module()
class ActivationMemoryHook(Hook):
    """Log the activation memory of the compressed (or counted) convs.

    After every training iteration it reads ``last_stats`` of each
    :class:`~mmseg_hosvd.ops.CompressedConv2d` installed by
    :class:`ActivationCompressionHook` and puts into the message hub, every
    ``interval`` iterations (so they reach the text log and every visualizer
    backend, e.g. TensorBoard):

    * ``act_mem_mib``: the paper's count, fp32, MiB = 2**20 bytes;
    * ``act_kept_mib``: bytes the layers really keep for backward, in MiB
      (each storage once: factors shared by several convs count once);
    * per layer (``per_layer=True``): ``act_mem_mib/<conv path>``,
      ``act_kept_mib/<conv path>`` and ``rank/<conv path>/<mode>``;
    * ``skipped_steps``: optimizer steps skipped so far for non-finite
      gradients (by :class:`~.guard_hook.NonFiniteStepGuardHook`).

    A layer whose input had NaN/Inf in an iteration
    (:attr:`~mmseg_hosvd.ops.CompressionStats.non_finite`) is counted in its
    ``non_finite`` count instead of the memory series, and such an iteration
    adds nothing to the totals (``non_finite_iterations`` counts them).

    After the run it writes ``out_file`` (JSON) to the work_dir with peak,
    mean and std over the iterations with finite inputs, per layer and in
    total, the per-layer ``non_finite`` counts, ``non_finite_iterations`` and
    ``skipped_steps``.

    Args:
        interval: logging interval in iterations (statistics use every one).
        per_layer: also log the per-layer scalars.
        out_file: file name of the summary, relative to ``work_dir``.
    """

    priority = 'NORMAL'  # before LoggerHook (BELOW_NORMAL) logs the iter
    RANK_MODES = ('batch', 'channel', 'height', 'width')

    def __init__(self,
                 interval: int = 1,
                 per_layer: bool = True,
                 out_file: str = 'activation_memory.json') -> None:
        self.interval = interval
        self.per_layer = per_layer
        self.out_file = out_file
        self.total_paper = RunningStat()
        self.total_kept = RunningStat()
        self.layers: Dict[str, LayerRecord] = {}
        self.non_finite_iterations = 0
        self.skipped_steps = 0

    def after_train_iter(self,
                         runner,
                         batch_idx: int,
                         data_batch=None,
                         outputs: Optional[dict] = None) -> None:
        """Record the iteration's stats and log them every ``interval``.

        Args:
            runner (Runner): The runner of the training process.
            batch_idx (int): The index of the current batch in the loop.
            data_batch (dict or tuple or list, optional): Data from the
                dataloader.
            outputs (dict, optional): Outputs of ``model.train_step``.
        """
        model = runner.model.module if is_model_wrapper(
            runner.model) else runner.model
        stats = self.record(model)
        self.skipped_steps = sum(
            hook.skipped_steps for hook in runner.hooks
            if isinstance(hook, NonFiniteStepGuardHook))
        if not self.every_n_train_iters(runner, self.interval):
            return
        hub = runner.message_hub
        hub.update_scalar('train/skipped_steps', self.skipped_steps)
        if not stats:
            return
        paper, kept = total_mib(stats)
        hub.update_scalar('train/act_mem_mib', paper)
        hub.update_scalar('train/act_kept_mib', kept)
        if not self.per_layer:
            return
        for path, layer_stats in stats.items():
            hub.update_scalar(f'train/act_mem_mib/{path}',
                              layer_stats.paper_bytes / MIB)
            hub.update_scalar(f'train/act_kept_mib/{path}',
                              layer_stats.kept_bytes / MIB)
            for mode, rank in zip(self.modes(layer_stats), layer_stats.ranks):
                hub.update_scalar(f'train/rank/{path}/{mode}', rank)

    def record(self, model: nn.Module) -> Dict[str, CompressionStats]:
        """Take (and clear) ``last_stats`` of every compressed layer of
        ``model`` and add them to the running summary; return them by path,
        or ``{}`` when an input was not finite (then only counted, see the
        class, and no memory scalar is logged for the iteration).
        ``after_train_iter`` calls this; benchmarks may call it directly."""
        stats = {}
        for path, conv in compressed_layers(model).items():
            if conv.last_stats is not None:
                stats[path] = conv.last_stats
                conv.last_stats = None
        if not stats:
            return stats
        bad = set(non_finite_layers(stats))
        for path, layer_stats in stats.items():
            self.layers.setdefault(path, LayerRecord()).add(
                layer_stats, non_finite=path in bad)
        if bad:
            self.non_finite_iterations += 1
            return {}
        paper, kept = total_mib(stats)
        self.total_paper.add(paper)
        self.total_kept.add(kept)
        return stats

    @classmethod
    def modes(cls, stats) -> Sequence[str]:
        return cls.RANK_MODES if len(stats.ranks) == 4 else ('rank', )

    def summary(self) -> dict:
        """Peak/mean/std over the iterations seen, per layer and in total."""
        return dict(
            unit='MiB (2**20 bytes)',
            iterations=self.total_paper.count,
            non_finite_iterations=self.non_finite_iterations,
            skipped_steps=self.skipped_steps,
            total=dict(
                paper_mib=self.total_paper.summary(),
                kept_mib=self.total_kept.summary()),
            layers={p: r.summary()
                    for p, r in self.layers.items()})

    @master_only
    def after_run(self, runner) -> None:
        """Write the summary (:meth:`summary`) to ``out_file``.

        Args:
            runner (Runner): The runner of the training process.
        """
        path = osp.join(runner.work_dir, self.out_file)
        with open(path, 'w') as f:
            json.dump(self.summary(), f, indent=2)
        runner.logger.info(f'activation memory summary written to {path}')
