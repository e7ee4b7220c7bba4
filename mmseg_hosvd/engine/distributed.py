"""Aggregate diagnostics over the ranks of a DDP run.

Each function is a collective when ``torch.distributed`` is initialised
(every rank must call it, in the same order) and the identity in a single
process. Objects travel through ``all_gather_object``, which works on every
backend (gloo on CPU, NCCL on GPU).
"""
from typing import Any, Hashable, Iterable, List

import torch.distributed as dist


def distributed() -> bool:
    """Whether a process group with more than one rank is running."""
    return (dist.is_available() and dist.is_initialized()
            and dist.get_world_size() > 1)


def all_ranks_objects(obj: Any) -> List[Any]:
    """``obj`` of every rank, in rank order (``[obj]`` in one process);
    ``obj`` must be picklable."""
    if not distributed():
        return [obj]
    gathered: List[Any] = [None] * dist.get_world_size()
    dist.all_gather_object(gathered, obj)
    return gathered


def all_ranks_sum(value: float) -> float:
    """``value`` summed over the ranks."""
    return sum(all_ranks_objects(value))


def all_ranks_max(value: float) -> float:
    """The largest ``value`` over the ranks."""
    return max(all_ranks_objects(value))


def all_ranks_union(items: Iterable[Hashable]) -> List[Hashable]:
    """The sorted union of ``items`` over the ranks, e.g. the layer paths
    with a non-finite input on any rank."""
    union = set()
    for rank_items in all_ranks_objects(sorted(set(items))):
        union.update(rank_items)
    return sorted(union)
