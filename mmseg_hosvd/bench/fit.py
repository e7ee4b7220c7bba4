"""Fit a fine-tune into a memory budget (``tools/fit_memory.py``).

:func:`fit_memory` measures the candidate configurations of a plugin config
(:mod:`.fit_candidates`) with the project's peak meter on the real model and
real or synthetic batches, each at micro-batches ``1, ..., B`` (the divisors
of the effective batch ``B``, through gradient accumulation), smallest
first, and stops measuring a candidate once a micro-batch does not fit;
:func:`choose` then picks the fastest measured configuration whose total is
at most the budget less the margin. Measuring (:func:`measure_candidates`)
and choosing are separate: :func:`fit_budgets` measures once, up to the
largest of several budgets, and chooses for each.

The total of a configuration is tensor memory as the allocator sees it
(bytes): what is held between steps
(:func:`~mmseg_hosvd.engine.tensor_memory_hook.held_bytes`: parameters,
buffers, optimizer state, the ``asi`` bases, after a warm-up step) plus
the effective step's peak above that (:attr:`~.memory_row.MemoryRow.peak_bytes`: activations,
gradients, temporaries). On CUDA it is ``max_memory_allocated`` during a
step above what was allocated before the configuration was built.
"""
import dataclasses
import gc
from typing import Callable, Iterator, List, Optional, Sequence, Tuple

import torch

from ..engine.tensor_memory_hook import held_bytes
from ..ops import MIB
from .data import dataset_batches, synthetic_batches
from .fit_candidates import (Candidate, HookSite, default_candidates,
                             find_compression_hook, hook_entry, with_hook)
from .memory_row import MemoryRow

Crop = Tuple[int, int]


@dataclasses.dataclass
class Measurement:
    """One candidate at one micro-batch. Sizes in bytes, times in seconds.

    ``total_bytes`` is None when the device ran out of memory."""
    candidate: Candidate
    micro_batch: int
    accumulative_counts: int
    held_bytes: Optional[int]
    peak_bytes: Optional[int]
    total_bytes: Optional[int]
    seconds_per_batch: Optional[float]

    def fits(self, limit_bytes: float) -> bool:
        return self.total_bytes is not None and self.total_bytes <= limit_bytes

    def describe(self) -> str:
        """``'<candidate>, micro-batch m x k'``."""
        return (f'{self.candidate.name}, micro-batch {self.micro_batch} x '
                f'{self.accumulative_counts}')


class BudgetTooSmall(RuntimeError):
    """No measured configuration fits the budget less the margin.

    Attributes:
        lowest: the measured configuration with the lowest total (None if
            every one ran out of memory).
        limit_bytes: the budget less the margin.
        tried: every configuration measured.
    """

    def __init__(self, limit_bytes: float, lowest: Optional[Measurement],
                 tried: Sequence[Measurement] = ()) -> None:
        self.limit_bytes = limit_bytes
        self.lowest = lowest
        self.tried = list(tried)
        found = ('every configuration ran out of memory' if lowest is None
                 else f'the lowest measured total is '
                 f'{lowest.total_bytes / MIB:.1f} MiB ({lowest.describe()})')
        super().__init__(f'no configuration fits in {limit_bytes / MIB:.1f} '
                         f'MiB (budget less margin): {found}')


@dataclasses.dataclass
class FitResult:
    """The answer for one budget: the choice (None, with ``error``, when
    nothing fits) and every configuration tried, in measuring order."""
    choice: Optional[Measurement]
    tried: List[Measurement]
    budget_bytes: int
    margin_bytes: int
    batch_size: int
    crop: Crop
    device: torch.device
    error: Optional[BudgetTooSmall] = None


def choose(tried: Sequence[Measurement], limit_bytes: float) -> Measurement:
    """The fastest configuration of ``tried`` whose total is at most
    ``limit_bytes`` (ties: the smaller total).

    Raises:
        BudgetTooSmall: none fits (with the lowest total measured).
    """
    fitting = [m for m in tried
               if m.fits(limit_bytes) and m.seconds_per_batch is not None]
    if fitting:
        return min(fitting,
                   key=lambda m: (m.seconds_per_batch, m.total_bytes))
    measured = [m for m in tried if m.total_bytes is not None]
    lowest = min(measured, key=lambda m: m.total_bytes, default=None)
    raise BudgetTooSmall(limit_bytes, lowest, tried)


def divisors(batch_size: int) -> List[int]:
    """The micro-batches of an effective batch, smallest first."""
    return [m for m in range(1, batch_size + 1) if batch_size % m == 0]


@dataclasses.dataclass
class FitSetup:
    """How candidates are measured (see :func:`fit_memory`)."""
    device: torch.device
    batch_size: int
    crop: Crop
    checkpoint: Optional[str] = None
    data_root: Optional[str] = None
    seed: int = 0
    timed_steps: int = 1

    def batches(self, cfg) -> Iterator[dict]:
        if self.data_root is None:
            return synthetic_batches(self.batch_size, self.crop,
                                     cfg.model.decode_head.num_classes,
                                     self.seed)
        return dataset_batches(cfg, self.data_root, self.crop,
                               self.batch_size, self.seed)


def measurement_config(cfg, site: HookSite, candidate: Candidate,
                       crop: Crop):
    """``cfg`` with the candidate's hook entry, the data preprocessor at
    ``crop`` and an ``activation_memory`` entry in ``default_hooks``
    (where :class:`~.memory_row.MemoryRow` reads it)."""
    _, entry = find_compression_hook(cfg)
    cfg = with_hook(cfg, site, hook_entry(entry, candidate))
    cfg.model.data_preprocessor.size = tuple(crop)
    if 'activation_memory' not in (cfg.get('default_hooks') or {}):
        cfg.default_hooks = dict(cfg.get('default_hooks') or {},
                                 activation_memory=dict(
                                     type='ActivationMemoryHook'))
    return cfg


def measure(cfg, site: HookSite, candidate: Candidate, micro_batch: int,
            setup: FitSetup) -> Measurement:
    """One candidate at one micro-batch: build, warm up, meter, time."""
    device = setup.device
    counts = setup.batch_size // micro_batch
    cfg = measurement_config(cfg, site, candidate, setup.crop)
    result = Measurement(candidate, micro_batch, counts, None, None, None,
                         None)
    cuda = device.type == 'cuda'
    gc.collect()
    if cuda:
        torch.cuda.empty_cache()
        baseline = torch.cuda.memory_allocated(device)
    run = None
    try:
        run = MemoryRow(cfg, setup.batches(cfg), device,
                        checkpoint=setup.checkpoint, amp=candidate.amp,
                        seed=setup.seed,
                        micro_batch=micro_batch if counts > 1 else None)
        run.warm_up()
        result.held_bytes = held_bytes(run.step.model,
                                       run.step.optim_wrapper.optimizer)
        result.peak_bytes = run.peak_bytes
        times, cuda_total = [], 0
        for _ in range(setup.timed_steps):
            times.append(run.timed_step().step_s)
            if cuda:
                cuda_total = max(cuda_total, torch.cuda.max_memory_allocated(
                    device) - baseline)
        result.seconds_per_batch = min(times)
        result.total_bytes = (cuda_total if cuda else
                              result.held_bytes + result.peak_bytes)
    except torch.cuda.OutOfMemoryError:
        result.total_bytes = result.seconds_per_batch = None
    finally:
        if run is not None:
            run.close()
        del run
    return result


def measure_candidates(cfg, candidates: Sequence[Candidate],
                       setup: FitSetup,
                       limit_bytes: float = float('inf'),
                       progress: Optional[Callable[[Measurement], None]]
                       = None) -> List[Measurement]:
    """Every candidate at micro-batches ``1, ..., batch_size`` (divisors),
    smallest first, until one does not fit in ``limit_bytes`` (or runs out
    of memory): larger ones with accumulation would not fit either. The
    whole batch (no accumulation) is then still measured: accumulating
    holds a gradient-sized sum beside each new gradient, so where the
    trainable parameters' gradients outweigh the activations (small crops)
    the whole batch can need less than one sample accumulated.
    ``progress`` gets each measurement."""
    site, _ = find_compression_hook(cfg)
    whole = setup.batch_size
    tried = []

    def measured(candidate: Candidate, micro_batch: int) -> Measurement:
        tried.append(measure(cfg, site, candidate, micro_batch, setup))
        if progress is not None:
            progress(tried[-1])
        return tried[-1]

    for candidate in candidates:
        for micro_batch in divisors(whole):
            if not measured(candidate, micro_batch).fits(limit_bytes):
                if micro_batch != whole:  # see the docstring
                    measured(candidate, whole)
                break
    return tried


def default_crop(cfg) -> Crop:
    """The config's ``model.data_preprocessor.size`` (H, W).

    Raises:
        ValueError: the config sets none.
    """
    size = (cfg.model.get('data_preprocessor') or {}).get('size')
    if size is None:
        raise ValueError(f'{cfg.filename}: model.data_preprocessor.size is '
                         'not set; give the crop (H, W)')
    return tuple(size)


def fit_budgets(cfg, budgets_mib: Sequence[float], device='cpu',
                batch_size: Optional[int] = None,
                crop: Optional[Crop] = None,
                checkpoint: Optional[str] = None,
                data_root: Optional[str] = None,
                margin_mib: Optional[float] = None,
                candidates: Optional[Sequence[Candidate]] = None,
                progress: Optional[Callable[[Measurement], None]] = None
                ) -> List[FitResult]:
    """Measure the candidates of ``cfg`` (a plugin config: one
    ``ActivationCompressionHook`` entry) once, up to the largest budget,
    and choose the fastest that fits each budget.

    Args:
        cfg: mmengine ``Config``.
        budgets_mib: the tensor memory available (MiB = 2**20 bytes), one
            or more budgets.
        device: where to measure (and train).
        batch_size: the effective batch (default: the config's
            ``train_dataloader.batch_size``).
        crop: (H, W) of the batches (default: the data preprocessor's size).
        checkpoint: weights to start from (default: random).
        data_root: a VOC-layout tree read with the config's pipeline
            (default: synthetic batches).
        margin_mib: kept free of every budget (default: 5 % of each).
        candidates: default: :func:`~.fit_candidates.default_candidates`.

    Returns:
        one :class:`FitResult` per budget, in order; where nothing fits,
        its ``choice`` is None and ``error`` says what came closest.

    Raises:
        ValueError: no compression hook, no batch size, bad budget/margin.
    """
    device = torch.device(device)
    _, entry = find_compression_hook(cfg)
    if batch_size is None:
        batch_size = (cfg.get('train_dataloader') or {}).get('batch_size')
        if batch_size is None:
            raise ValueError(f'{cfg.filename}: train_dataloader.batch_size '
                             'is not set; give the batch size')
    if not budgets_mib:
        raise ValueError('no budget given')
    margins = [0.05 * b if margin_mib is None else margin_mib
               for b in budgets_mib]
    for budget, margin in zip(budgets_mib, margins):
        if budget <= 0 or margin < 0 or margin >= budget:
            raise ValueError(f'budget {budget} MiB, margin {margin} MiB:'
                             ' expected budget > margin >= 0')
    setup = FitSetup(device, batch_size, tuple(crop or default_crop(cfg)),
                     checkpoint, data_root,
                     (cfg.get('randomness') or {}).get('seed', 0))
    if candidates is None:
        candidates = default_candidates(entry, cfg, device)
    limits = [(b - m) * MIB for b, m in zip(budgets_mib, margins)]
    tried = measure_candidates(cfg, candidates, setup, max(limits), progress)
    results = []
    for budget, margin, limit in zip(budgets_mib, margins, limits):
        result = FitResult(None, tried, int(budget * MIB), int(margin * MIB),
                           batch_size, setup.crop, device)
        try:
            result.choice = choose(tried, limit)
        except BudgetTooSmall as error:
            result.error = error
        results.append(result)
    return results


def fit_memory(cfg, budget_mib: float, device='cpu',
               **options) -> FitResult:
    """:func:`fit_budgets` for one budget (same options).

    Raises:
        ValueError: as :func:`fit_budgets`.
        BudgetTooSmall: nothing fits (with the lowest total measured).
    """
    result, = fit_budgets(cfg, [budget_mib], device, **options)
    if result.error is not None:
        raise result.error
    return result
