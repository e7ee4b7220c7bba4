"""Make mmengine checkpoints loadable with ``torch.load(weights_only=True)``.

torch >= 2.6 loads with ``weights_only=True``; mmengine's resume checkpoints
hold ``HistoryBuffer`` objects and numpy arrays (message hub) that the
restricted unpickler refuses. Instead of unpickling arbitrary objects, the
plugin writes them as plain containers of tensors and numbers and rebuilds
them after loading. Nothing here ever calls ``torch.load(weights_only=False)``.

Loading: :func:`load_weights_only` always passes ``weights_only=True``
explicitly (so ``TORCH_FORCE_NO_WEIGHTS_ONLY_LOAD=1`` or torch < 2.6 cannot
turn it off), allowing exactly the numpy globals of
:func:`safe_load_globals` for that one call;
:func:`install_weights_only_loader` makes mmengine's ``CheckpointLoader``
use it for local files and ``http(s)://`` URLs.
"""
import contextlib
import importlib
import os
import os.path as osp
import pickle
from typing import Any, BinaryIO, List, Union
from urllib.parse import urlparse

import numpy as np
import torch
from mmengine.dist import get_dist_info
from mmengine.logging import HistoryBuffer
from mmengine.runner.checkpoint import CheckpointLoader

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


def _numpy_globals() -> List[Any]:
    """The numpy callables and classes a numeric ``np.ndarray``, a numpy
    scalar or a ``np.dtype`` pickles as (numpy 1.x and 2.x module names):
    the exact allow-list for checkpoints that hold numpy data. Nothing here
    runs code beyond building arrays, scalars and dtypes from bytes."""
    found: List[Any] = [np.ndarray, np.dtype]
    # a dtype is rebuilt (BUILD) as an instance of its own class, e.g.
    # numpy.dtypes.Float32DType: the boolean and numeric ones, no object
    found += [type(np.dtype(code)) for code in '?' + np.typecodes['AllInteger']
              + np.typecodes['AllFloat']]
    try:  # numpy 2 (numpy.core is a deprecated alias there)
        multiarray = importlib.import_module('numpy._core.multiarray')
    except ImportError:  # numpy 1
        multiarray = importlib.import_module('numpy.core.multiarray')
    for name in ('_reconstruct', 'scalar'):
        # torch matches a global by its pickled '<module>.<name>': files
        # from numpy 2 say numpy._core, files from numpy 1 numpy.core
        for module in ('numpy._core.multiarray', 'numpy.core.multiarray'):
            found.append((getattr(multiarray, name), f'{module}.{name}'))
    return found


def safe_load_globals() -> List[Any]:
    """The globals :func:`load_weights_only` allows beyond torch's own:
    exactly :func:`_numpy_globals`. mmengine's ``HistoryBuffer`` is NOT
    among them: its pickle calls ``builtins.getattr`` (bound statistics
    methods), which no allow-list may admit; :class:`WeightsOnlyCheckpointHook`
    writes it as plain data instead (:func:`to_weights_only`)."""
    return _numpy_globals()


class CheckpointRefusedError(pickle.UnpicklingError):
    """A checkpoint holds objects that ``weights_only=True`` refuses."""


def load_weights_only(source: Union[str, BinaryIO],
                      map_location: Any = None) -> Any:
    """``torch.load(source, weights_only=True)``, explicitly, whatever
    torch's default (``TORCH_FORCE_NO_WEIGHTS_ONLY_LOAD`` included), with
    :func:`safe_load_globals` allowed for this call only.

    Raises:
        CheckpointRefusedError: naming the file and the globals it needs.
    """
    allowed = safe_load_globals()
    scope = (torch.serialization.safe_globals(allowed) if hasattr(
        torch.serialization, 'safe_globals') else contextlib.nullcontext())
    try:
        with scope:
            return torch.load(source, map_location=map_location,
                              weights_only=True)
    except pickle.UnpicklingError as error:
        raise CheckpointRefusedError(
            f'refused to load checkpoint {_name(source)}: '
            f'torch.load(weights_only=True) found objects beyond tensors, '
            f'plain containers and numpy arrays{_unsafe(source)}, which '
            f'could run code when unpickled. A resume checkpoint of this '
            f'plugin is written loadable by WeightsOnlyCheckpointHook (add '
            f"dict(type='WeightsOnlyCheckpointHook') to custom_hooks of the "
            f'run that saves it). torch says: {error}') from error


def _name(source: Union[str, BinaryIO]) -> str:
    return repr(source) if isinstance(source, str) else 'from a buffer'


def _unsafe(source: Union[str, BinaryIO]) -> str:
    """`` (<module.name>, ...)``: the globals the file needs that no
    allow-list admitted, when torch can list them; else empty."""
    lister = getattr(torch.serialization, 'get_unsafe_globals_in_checkpoint',
                     None)
    if lister is None or not isinstance(source, str):
        return ''
    try:
        names = lister(source)
    except Exception:  # not a zip checkpoint: torch's message says more
        return ''
    allowed = {f'{g.__module__}.{g.__qualname__}' if not isinstance(g, tuple)
               else g[1] for g in safe_load_globals()}
    names = sorted(n for n in names if n not in allowed)
    return f' ({", ".join(names)})' if names else ''


def load_from_local_weights_only(filename: str,
                                 map_location: Any = None) -> Any:
    """mmengine ``CheckpointLoader`` scheme for local paths: as mmengine's
    ``load_from_local`` but through :func:`load_weights_only`."""
    filename = osp.expanduser(filename)
    if not osp.isfile(filename):
        raise FileNotFoundError(f'{filename} can not be found.')
    return load_weights_only(filename, map_location)


def load_from_http_weights_only(url: str, map_location: Any = None) -> Any:
    """mmengine ``CheckpointLoader`` scheme for ``http(s)://``: download
    into torch hub's cache (rank 0 first under DDP, like mmengine's
    ``load_from_http``), then :func:`load_weights_only`."""
    rank, world_size = get_dist_info()
    if rank == 0:
        path = _download(url)
    if world_size > 1:
        torch.distributed.barrier()
        if rank > 0:
            path = _download(url)
    return load_weights_only(path, map_location)


def _download(url: str) -> str:
    """Path of ``url`` in torch hub's checkpoint cache, downloaded first
    when missing."""
    directory = osp.join(torch.hub.get_dir(), 'checkpoints')
    os.makedirs(directory, exist_ok=True)
    path = osp.join(directory, osp.basename(urlparse(url).path))
    if not osp.exists(path):
        torch.hub.download_url_to_file(url, path, progress=False)
    return path


def install_weights_only_loader() -> None:
    """Make mmengine load local and ``http(s)://`` checkpoints (``load_from``,
    ``--resume``, ``init_cfg`` ``Pretrained``,
    ``mmengine.runner.load_checkpoint``) with :func:`load_weights_only`,
    through mmengine's public ``CheckpointLoader.register_scheme`` (the
    plugin's package import calls this once, as it registers its hooks)."""
    CheckpointLoader.register_scheme(
        prefixes='', loader=load_from_local_weights_only, force=True)
    CheckpointLoader.register_scheme(
        prefixes=('http://', 'https://'), loader=load_from_http_weights_only,
        force=True)
