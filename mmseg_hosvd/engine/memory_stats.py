"""Running statistics of :class:`~.memory_hook.ActivationMemoryHook`.

Every class merges (ranks of a DDP run, the part of a run before a
``--resume``) and round-trips through plain dicts of numbers and lists
(``state`` / ``from_state``), which a ``weights_only=True`` checkpoint holds.
"""
import math
from dataclasses import dataclass, field
from typing import Dict, Iterable, List, Sequence, Set

from ..ops import MIB


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

    def merge(self, other: 'RunningStat') -> None:
        """Add the samples of ``other`` (as if ``add`` had seen them)."""
        if other.count == 0:
            return
        self.peak = max(self.peak, other.peak) if self.count else other.peak
        self.count += other.count
        self.total += other.total
        self.total_sq += other.total_sq

    def summary(self) -> Dict[str, float]:
        if self.count == 0:
            return dict(peak=0.0, mean=0.0, std=0.0)
        mean = self.total / self.count
        var = max(self.total_sq / self.count - mean * mean, 0.0)
        return dict(peak=self.peak, mean=mean, std=math.sqrt(var))

    def state(self) -> dict:
        return dict(count=self.count, total=self.total,
                    total_sq=self.total_sq, peak=self.peak)

    @classmethod
    def from_state(cls, state: dict) -> 'RunningStat':
        return cls(int(state['count']), float(state['total']),
                   float(state['total_sq']), float(state['peak']))


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
        self.last_ranks = tuple(int(rank) for rank in stats.ranks)

    def merge(self, other: 'LayerRecord') -> None:
        """Add the calls of ``other`` (a later part of the run, or another
        rank: its method, shape and last ranks win when it has any)."""
        if other.method:
            self.method, self.input_shape = other.method, other.input_shape
        self.paper_mib.merge(other.paper_mib)
        self.kept_mib.merge(other.kept_mib)
        if not self.ranks:
            self.ranks = [RunningStat() for _ in other.ranks]
        for stat, rank in zip(self.ranks, other.ranks):
            stat.merge(rank)
        self.last_ranks = other.last_ranks or self.last_ranks
        self.non_finite += other.non_finite

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

    def state(self) -> dict:
        return dict(method=self.method, input_shape=list(self.input_shape),
                    paper_mib=self.paper_mib.state(),
                    kept_mib=self.kept_mib.state(),
                    ranks=[s.state() for s in self.ranks],
                    last_ranks=list(self.last_ranks),
                    non_finite=self.non_finite)

    @classmethod
    def from_state(cls, state: dict) -> 'LayerRecord':
        return cls(state['method'], tuple(state['input_shape']),
                   RunningStat.from_state(state['paper_mib']),
                   RunningStat.from_state(state['kept_mib']),
                   [RunningStat.from_state(s) for s in state['ranks']],
                   tuple(state['last_ranks']), int(state['non_finite']))


@dataclass
class MemoryTotals:
    """Everything the report sums, for one rank or merged.

    ``recorded`` counts the training iterations with stats (1-based
    numbers: the iteration ``k`` recorded is number ``k``);
    ``non_finite_at`` holds the numbers of those with a non-finite input
    somewhere (so merging ranks counts an iteration once); ``total_paper``
    / ``total_kept`` have one sample per rank and finite iteration.
    """
    recorded: int = 0
    non_finite_at: Set[int] = field(default_factory=set)
    skipped_steps: int = 0
    total_paper: RunningStat = field(default_factory=RunningStat)
    total_kept: RunningStat = field(default_factory=RunningStat)
    layers: Dict[str, LayerRecord] = field(default_factory=dict)

    @classmethod
    def merged(cls, parts: Iterable['MemoryTotals'],
               sequential: bool) -> 'MemoryTotals':
        """Merge ``parts``: one after another in time (``sequential``: the
        run before and after a resume) or side by side (ranks of one run:
        iterations and skipped steps are shared, not added)."""
        out = cls()
        for part in parts:
            if sequential:
                out.non_finite_at |= {out.recorded + k
                                      for k in part.non_finite_at}
                out.recorded += part.recorded
                out.skipped_steps += part.skipped_steps
            else:
                out.non_finite_at |= part.non_finite_at
                out.recorded = max(out.recorded, part.recorded)
                out.skipped_steps = max(out.skipped_steps,
                                        part.skipped_steps)
            out.total_paper.merge(part.total_paper)
            out.total_kept.merge(part.total_kept)
            for path, record in part.layers.items():
                out.layers.setdefault(path, LayerRecord()).merge(record)
        return out

    def state(self) -> dict:
        return dict(recorded=self.recorded,
                    non_finite_at=sorted(self.non_finite_at),
                    skipped_steps=self.skipped_steps,
                    total_paper=self.total_paper.state(),
                    total_kept=self.total_kept.state(),
                    layers={p: r.state() for p, r in self.layers.items()})

    @classmethod
    def from_state(cls, state: dict) -> 'MemoryTotals':
        return cls(int(state['recorded']),
                   {int(k) for k in state['non_finite_at']},
                   int(state['skipped_steps']),
                   RunningStat.from_state(state['total_paper']),
                   RunningStat.from_state(state['total_kept']),
                   {p: LayerRecord.from_state(r)
                    for p, r in state['layers'].items()})
