"""State shared by the compressed layers of one model (never global).

:class:`CompressionContext` is created once per model (by
:func:`mmseg_hosvd.surgery.install_compression`) and handed to each of its
:class:`~.conv.CompressedConv2d` s as a plain attribute (not a submodule,
buffer or parameter, so ``state_dict`` keys are those of the plain model).
It holds

* a :class:`DecompositionCache`: an input read by several compressed layers
  (DeepLabV3's four ASPP branches read one tensor) is decomposed once; the
  later layers reuse the same factor tensors, so one copy of them is saved
  for backward;
* the :class:`~mmseg_hosvd.decomposition.SubspaceTracker` of the ``asi`` method
  (per-layer ranks and bases);
* ``aliases``: layer name -> name of the layer whose factors it reused.
"""
import weakref
from dataclasses import dataclass
from typing import Any, Dict, Hashable, Optional, Tuple

from torch import Tensor

from ..decomposition import SubspaceTracker


@dataclass
class _Entry:
    ref: 'weakref.ReferenceType[Tensor]'
    factors: Any
    owner: str


def tensor_identity(tensor: Tensor) -> Optional[Tuple[Hashable, ...]]:
    """``(id, data_ptr, version, shape, stride, dtype, device)`` of
    ``tensor``, or None where one of them is unavailable (e.g. inference
    tensors have no version counter)."""
    try:
        return (id(tensor), tensor.data_ptr(), tensor._version,
                tuple(tensor.shape), tuple(tensor.stride()), tensor.dtype,
                str(tensor.device))
    except (RuntimeError, NotImplementedError):
        return None


class DecompositionCache:
    """Decompositions of input tensors, keyed by the tensor's identity
    (:func:`tensor_identity`: an in-place change bumps the version and
    misses) and a configuration key (e.g. ``('hosvd', eps)``).

    An entry holds a weak reference to its tensor and is dropped when the
    tensor is freed; :meth:`clear` (called after every forward of the model,
    see :func:`~mmseg_hosvd.surgery.install_compression`) drops them all, so
    the cache keeps nothing alive after a forward. ``hits`` / ``misses``
    count lookups.
    """

    def __init__(self) -> None:
        self._entries: Dict[Tuple[Hashable, ...], _Entry] = {}
        self.hits = 0
        self.misses = 0

    def __len__(self) -> int:
        return len(self._entries)

    def get(self, tensor: Tensor,
            config: Hashable) -> Optional[Tuple[Any, str]]:
        """``(factors, owner)`` stored for ``tensor`` and ``config``."""
        identity = tensor_identity(tensor)
        entry = None if identity is None else self._entries.get(
            (identity, config))
        if entry is None or entry.ref() is not tensor:
            self.misses += 1
            return None
        self.hits += 1
        return entry.factors, entry.owner

    def put(self, tensor: Tensor, config: Hashable, factors: Any,
            owner: str) -> None:
        identity = tensor_identity(tensor)
        if identity is None:
            return
        key = (identity, config)
        entries = self._entries

        def forget(ref, key=key, entries=entries) -> None:
            entry = entries.get(key)
            if entry is not None and entry.ref is ref:
                del entries[key]

        entries[key] = _Entry(weakref.ref(tensor, forget), factors, owner)

    def clear(self) -> None:
        self._entries.clear()

    def __getstate__(self) -> dict:  # weak references do not pickle
        return dict(_entries={}, hits=self.hits, misses=self.misses)


class CompressionContext:
    """Per-model state of the compressed layers (see the module docstring).

    Args:
        share_inputs: decompose an input shared by several layers once.
        subspaces: the ``asi`` state; a default tracker (eps rule, seed 0)
            if None.
    """

    def __init__(self,
                 share_inputs: bool = True,
                 subspaces: Optional[SubspaceTracker] = None) -> None:
        self.cache = DecompositionCache() if share_inputs else None
        self.subspaces = subspaces if subspaces is not None else \
            SubspaceTracker()
        self.aliases: Dict[str, str] = {}
        self.hook_handle = None  # the model forward hook that clears it

    def clear(self) -> None:
        """Drop the cached decompositions (nothing else)."""
        if self.cache is not None:
            self.cache.clear()

    def __getstate__(self) -> dict:  # the hook handle is not carried over
        state = dict(self.__dict__)
        state['hook_handle'] = None
        return state

    def state_dict(self) -> Dict[str, Any]:
        """Tensors only: ``{'asi': SubspaceTracker.state_dict()}``."""
        return {'asi': self.subspaces.state_dict()}

    def load_state_dict(self, state: Dict[str, Any], device=None) -> None:
        self.subspaces.load_state_dict(state.get('asi', {}), device=device)


class ClearAfterForward:
    """Forward hook (``module.register_forward_hook``) that clears a
    context's cache after the module's forward; a class rather than a
    closure so that a model carrying it still pickles."""

    def __init__(self, context: CompressionContext) -> None:
        self.context = context

    def __call__(self, module, args, output) -> None:
        self.context.clear()
