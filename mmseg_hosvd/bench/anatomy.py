"""What is live at the peak of a training step, by kind of tensor.

:func:`peak_anatomy` runs a step under ``torch.profiler`` with memory,
shapes and stacks recorded, and reads PyTorch's memory timeline
(``torch.profiler._memory_profiler``: the same categories as
``profile.export_memory_timeline``; a private module, so a missing or
changed one is reported by name). At the moment the step's allocations
peak it reports:

* the bytes live above what was held before the step, by group
  (:data:`GROUPS`, from the timeline's categories: the input batch;
  activations, i.e. forward tensors computed from the input, whether saved
  for backward or in flight; op temporaries, allocated and freed inside one
  op; gradients in flight (autograd's, not yet accumulated); the
  parameters' gradients; optimizer state);
* the phase (forward, backward or optimizer step, from markers that hooks
  on the model and the optimizer put into the trace), the innermost module
  whose forward was running (forward only) and the op that was running.

The profiler slows a CPU step several times; use it on one step, apart
from timed ones. Sizes in bytes.
"""
import dataclasses
from contextlib import ExitStack
from typing import Any, Callable, Dict, List, Optional, Tuple

import torch
import torch.nn as nn
from torch.profiler import ProfilerActivity, profile, record_function

#: the memory timeline's categories (their names) -> the group reported
GROUPS = {
    'INPUT': 'input batch',
    'TEMPORARY': 'op temporaries',
    'ACTIVATION': 'activations',
    'AUTOGRAD_DETAIL': 'gradients in flight',
    'GRADIENT': 'parameter gradients',
    'OPTIMIZER_STATE': 'optimizer state',
    'PARAMETER': 'parameters',
    None: 'unattributed',
}
FORWARD, OPTIMIZER = 'forward', 'optimizer step'
_MODULE = 'module: '


@dataclasses.dataclass
class PeakAnatomy:
    """The peak of one step. Bytes above what was held before it.

    Attributes:
        peak_bytes: the most the step's live tensors reached.
        groups: bytes live at that moment, by group of :data:`GROUPS`
            (negative: freed below the entry amount).
        phase: ``'forward'``, ``'backward'`` or ``'optimizer step'``.
        module: the innermost module (path) running its forward at the
            peak, None outside the forward.
        op: the innermost profiled op running at the peak (a backward
            node, e.g. ``autograd::engine::evaluate_function:
            ConvolutionBackward0``, or an ``aten::`` op).
    """
    peak_bytes: int
    groups: Dict[str, int]
    phase: str
    module: Optional[str]
    op: Optional[str]

    def as_mib(self) -> dict:
        """A JSON-ready dict, sizes in MiB."""
        mib = 2.0**20
        return dict(peak_mib=self.peak_bytes / mib,
                    groups_mib={k: v / mib for k, v in self.groups.items()},
                    phase=self.phase, module=self.module, op=self.op)


def _timeline(prof: profile, device: torch.device
              ) -> Tuple[List[int], List[List[int]], List[Optional[str]]]:
    """``(times in us, live bytes per category, category names)``."""
    try:
        from torch.profiler import _memory_profiler as memory_profiler
        timeline = memory_profiler.MemoryProfileTimeline(
            prof._memory_profile())
        times, sizes = timeline._coalesce_timeline(str(device))
        order = list(memory_profiler._CATEGORY_TO_INDEX)
    except (ImportError, AttributeError) as error:
        raise RuntimeError(
            'peak_anatomy needs torch.profiler._memory_profiler '
            f'(MemoryProfileTimeline) of torch >= 2.1: {error}') from None
    # column 0 is unused; column i + 1 holds category order[i]
    names = [None] + [c.name if c is not None else None for c in order]
    return times, sizes, names


class _Markers:
    """Profiler ranges for the model's forward, every module's forward and
    the optimizer step, opened and closed by hooks."""

    def __init__(self, model: nn.Module,
                 optimizer: torch.optim.Optimizer) -> None:
        self.model, self.optimizer = model, optimizer
        self._open: Dict[Any, List[record_function]] = {}

    def _enter(self, key: Any, name: str) -> None:
        marker = record_function(name)
        marker.__enter__()
        self._open.setdefault(key, []).append(marker)

    def _exit(self, key: Any) -> None:
        stack = self._open.get(key)
        if stack:
            stack.pop().__exit__(None, None, None)

    def attach(self, stack: ExitStack) -> None:
        for path, module in self.model.named_modules():
            name = FORWARD if module is self.model else _MODULE + path
            handles = (
                module.register_forward_pre_hook(
                    lambda m, args, n=name: self._enter(m, n)),
                module.register_forward_hook(
                    lambda m, args, out: self._exit(m)))
            for handle in handles:
                stack.callback(handle.remove)
        opt = self.optimizer
        for handle in (opt.register_step_pre_hook(
                lambda o, a, k: self._enter(o, OPTIMIZER)),
                       opt.register_step_post_hook(
                           lambda o, a, k: self._exit(o))):
            stack.callback(handle.remove)


def _running_at(prof: profile, time_us: float) -> Tuple[str, Optional[str],
                                                         Optional[str]]:
    """``(phase, module, op)`` running at ``time_us`` (absolute, us)."""
    start = prof.profiler.kineto_results.trace_start_ns() / 1000
    covering = [
        event for event in prof.events()
        if event.time_range.start + start <= time_us <=
        event.time_range.end + start
    ]
    covering.sort(key=lambda e: e.time_range.end - e.time_range.start)
    names = [event.name for event in covering]
    phase = ('optimizer step' if OPTIMIZER in names else
             FORWARD if FORWARD in names else 'backward')
    module = next((n[len(_MODULE):] for n in names
                   if n.startswith(_MODULE)), None)
    op = next((n for n in names if n not in (FORWARD, OPTIMIZER)
               and not n.startswith(_MODULE)), None)
    return phase, module, op


def peak_anatomy(step: Callable[[], Any], model: nn.Module,
                 optimizer: torch.optim.Optimizer,
                 device: torch.device = torch.device('cpu')) -> PeakAnatomy:
    """Run ``step()`` (forward(s), backward(s) and the optimizer step of
    ``model`` with ``optimizer``) profiled; return its peak's anatomy.

    Raises:
        RuntimeError: the private memory-timeline API is missing.
    """
    device = torch.device(device)
    activities = [ProfilerActivity.CPU]
    if device.type == 'cuda':
        activities.append(ProfilerActivity.CUDA)
    with ExitStack() as hooks:
        _Markers(model, optimizer).attach(hooks)
        with profile(activities=activities, profile_memory=True,
                     record_shapes=True, with_stack=True) as prof:
            step()
    times, sizes, names = _timeline(prof, device)
    totals = [sum(row) for row in sizes]
    peak = max(range(len(totals)), key=totals.__getitem__)
    groups: Dict[str, int] = {}
    for column, name in enumerate(names):
        if column == 0:
            continue
        live = sizes[peak][column] - sizes[0][column]
        group = GROUPS.get(name, 'unattributed')
        groups[group] = groups.get(group, 0) + live
    phase, module, op = _running_at(prof, times[peak])
    return PeakAnatomy(totals[peak] - totals[0], groups, phase, module, op)
