"""Measure what autograd really saves for backward.

Layer-independent helpers (plain PyTorch, no mmengine):

* :class:`SavedTensorMeter`: a context manager that installs
  ``torch.autograd.graph.saved_tensors_hooks`` and records every tensor
  autograd packs while it is active, by *untyped storage* (so a tensor saved
  twice, or two views of one storage, count once). It keeps no reference
  that could keep memory alive: the pack hook returns a detached alias of
  the tensor (same storage, no ``grad_fn``, so no reference cycle through a
  saved output) and the meter only holds weak references to it, i.e.
  exactly what autograd holds. :meth:`SavedTensorMeter.activation_bytes`
  therefore measures the saved storages still alive (call it between the
  forward pass and ``backward()``); after ``backward()`` it is 0.
* :func:`saved_breakdown`: walks the autograd graph from the loss and
  attributes each saved storage to the op (graph node name, e.g.
  ``ConvolutionBackward0``, ``NativeBatchNormBackward0``,
  ``ReluBackward0`` or a custom Function's ``<Name>Backward``) that saved
  it. Each storage is counted once, for the *first* node in forward
  execution order (autograd sequence number) that saved it: a ReLU output
  that the next conv also saves as its input counts as a ReLU output.
  :attr:`GraphBreakdown.by_op_inclusive` gives the other view, in which
  every op counts everything it saves (storages deduplicated per op only).

Autograd does not call pack hooks for Python scalars it wrapped into 0-dim
tensors (e.g. the ``2`` of ``x * 2``); the graph walk sees them (a few
bytes each), so its total can exceed the meter's by that much.

Parameters and buffers (``params``: e.g. ``list(model.parameters()) +
list(model.buffers())``), ``nn.Parameter`` objects and leaf tensors that
require grad are "parameters": they are kept apart from the activation
totals and reported separately, since they exist whether or not a step
saves them. The peak meter is :mod:`mmseg_hosvd.peak_memory`.
"""
import weakref
from dataclasses import dataclass, field
from typing import (Any, Dict, Iterable, List, Optional, Sequence, Set,
                    Tuple, Union)

import torch
import torch.nn as nn
from torch import Tensor


#: kinds of saved storages
ACTIVATION = 'activation'
PARAMETER = 'parameter'

StorageKey = Tuple[str, int]


def storage_key(tensor: Tensor) -> Optional[StorageKey]:
    """``(device, data_ptr)`` of the untyped storage behind ``tensor``; None
    for tensors without a plain storage (sparse, meta, ...)."""
    try:
        storage = tensor.untyped_storage()
    except (RuntimeError, NotImplementedError):
        return None
    return str(tensor.device), storage.data_ptr()


def storage_nbytes(tensor: Tensor) -> int:
    """Bytes of the whole untyped storage behind ``tensor`` (0 if none)."""
    try:
        return tensor.untyped_storage().nbytes()
    except (RuntimeError, NotImplementedError):
        return 0


def state_keys(params: Iterable[Tensor]) -> Set[StorageKey]:
    """Storage keys of ``params`` (parameters and buffers)."""
    keys = set()
    for tensor in params:
        key = storage_key(tensor)
        if key is not None:
            keys.add(key)
    return keys


def _is_parameter(tensor: Tensor, key: Optional[StorageKey],
                  param_keys: Set[StorageKey]) -> bool:
    return (key in param_keys or isinstance(tensor, nn.Parameter)
            or (tensor.is_leaf and tensor.requires_grad))


# ---------------------------------------------------------------------------
# pack-hook meter
# ---------------------------------------------------------------------------
@dataclass
class SavedStorage:
    """One distinct storage that autograd saved.

    Attributes:
        key: ``(device, data_ptr)`` of the storage.
        nbytes: size of the whole storage.
        kind: :data:`ACTIVATION` or :data:`PARAMETER`.
        dtype: dtype of the first tensor saved from it.
        shape: shape of the first tensor saved from it.
        saves: how many times autograd packed a tensor of this storage.
    """
    key: StorageKey
    nbytes: int
    kind: str
    dtype: str
    shape: Tuple[int, ...]
    saves: int = 0
    _refs: List[weakref.ref] = field(default_factory=list, repr=False)

    @property
    def alive(self) -> bool:
        """Whether autograd still holds a tensor of this storage."""
        return any(ref() is not None for ref in self._refs)


class SavedTensorMeter:
    """Record the storages autograd saves while the context is active.

    Example::

        meter = SavedTensorMeter(params=model.parameters())
        with meter:
            loss = model(x).sum()
        saved = meter.activation_bytes()  # before backward
        loss.backward()

    Args:
        params: parameters and buffers whose storages count as
            :data:`PARAMETER` (``nn.Parameter`` objects and leaf tensors
            requiring grad always do).
    """

    def __init__(self, params: Iterable[Tensor] = ()) -> None:
        self._param_keys = state_keys(params)
        self._storages: Dict[StorageKey, SavedStorage] = {}
        self._hooks = None
        self.packed = 0

    # context manager -------------------------------------------------------
    def __enter__(self) -> 'SavedTensorMeter':
        if self._hooks is not None:
            raise RuntimeError('SavedTensorMeter is already active')
        self._hooks = torch.autograd.graph.saved_tensors_hooks(
            self._pack, self._unpack)
        self._hooks.__enter__()
        return self

    def __exit__(self, *exc_info) -> None:
        hooks, self._hooks = self._hooks, None
        hooks.__exit__(*exc_info)

    def reset(self) -> None:
        """Forget everything recorded (the hooks stay as they are)."""
        self._storages.clear()
        self.packed = 0

    # hooks -------------------------------------------------------------------
    def _pack(self, tensor: Tensor) -> Tensor:
        self.packed += 1
        key = storage_key(tensor)
        # the same storage without grad_fn: no reference cycle through a
        # saved output, and nothing autograd would not hold anyway
        saved = tensor.detach()
        if key is None:
            return saved
        nbytes = storage_nbytes(tensor)
        entry = self._storages.get(key)
        if entry is None or not entry.alive or entry.nbytes != nbytes:
            # new, or the address of a storage already freed was reused
            kind = (PARAMETER if _is_parameter(tensor, key, self._param_keys)
                    else ACTIVATION)
            entry = SavedStorage(key, nbytes, kind, str(tensor.dtype),
                                 tuple(tensor.shape))
            self._storages[key] = entry
        entry.saves += 1
        entry._refs.append(weakref.ref(saved))
        return saved

    @staticmethod
    def _unpack(saved: Tensor) -> Tensor:
        return saved

    # results -----------------------------------------------------------------
    def storages(self, live_only: bool = True) -> List[SavedStorage]:
        """The recorded storages; by default only those autograd still
        holds."""
        return [
            s for s in self._storages.values()
            if s.nbytes > 0 and (s.alive or not live_only)
        ]

    def bytes(self, kind: str = ACTIVATION, live_only: bool = True) -> int:
        return sum(s.nbytes for s in self.storages(live_only)
                   if s.kind == kind)

    def activation_bytes(self, live_only: bool = True) -> int:
        """Bytes of the distinct saved activation storages."""
        return self.bytes(ACTIVATION, live_only)

    def parameter_bytes(self, live_only: bool = True) -> int:
        """Bytes of the distinct saved parameter/buffer storages."""
        return self.bytes(PARAMETER, live_only)

    def summary(self, live_only: bool = True) -> Dict[str, int]:
        storages = self.storages(live_only)
        return dict(
            activation_bytes=sum(s.nbytes for s in storages
                                 if s.kind == ACTIVATION),
            parameter_bytes=sum(s.nbytes for s in storages
                                if s.kind == PARAMETER),
            storages=len(storages),
            packed=self.packed)


# ---------------------------------------------------------------------------
# graph walk
# ---------------------------------------------------------------------------
Node = Any  # torch.autograd.graph.Node (C++ node or BackwardCFunction)
Roots = Union[Tensor, Node, Sequence[Union[Tensor, Node]]]


def graph_nodes(roots: Roots) -> List[Node]:
    """Every autograd node reachable from ``roots`` (tensors or nodes), in
    forward execution order (autograd sequence number; ties and nodes
    without one, such as ``AccumulateGrad``, in discovery order)."""
    if isinstance(roots, Tensor) or not isinstance(roots, (list, tuple)):
        roots = [roots]
    stack = []
    for root in roots:
        node = root.grad_fn if isinstance(root, Tensor) else root
        if node is not None:
            stack.append(node)
    seen: Dict[Node, int] = {}
    while stack:
        node = stack.pop()
        if node is None or node in seen:
            continue
        seen[node] = len(seen)
        stack.extend(next_node for next_node, _ in node.next_functions)

    def order(node: Node) -> Tuple[int, int]:
        try:
            return node._sequence_nr(), seen[node]
        except (AttributeError, RuntimeError):
            return 2**64, seen[node]

    return sorted(seen, key=order)


def _tensors_in(value: Any) -> List[Tensor]:
    if isinstance(value, Tensor):
        return [value]
    if isinstance(value, (list, tuple)):
        return [item for item in value if isinstance(item, Tensor)]
    return []


def node_saved_tensors(node: Node) -> List[Tuple[str, Tensor]]:
    """``(attribute, tensor)`` pairs a node saved for backward.

    Built-in nodes: their ``_saved_*`` attributes. Custom
    ``autograd.Function`` nodes: ``saved_tensors`` (``saved_tensors[i]``)
    and tensors stored as ctx attributes (``ctx.<name>``).

    Raises:
        RuntimeError: the saved tensors were already freed (after
            ``backward()``): walk the graph before backward.
    """
    pairs: List[Tuple[str, Tensor]] = []
    try:
        if isinstance(node, torch.autograd.function.BackwardCFunction):
            for index, tensor in enumerate(node.saved_tensors):
                if isinstance(tensor, Tensor):
                    pairs.append((f'saved_tensors[{index}]', tensor))
            for name, value in vars(node).items():
                for tensor in _tensors_in(value):
                    pairs.append((f'ctx.{name}', tensor))
            return pairs
        for name in dir(node):
            if not name.startswith('_saved_'):
                continue
            for tensor in _tensors_in(getattr(node, name)):
                pairs.append((name, tensor))
    except RuntimeError as error:
        raise RuntimeError(
            f'cannot read the saved tensors of {node.name()}: {error} '
            '(walk the graph before backward())') from error
    return pairs


@dataclass
class OpShare:
    """Bytes and distinct storages attributed to one op (node name)."""
    bytes: int = 0
    storages: int = 0

    def add(self, nbytes: int) -> None:
        self.bytes += nbytes
        self.storages += 1


@dataclass
class GraphBreakdown:
    """Where the saved storages of a graph come from.

    Attributes:
        activation_bytes: distinct activation storages, each once.
        parameter_bytes: distinct parameter/buffer storages, each once.
        by_op: activation bytes by node name, each storage attributed to the
            first node (forward order) that saved it; sums to
            ``activation_bytes``.
        by_op_inclusive: activation bytes by node name, each node counting
            every storage it saved (a storage shared by two ops counts for
            both; once per op).
        by_saved: as ``by_op`` but keyed ``'<node name>.<attribute>'``
            (e.g. ``'ConvolutionBackward0._saved_input'``,
            ``'MyFunctionBackward.saved_tensors[1]'``); sums to
            ``activation_bytes``.
        parameters_by_op: parameter bytes by node name (first saver).
        nodes: nodes visited.
    """
    activation_bytes: int = 0
    parameter_bytes: int = 0
    by_op: Dict[str, OpShare] = field(default_factory=dict)
    by_op_inclusive: Dict[str, OpShare] = field(default_factory=dict)
    by_saved: Dict[str, OpShare] = field(default_factory=dict)
    parameters_by_op: Dict[str, OpShare] = field(default_factory=dict)
    nodes: int = 0

    def to_dict(self, unit: int = 1) -> dict:
        """Plain dict; byte figures divided by ``unit`` (e.g. ``mmseg_hosvd.ops.MIB``),
        ops sorted by decreasing size."""

        def table(shares: Dict[str, OpShare]) -> Dict[str, dict]:
            ordered = sorted(shares.items(), key=lambda item: -item[1].bytes)
            return {
                name: dict(bytes=share.bytes / unit, storages=share.storages)
                for name, share in ordered
            }

        return dict(
            activation_bytes=self.activation_bytes / unit,
            parameter_bytes=self.parameter_bytes / unit,
            by_op=table(self.by_op),
            by_op_inclusive=table(self.by_op_inclusive),
            by_saved=table(self.by_saved),
            parameters_by_op=table(self.parameters_by_op),
            nodes=self.nodes)


def node_name(node: Node) -> str:
    try:
        return node.name()
    except (AttributeError, RuntimeError):
        return type(node).__name__


def saved_breakdown(roots: Roots,
                    params: Iterable[Tensor] = ()) -> GraphBreakdown:
    """Attribute the storages saved by the graph behind ``roots`` to ops.

    Call it after the forward pass and before ``backward()`` (which frees
    the saved tensors). Works with or without an active
    :class:`SavedTensorMeter`.

    Args:
        roots: the loss (or several outputs, or graph nodes).
        params: parameters and buffers (see :class:`SavedTensorMeter`).
    """
    param_keys = state_keys(params)
    result = GraphBreakdown()
    counted: Set[StorageKey] = set()
    nodes = graph_nodes(roots)
    result.nodes = len(nodes)
    for node in nodes:
        name = node_name(node)
        counted_here: Set[StorageKey] = set()
        for attribute, tensor in node_saved_tensors(node):
            key = storage_key(tensor)
            nbytes = storage_nbytes(tensor)
            if key is None or nbytes == 0 or key in counted_here:
                continue
            counted_here.add(key)
            is_param = _is_parameter(tensor, key, param_keys)
            if not is_param:
                result.by_op_inclusive.setdefault(name, OpShare()).add(nbytes)
            if key in counted:
                continue
            counted.add(key)
            if is_param:
                result.parameter_bytes += nbytes
                result.parameters_by_op.setdefault(name,
                                                   OpShare()).add(nbytes)
            else:
                result.activation_bytes += nbytes
                result.by_op.setdefault(name, OpShare()).add(nbytes)
                result.by_saved.setdefault(f'{name}.{attribute}',
                                           OpShare()).add(nbytes)
    return result
