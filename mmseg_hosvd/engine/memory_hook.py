"""The activation-memory hook: scalars every iteration, a JSON report that
survives ``--resume`` and sums every rank of a DDP run."""
import json
import os
import os.path as osp
import tempfile
from typing import Dict, Optional, Sequence, Tuple

import torch.nn as nn
from mmengine.dist import is_main_process
from mmengine.hooks import Hook
from mmengine.model import is_model_wrapper
from mmengine.registry import HOOKS

from ..ops import (MIB, CompressionStats, distinct_kept_bytes,
                   non_finite_layers)
from ..surgery import compressed_layers
from .distributed import all_ranks_objects, distributed
from .guard_hook import NonFiniteStepGuardHook
from .memory_stats import LayerRecord, MemoryTotals, RunningStat

__all__ = ['ActivationMemoryHook', 'LayerRecord', 'RunningStat', 'total_mib']

#: key of the hook's running totals in a checkpoint (plain numbers/lists)
CHECKPOINT_KEY = 'activation_memory'


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


@HOOKS.register_module()
class ActivationMemoryHook(Hook):
    """Log the activation memory of the compressed (or counted) convs.

    After every training iteration it reads ``last_stats`` of each
    :class:`~mmseg_hosvd.ops.CompressedConv2d` installed by
    :class:`ActivationCompressionHook` and puts into the message hub, every
    ``interval`` iterations (so they reach the text log and every visualizer
    backend, e.g. TensorBoard), this rank's:

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

    After the run rank 0 writes ``out_file`` (JSON; checked writable in
    ``before_run``, replaced atomically) to the work_dir with peak, mean and
    std over the iterations with finite inputs, per layer and in total, the
    per-layer ``non_finite`` counts, ``non_finite_iterations`` and
    ``skipped_steps``. The running totals go into every checkpoint
    (``checkpoint['activation_memory']``), so a ``--resume``d run reports
    the whole run. Under DDP the report covers every rank: an iteration is
    non-finite if its input was on any rank, the memory series have one
    sample per rank and finite iteration, ``non_finite`` counts the calls
    of every rank (one ``all_gather_object`` of the totals per iteration).

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
        if not isinstance(out_file, str) or not out_file.strip():
            raise ValueError(f'{type(self).__name__}: out_file must be a '
                             f'file name, got {out_file!r}')
        self.interval = interval
        self.per_layer = per_layer
        self.out_file = out_file
        self.resumed = MemoryTotals()  # all ranks, before the resume
        self.local = MemoryTotals()  # this rank, since the (re)start
        self.all_ranks = self.local  # merged over ranks, see after_train_iter
        self.world_size = 1
        self._loaded: Optional[MemoryTotals] = None

    def before_run(self, runner) -> None:
        """Check that ``out_file`` can be written (rank 0), so a typo fails
        now rather than after training.

        Args:
            runner (Runner): The runner of the training process.
        """
        if is_main_process():
            check_writable(self.report_path(runner), type(self).__name__)

    def before_train(self, runner) -> None:
        """Continue from the loaded checkpoint's totals when resuming.

        Args:
            runner (Runner): The runner of the training process.
        """
        if self._loaded is not None and runner.iter > 0:
            self.resumed = self._loaded
        self._loaded = None

    def after_load_checkpoint(self, runner, checkpoint: dict) -> None:
        """Keep the checkpoint's totals (used if the run resumes from it).

        Args:
            runner (Runner): The runner of the training process.
            checkpoint (dict): The loaded checkpoint.
        """
        state = checkpoint.get(CHECKPOINT_KEY)
        self._loaded = (MemoryTotals.from_state(state)
                        if state is not None else None)

    def before_save_checkpoint(self, runner, checkpoint: dict) -> None:
        """Store the running totals of every rank so far (rank 0 saves).

        Args:
            runner (Runner): The runner of the training process.
            checkpoint (dict): The checkpoint about to be saved.
        """
        checkpoint[CHECKPOINT_KEY] = self.totals().state()

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
        self.local.skipped_steps = sum(
            hook.skipped_steps for hook in runner.hooks
            if isinstance(hook, NonFiniteStepGuardHook))
        self.gather_ranks()
        if not self.every_n_train_iters(runner, self.interval):
            return
        hub = runner.message_hub
        hub.update_scalar('train/skipped_steps', self.totals().skipped_steps)
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
        ``model`` and add them to this rank's running totals; return them by
        path, or ``{}`` when an input was not finite (then only counted, see
        the class, and no memory scalar is logged for the iteration).
        ``after_train_iter`` calls this; benchmarks may call it directly."""
        stats = {}
        for path, conv in compressed_layers(model).items():
            if conv.last_stats is not None:
                stats[path] = conv.last_stats
                conv.last_stats = None
        if not stats:
            return stats
        local = self.local
        local.recorded += 1
        bad = set(non_finite_layers(stats))
        for path, layer_stats in stats.items():
            local.layers.setdefault(path, LayerRecord()).add(
                layer_stats, non_finite=path in bad)
        if bad:
            local.non_finite_at.add(local.recorded)
            return {}
        paper, kept = total_mib(stats)
        local.total_paper.add(paper)
        local.total_kept.add(kept)
        return stats

    def gather_ranks(self) -> None:
        """Merge every rank's totals into :attr:`all_ranks` (a collective
        under DDP: every rank calls it once per iteration; the identity in
        one process)."""
        if not distributed():
            self.all_ranks = self.local
            return
        parts = all_ranks_objects(self.local)
        self.world_size = len(parts)
        self.all_ranks = MemoryTotals.merged(parts, sequential=False)

    def totals(self) -> MemoryTotals:
        """The whole run so far: before the resume, then every rank since
        (as of the last :meth:`gather_ranks`; this rank's in one process)."""
        return MemoryTotals.merged((self.resumed, self.all_ranks),
                                   sequential=True)

    @classmethod
    def modes(cls, stats) -> Sequence[str]:
        return cls.RANK_MODES if len(stats.ranks) == 4 else ('rank', )

    def summary(self) -> dict:
        """Peak/mean/std over the iterations seen, per layer and in total."""
        totals = self.totals()
        non_finite = len(totals.non_finite_at)
        return dict(
            unit='MiB (2**20 bytes)',
            iterations=totals.recorded - non_finite,
            non_finite_iterations=non_finite,
            skipped_steps=totals.skipped_steps,
            ranks=self.world_size,
            total=dict(
                paper_mib=totals.total_paper.summary(),
                kept_mib=totals.total_kept.summary()),
            layers={p: r.summary()
                    for p, r in totals.layers.items()})

    def report_path(self, runner) -> str:
        """``out_file`` in the runner's work_dir."""
        return osp.join(runner.work_dir, self.out_file)

    def after_run(self, runner) -> None:
        """Write the summary (:meth:`summary`) to ``out_file`` (rank 0).

        Args:
            runner (Runner): The runner of the training process.
        """
        if not is_main_process():
            return
        path = self.report_path(runner)
        write_atomically(path, json.dumps(self.summary(), indent=2),
                         type(self).__name__)
        runner.logger.info(f'activation memory summary written to {path}')


def check_writable(path: str, owner: str) -> None:
    """Raise ValueError naming ``owner`` and ``out_file`` unless a file can
    be created next to ``path`` (and ``path`` is not a directory)."""
    directory = osp.dirname(path) or '.'
    problem = None
    if osp.isdir(path):
        problem = 'it is a directory'
    elif not osp.isdir(directory):
        problem = f'directory {directory!r} does not exist'
    else:
        try:
            fd, probe = tempfile.mkstemp(dir=directory, suffix='.tmp')
            os.close(fd)
            os.remove(probe)
        except OSError as error:
            problem = f'cannot create a file there ({error})'
        if problem is None and osp.exists(path) and not os.access(
                path, os.W_OK):
            problem = 'the existing file is read-only'
    if problem:
        raise ValueError(f'{owner}: out_file {path!r} is not writable: '
                         f'{problem}')


def write_atomically(path: str, text: str, owner: str) -> None:
    """Write ``text`` to a temporary file next to ``path`` and
    ``os.replace`` it over ``path``: ``path`` is either its old content or
    ``text``, never truncated. OSError naming ``owner`` and ``out_file``."""
    directory = osp.dirname(path) or '.'
    temp = None
    try:
        fd, temp = tempfile.mkstemp(
            dir=directory, prefix=f'.{osp.basename(path)}.', suffix='.tmp')
        with os.fdopen(fd, 'w') as f:
            f.write(text)
            f.flush()
            os.fsync(f.fileno())
        os.chmod(temp, 0o644)
        os.replace(temp, path)
    except OSError as error:
        if temp is not None and osp.exists(temp):
            os.remove(temp)
        raise OSError(f'{owner}: could not write out_file {path!r} '
                      f'({error}); the checkpoints are saved, this report '
                      f'is not') from error
