"""Measure real ``model.train_step`` calls from the outside, with hooks.

:class:`StepProbe` patches nothing: it registers

* a forward pre-hook and a forward hook on the model: the forward time, and
  a :class:`~mmseg_hosvd.profiling.SavedTensorMeter` active during the
  forward only (what autograd saves for the step, read before backward),
  optionally :func:`~mmseg_hosvd.profiling.saved_breakdown` of the graph;
* a multi-gradient hook on the trainable parameters: the end of backward;
* an optimizer step post-hook: the end of the optimizer step (clipping
  and, for AMP, unscaling included).

Every time point comes from one :class:`SyncTimer` (``time.perf_counter``
after ``torch.cuda.synchronize`` on CUDA). A peak meter, any object with
``__enter__``/``__exit__`` and a ``peak_bytes`` attribute, can wrap the
whole step (:meth:`StepProbe.measure`).
"""
import time
from contextlib import nullcontext
from dataclasses import dataclass
from typing import Any, Callable, List, Optional, Sequence, Tuple

import torch
import torch.nn as nn

from ..profiling import GraphBreakdown, SavedTensorMeter, saved_breakdown


class SyncTimer:
    """``time.perf_counter`` seconds, after the device's queued work
    (``torch.cuda.synchronize`` on CUDA, nothing on the CPU)."""

    def __init__(self, device: torch.device) -> None:
        self.device = torch.device(device)

    def now(self) -> float:
        if self.device.type == 'cuda':
            torch.cuda.synchronize(self.device)
        return time.perf_counter()


@dataclass
class StepMeasurement:
    """One measured training step. Times in seconds, sizes in bytes.

    ``saved_bytes``: activation storages autograd saved in the forward and
    still held before backward (each once); ``saved_param_bytes``: saved
    parameters and buffers (both None when not metered); ``breakdown``: the
    graph walk (if asked for);
    ``peak_bytes``: the peak meter's reading (None without one).
    """
    forward_s: float
    backward_s: float
    optimizer_s: float
    saved_bytes: Optional[int]
    saved_param_bytes: Optional[int]
    breakdown: Optional[GraphBreakdown] = None
    peak_bytes: Optional[int] = None
    result: Any = None

    @property
    def step_s(self) -> float:
        """Forward + backward + optimizer step (data preprocessing and the
        graph walk excluded)."""
        return self.forward_s + self.backward_s + self.optimizer_s


def _grad_roots(output: Any) -> List[torch.Tensor]:
    """The tensors of a (nested) forward output that have a graph."""
    if isinstance(output, torch.Tensor):
        return [output] if output.grad_fn is not None else []
    if isinstance(output, dict):
        output = list(output.values())
    if isinstance(output, (list, tuple)):
        return [t for item in output for t in _grad_roots(item)]
    return []


class StepProbe:
    """Hooks on ``model`` and ``optimizer`` that time and meter the next
    training step(s) while armed.

    Use as a context manager (hooks registered on enter, removed on exit)
    and call :meth:`measure` with the step to run, or :meth:`arm` /
    :meth:`collect` around a step that something else runs (a Runner).

    Args:
        model: the module whose ``__call__`` is the step's forward (the
            segmentor: ``train_step`` calls ``self(**data, mode='loss')``).
        optimizer: the ``torch.optim.Optimizer`` the step updates.
        params: the trainable parameters (end of backward).
        state: parameters and buffers (the meter's "parameter" side).
        device: for the :class:`SyncTimer`.
        breakdown: also walk the graph (:func:`saved_breakdown`); its time
            falls between forward and backward and is not counted.
    """

    def __init__(self, model: nn.Module, optimizer: torch.optim.Optimizer,
                 params: Sequence[torch.Tensor],
                 state: Sequence[torch.Tensor], device: torch.device,
                 breakdown: bool = False) -> None:
        self.model = model
        self.optimizer = optimizer
        self.params = [p for p in params if p.requires_grad]
        self.state = list(state)
        self.timer = SyncTimer(device)
        self.breakdown = breakdown
        self._handles: List[Any] = []
        self._armed = False
        self._points: dict = {}
        self._meter: Optional[SavedTensorMeter] = None
        self._metered = True
        self._saved: Tuple[Optional[int], Optional[int]] = (None, None)
        self._graph: Optional[GraphBreakdown] = None

    # -- hooks -------------------------------------------------------------
    def __enter__(self) -> 'StepProbe':
        if self._handles:
            raise RuntimeError('StepProbe is already attached')
        self._handles = [
            self.model.register_forward_pre_hook(self._forward_start),
            self.model.register_forward_hook(self._forward_end),
            self.optimizer.register_step_post_hook(self._step_end),
        ]
        if self.params:
            self._handles.append(
                torch.autograd.graph.register_multi_grad_hook(
                    self.params, self._backward_end))
        return self

    def __exit__(self, *exc_info) -> None:
        for handle in self._handles:
            handle.remove()
        self._handles = []
        self._disarm()

    def _disarm(self) -> None:
        """Stop measuring; leave a meter a failed forward left active."""
        self._armed = False
        if self._meter is not None:
            self._meter.__exit__(None, None, None)
            self._meter = None

    def _forward_start(self, module: nn.Module, args: Any) -> None:
        if not self._armed or 'forward_start' in self._points:
            return
        self._points['forward_start'] = self.timer.now()
        if self._metered:
            self._meter = SavedTensorMeter(self.state)
            self._meter.__enter__()

    def _forward_end(self, module: nn.Module, args: Any,
                     output: Any) -> None:
        if (not self._armed or 'forward_start' not in self._points
                or 'forward_end' in self._points):
            return
        meter, self._meter = self._meter, None
        if meter is not None:
            meter.__exit__(None, None, None)
        self._points['forward_end'] = self.timer.now()
        if meter is not None:
            self._saved = (meter.activation_bytes(),
                           meter.parameter_bytes())
        if self.breakdown:
            self._graph = saved_breakdown(_grad_roots(output), self.state)
        self._points['backward_start'] = self.timer.now()

    def _backward_end(self, grads: Sequence[Optional[torch.Tensor]]) -> None:
        if self._armed and 'backward_start' in self._points:
            self._points.setdefault('backward_end', self.timer.now())

    def _step_end(self, optimizer: torch.optim.Optimizer, args: Any,
                  kwargs: Any) -> None:
        if self._armed and 'backward_end' in self._points:
            self._points.setdefault('step_end', self.timer.now())

    # -- measuring ---------------------------------------------------------
    def arm(self, saved: bool = True) -> None:
        """Measure the next forward/backward/optimizer step; ``saved``:
        also meter the saved tensors (a pack hook per saved tensor)."""
        if not self._handles:
            raise RuntimeError('StepProbe: use it as a context manager')
        self._points, self._graph = {}, None
        self._saved = (None, None)
        self._metered = saved
        self._armed = True

    def collect(self) -> StepMeasurement:
        """Disarm and return what the armed step measured.

        Raises:
            RuntimeError: the step did not run a forward, a backward that
                reached the trainable parameters, and an optimizer step.
        """
        self._disarm()
        points = self._points
        missing = [
            name for name in ('forward_start', 'forward_end',
                              'backward_end', 'step_end')
            if name not in points
        ]
        if missing:
            raise RuntimeError(f'StepProbe: the step had no {missing[0]} '
                               '(no forward of the model, no gradient for '
                               'the trainable parameters, or no optimizer '
                               'step)')
        return StepMeasurement(
            forward_s=points['forward_end'] - points['forward_start'],
            backward_s=points['backward_end'] - points['backward_start'],
            optimizer_s=points['step_end'] - points['backward_end'],
            saved_bytes=self._saved[0],
            saved_param_bytes=self._saved[1],
            breakdown=self._graph)

    def measure(self, step: Callable[[], Any],
                peak_meter: Optional[Any] = None) -> StepMeasurement:
        """Run ``step()`` (one training step) armed, inside ``peak_meter``
        if given (its ``peak_bytes`` is read after it exits)."""
        self.arm()
        try:
            with peak_meter if peak_meter is not None else nullcontext():
                result = step()
        except BaseException:
            self._disarm()
            raise
        measurement = self.collect()
        measurement.result = result
        if peak_meter is not None:
            measurement.peak_bytes = int(peak_meter.peak_bytes)
        return measurement
