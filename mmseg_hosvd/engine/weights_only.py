"""Make mmengine checkpoints loadable with ``torch.load(weights_only=True)``.

torch >= 2.6 loads with ``weights_only=True``; mmengine's resume checkpoints
hold ``HistoryBuffer`` objects and numpy arrays (message hub) that the
restricted unpickler refuses. Instead of unpickling arbitrary objects, the
plugin writes them as plain containers of tensors and numbers and rebuilds
them after loading. Nothing here ever calls ``torch.load(weights_only=False)``.
"""
from typing import Any

import numpy as np
import torch
from mmengine.logging import HistoryBuffer

TAG = '__mmseg_hosvd_type__'


def to_weights_only(obj: Any) -> Any:
    """Return ``obj`` with HistoryBuffers, numpy arrays and numpy scalars
    replaced by tagged dicts of tensors / Python numbers (recursively)."""
    if isinstance(obj, HistoryBuffer):
        log, count = obj.data
        return {TAG: 'HistoryBuffer', 'max_length': int(obj.max_length),
                'log': to_weights_only(log), 'count': to_weights_only(count)}
    if isinstance(obj, np.ndarray):
        return {TAG: 'ndarray', 'data': torch.from_numpy(np.array(obj))}
    if isinstance(obj, np.generic):
        return obj.item()
    if isinstance(obj, dict):
        return type(obj)((k, to_weights_only(v)) for k, v in obj.items())
    if isinstance(obj, (list, tuple)) and not hasattr(obj, '_fields'):
        return type(obj)(to_weights_only(v) for v in obj)
    return obj


def from_weights_only(obj: Any) -> Any:
    """Inverse of :func:`to_weights_only`; untagged data is returned as is."""
    if isinstance(obj, dict):
        tag = obj.get(TAG)
        if tag == 'ndarray':
            return obj['data'].numpy()
        if tag == 'HistoryBuffer':
            return HistoryBuffer(from_weights_only(obj['log']),
                                 from_weights_only(obj['count']),
                                 obj['max_length'])
        return type(obj)((k, from_weights_only(v)) for k, v in obj.items())
    if isinstance(obj, (list, tuple)) and not hasattr(obj, '_fields'):
        return type(obj)(from_weights_only(v) for v in obj)
    return obj
