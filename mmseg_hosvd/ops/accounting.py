"""Units and byte accounting shared by the ops, hooks and tools.

:class:`CompressionStats` is what one compressed layer call keeps for
backward; the helpers count the bytes of saved tensors by their untyped
storages (each storage once) and read the calls' non-finite flags.
"""
from dataclasses import dataclass
from typing import Dict, List, Sequence, Tuple, Union

import torch
from torch import Tensor

from ..decomposition import (SVDFactors, TuckerFactors, WholeInput,
                             decomposition_dtype)
from .methods import VANILLA, method_spec

StorageKey = Tuple[str, int, int]


@dataclass
class CompressionStats:
    """What one compressed layer call (conv or linear) keeps for backward.

    Attributes:
        method: one of :data:`~.methods.MODULE_METHODS`.
        input_shape: ``(B, C, H, W)`` of the compressed input (after any
            explicit padding, see :class:`CompressedConv2d`); a
            :class:`~.linear.CompressedLinear`'s own input shape ``(...,
            C)``.
        paper_elements: the paper's element count: HOSVD
            ``K1*K2*K3*K4 + B*K1 + C*K2 + H*K3 + W*K4``, SVD
            ``K*(B + C*H*W)``, Gradient Filter ``B*C*Hp*Wp``; the
            input's element count where the input itself was kept.
        kept_bytes: bytes really kept from the activation: the untyped
            storages of the saved compressed tensors, each counted once
            (weight-derived tensors are not counted).
        ranks: HOSVD/ASI ``(K1, K2, K3, K4)``, SVD ``(K,)``, Gradient
            Filter ``()``, the input's shape where it was kept whole; a linear's Tucker ranks are those of its input's
            channel-first view (see :mod:`.linear`).
        storage_keys: ``(device, data_ptr, nbytes)`` of each storage counted
            in ``kept_bytes``: several layers that save the same storages
            (a shared input's factors) show them each, and totals over
            layers count each key once (:func:`distinct_kept_bytes`).
        reused: the factors were computed by another layer that read the
            same input (see :class:`~.context.DecompositionCache`).
        non_finite: the input had NaN/Inf: a bool where the decomposition
            already synchronised with the host (HOSVD/SVD, ASI's first
            step), otherwise a 0-d bool tensor not read yet (vanilla,
            Gradient Filter, ASI), so that no host synchronisation is added;
            :func:`non_finite_layers` reads them all at once. A float32 sum
            of the input that overflows counts as non-finite too.
    """
    method: str
    input_shape: Tuple[int, ...]
    paper_elements: int
    kept_bytes: int
    ranks: Tuple[int, ...] = ()
    storage_keys: Tuple[StorageKey, ...] = ()
    reused: bool = False
    non_finite: Union[bool, Tensor] = False

    @property
    def paper_bytes(self) -> int:
        """Bytes as the paper counts them: fp32, ``4 * paper_elements``."""
        return 4 * self.paper_elements


def non_finite_flag(tensor: Tensor) -> Tensor:
    """0-d bool tensor, True where ``tensor`` has NaN/Inf (no host sync).

    A float32 (float64 for float64) sum: no temporary of the tensor's size.
    """
    total = tensor.detach().sum(dtype=decomposition_dtype(tensor.dtype))
    return ~torch.isfinite(total)


def non_finite_layers(stats: Dict[str, 'CompressionStats']) -> List[str]:
    """Keys of ``stats`` whose input had NaN/Inf, in order; the flags still
    on the device are read in one host synchronisation."""
    names = list(stats)
    flags = [stats[name].non_finite for name in names]
    pending = [flag for flag in flags if isinstance(flag, Tensor)]
    if pending:
        device = pending[0].device
        values = iter(torch.stack([f.to(device) for f in pending]).tolist())
        flags = [next(values) if isinstance(flag, Tensor) else flag
                 for flag in flags]
    return [name for name, flag in zip(names, flags) if flag]


def storage_bytes(tensors: Sequence[Tensor]) -> int:
    """Bytes of the distinct untyped storages behind ``tensors``."""
    storages = {}
    for tensor in tensors:
        storage = tensor.untyped_storage()
        storages[storage.data_ptr()] = storage.nbytes()
    return sum(storages.values())


def storage_keys(tensors: Sequence[Tensor]) -> Tuple[StorageKey, ...]:
    """``(device, data_ptr, nbytes)`` of the distinct untyped storages
    behind ``tensors`` (their nbytes add up to :func:`storage_bytes`)."""
    keys = {}
    for tensor in tensors:
        storage = tensor.untyped_storage()
        key = (str(tensor.device), storage.data_ptr(), storage.nbytes())
        keys[key[:2]] = key
    return tuple(keys.values())


def vanilla_stats(input: Tensor) -> 'CompressionStats':
    """Stats of a ``'vanilla'`` call: the whole ``input`` is kept."""
    return CompressionStats(method=VANILLA,
                            input_shape=tuple(input.shape),
                            paper_elements=input.numel(),
                            kept_bytes=storage_bytes([input]),
                            ranks=(),
                            storage_keys=storage_keys([input]),
                            non_finite=non_finite_flag(input))


def factor_stats(method: str, input_shape: Tuple[int, ...],
                 factors: Union[TuckerFactors, SVDFactors, WholeInput],
                 ranks: Sequence[int],
                 reused: bool) -> 'CompressionStats':
    """Stats of a HOSVD/SVD/ASI call that keeps ``factors`` (a stateful
    method's non-finite flag is read off its first tensor, without a host
    sync)."""
    tensors = factors.tensors()
    stateful = method_spec(method).stateful
    return CompressionStats(method=method,
                            input_shape=tuple(input_shape),
                            paper_elements=factors.paper_elements(),
                            kept_bytes=storage_bytes(tensors),
                            ranks=tuple(ranks),
                            storage_keys=storage_keys(tensors),
                            reused=reused,
                            non_finite=(non_finite_flag(tensors[0])
                                        if stateful else False))


def non_finite_stats(method: str, input_shape: Tuple[int, ...],
                     reused: bool) -> 'CompressionStats':
    """Stats of a non-finite input skipped by ``non_finite='skip'``:
    nothing kept (zero bytes, no ranks)."""
    return CompressionStats(method=method,
                            input_shape=tuple(input_shape),
                            paper_elements=0,
                            kept_bytes=0,
                            ranks=(),
                            reused=reused,
                            non_finite=True)


def concatenated_stats(parts: Sequence['CompressionStats'],
                       dim: int = 1) -> 'CompressionStats':
    """One layer's stats from the stats of its calls on the parts of one
    input concatenated along ``dim`` (a conv computed as the sum of convs
    over slices of its input channels, see
    :meth:`~.layer_base.CompressedLayerMixin.summing_stats`).

    ``input_shape`` is the concatenation's, ``paper_elements`` the sum,
    ``kept_bytes`` the parts' distinct storages (each once), ``ranks`` the
    elementwise sum (the ranks of the block-diagonal form of the parts'
    factors; ``()`` where the parts have different numbers of ranks),
    ``reused`` whether every part reused another layer's factors,
    ``non_finite`` whether any part was (no host synchronisation).

    Raises:
        ValueError: no parts, different methods, or shapes that differ
            other than along ``dim``.
    """
    if not parts:
        raise ValueError('concatenated_stats: no stats to concatenate')
    shapes = [tuple(p.input_shape) for p in parts]
    first = shapes[0]
    if len({p.method for p in parts}) > 1 or any(
            len(s) != len(first) or s[:dim] != first[:dim]
            or s[dim + 1:] != first[dim + 1:] for s in shapes):
        raise ValueError(f'concatenated_stats: calls of methods '
                         f'{[p.method for p in parts]} on shapes {shapes} '
                         f'are not parts of one input along dim {dim}')
    shape = first[:dim] + (sum(s[dim] for s in shapes), ) + first[dim + 1:]
    ranks: Tuple[int, ...] = ()
    if len({len(p.ranks) for p in parts}) == 1:
        ranks = tuple(sum(r) for r in zip(*(p.ranks for p in parts)))
    keys = {}
    for part in parts:
        for key in part.storage_keys:
            keys[key[:2]] = key
    return CompressionStats(method=parts[0].method,
                            input_shape=shape,
                            paper_elements=sum(p.paper_elements
                                               for p in parts),
                            kept_bytes=distinct_kept_bytes(parts),
                            ranks=ranks,
                            storage_keys=tuple(keys.values()),
                            reused=all(p.reused for p in parts),
                            non_finite=_any_flag(
                                [p.non_finite for p in parts]))


def _any_flag(flags: Sequence[Union[bool, Tensor]]) -> Union[bool, Tensor]:
    """Whether any flag is set: a bool, or a 0-d bool tensor (not read)
    where some flags are tensors and no bool is set."""
    if any(flag is True for flag in flags):
        return True
    pending = [flag for flag in flags if isinstance(flag, Tensor)]
    if not pending:
        return False
    device = pending[0].device
    return torch.stack([f.to(device) for f in pending]).any()


def distinct_kept_bytes(stats: Sequence['CompressionStats']) -> int:
    """Total ``kept_bytes`` of ``stats`` with each storage counted once
    (stats without ``storage_keys`` count their ``kept_bytes`` as is)."""
    keys = {}
    loose = 0
    for item in stats:
        if not item.storage_keys:
            loose += item.kept_bytes
        for key in item.storage_keys:
            keys[key[:2]] = key[2]
    return loose + sum(keys.values())
