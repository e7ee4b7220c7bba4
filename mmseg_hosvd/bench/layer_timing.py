"""Per-layer decomposition timing of the speed benchmark.

On the inputs of a model's compressed convs, captured in one forward (an
input read by several convs, e.g. the ASPP branches, is one row): the time
of the HOSVD of :func:`mmseg_hosvd.ops.hosvd` (Gram + eigh) and of one ASI
step (:func:`mmseg_hosvd.ops.subspace_iteration_step`, same ranks) against
the forward of the convs that read it and against a plain HOSVD made of
four ``torch.linalg.svd`` calls on the contiguous mode unfoldings (plus the
eps rule and the core). Times in milliseconds.
"""
import statistics
from typing import Callable, Dict, List, Sequence, Tuple

import torch
import torch.nn as nn
import torch.nn.functional as F

from ..ops import explained_variance_rank, hosvd, subspace_iteration_step
from .probe import SyncTimer


def median_ms(values: Sequence[float]) -> float:
    """Median of ``values`` (s) in ms; NaN for none."""
    return 1e3 * statistics.median(values) if values else float('nan')


def reference_hosvd(x: torch.Tensor, eps: float) -> torch.Tensor:
    """Plain truncated HOSVD: four ``torch.linalg.svd`` of the contiguous
    mode unfoldings, the eps rule on their singular values, the core
    (``x`` times each factor's transpose, the most shrinking mode first)."""
    data = x.detach().float()
    factors = {}
    for mode in range(4):
        unfolding = data.movedim(mode, 0).reshape(data.shape[mode],
                                                  -1).contiguous()
        left, values, _ = torch.linalg.svd(unfolding, full_matrices=False)
        rank = int(explained_variance_rank(values**2, eps))
        factors[mode] = left[:, :rank]
    core = data
    for mode in sorted(factors, key=lambda m: factors[m].shape[1] /
                       factors[m].shape[0]):
        core = torch.tensordot(core, factors[mode],
                               dims=([mode], [0])).movedim(-1, mode)
    return core


def time_ms(function: Callable[[], object], repeats: int,
            device: torch.device, warmup: bool = True) -> float:
    """Median wall time (ms) of ``function()`` with a synchronised timer."""
    timer = SyncTimer(device)
    if warmup:
        function()
    times = []
    for _ in range(repeats):
        start = timer.now()
        function()
        times.append(timer.now() - start)
    return median_ms(times)


def capture_inputs(model: nn.Module, installed: Dict[str, nn.Module],
                   batch: dict) -> List[Tuple[List[str], torch.Tensor]]:
    """The inputs of the ``installed`` convs in one forward of ``batch``,
    grouped by tensor identity: ``[(conv paths, input)]`` in execution
    order."""
    groups: Dict[int, Tuple[List[str], torch.Tensor]] = {}
    handles = []
    for path, conv in installed.items():

        def grab(module, args, path=path):
            tensor = args[0]
            groups.setdefault(id(tensor), ([], tensor))[0].append(path)

        handles.append(conv.register_forward_pre_hook(grab))
    try:
        with torch.no_grad():
            data = model.data_preprocessor(batch, True)
            model(**data, mode='tensor')
    finally:
        for handle in handles:
            handle.remove()
    return [(paths, tensor.detach()) for paths, tensor in groups.values()]


def time_input(x: torch.Tensor, convs: Sequence[nn.Module], eps: float,
               repeats: int, device: torch.device) -> dict:
    """Times (ms) of the convs' forward, HOSVD, one ASI step and the
    four-SVD HOSVD on one input ``x``, and the HOSVD ranks."""
    x = x.contiguous()

    def forward_convs():
        for conv in convs:
            F.conv2d(x, conv.weight, conv.bias, conv.stride, conv.padding,
                     conv.dilation, conv.groups)

    with torch.no_grad():
        conv_ms = time_ms(forward_convs, repeats, device)
        factors = hosvd(x, eps)
        hosvd_ms = time_ms(lambda: hosvd(x, eps), repeats, device)
        bases = list(factors.factors)
        asi_ms = time_ms(lambda: subspace_iteration_step(x, bases), repeats,
                         device)
        svd_ms = time_ms(lambda: reference_hosvd(x, eps), 1, device,
                         warmup=False)
    return dict(shape=tuple(x.shape), ranks=factors.ranks, conv_ms=conv_ms,
                hosvd_ms=hosvd_ms, asi_ms=asi_ms, svd_ms=svd_ms)


def layer_rows(model: nn.Module, installed: Dict[str, nn.Module],
               batch: dict, eps: float, repeats: int,
               device: torch.device) -> List[dict]:
    """One row per distinct input of the installed convs: ``paths`` and
    the fields of :func:`time_input`.

    Raises:
        SystemExit: a conv pads otherwise than with zeros.
    """
    rows = []
    for paths, x in capture_inputs(model, installed, batch):
        convs = [installed[p] for p in paths]
        if any(conv.padding_mode != 'zeros' for conv in convs):
            raise SystemExit(f'{paths}: padding_mode other than zeros is '
                             'not timed')
        rows.append(dict(paths=paths,
                         **time_input(x, convs, eps, repeats, device)))
        del x
    return rows


def _short(path: str) -> str:
    return path.replace('decode_head.', 'head.').replace('backbone.', 'bb.')


def paths_label(paths: Sequence[str]) -> str:
    """``'bb.layer4.0.conv1'``, or the first of several with a count."""
    if len(paths) == 1:
        return _short(paths[0])
    return f'{_short(paths[0])} (+{len(paths) - 1} more, shared)'


def layer_columns(eps: float):
    """``(key, header, format)`` of the layer table."""
    return (('input', 'input of', None), ('shape', 'shape', None),
            ('ranks', f'hosvd ranks (eps {eps:g})', None),
            ('conv_ms', 'conv fwd ms', '.1f'),
            ('hosvd_ms', 'hosvd ms', '.1f'),
            ('hosvd_per_conv', 'hosvd / conv', '.2f'),
            ('asi_ms', 'asi step ms', '.1f'),
            ('asi_per_conv', 'asi / conv', '.3f'),
            ('svd_ms', '4x svd HOSVD ms', '.0f'),
            ('svd_per_hosvd', '4x svd / hosvd', '.1f'))


def layer_table_rows(rows: List[dict]) -> List[dict]:
    """The rows of :func:`layer_rows` as the layer table shows them."""
    return [
        dict(input=paths_label(r['paths']), shape=str(tuple(r['shape'])),
             ranks=str(tuple(r['ranks'])), conv_ms=r['conv_ms'],
             hosvd_ms=r['hosvd_ms'],
             hosvd_per_conv=r['hosvd_ms'] / r['conv_ms'],
             asi_ms=r['asi_ms'], asi_per_conv=r['asi_ms'] / r['conv_ms'],
             svd_ms=r['svd_ms'], svd_per_hosvd=r['svd_ms'] / r['hosvd_ms'])
        for r in rows
    ]
