"""Measure the peak memory a block of code (a training step) allocates.

:class:`PeakMemoryMeter` is a context manager. On exit,
:attr:`PeakMemoryMeter.peak_bytes` holds the highest amount of memory (bytes)
that was allocated *above the baseline at entry* at any moment inside the
block, and :attr:`PeakMemoryMeter.net_bytes` what was still allocated above
it at exit (a leak check: memory the block created and did not free).
Wrap forward, ``backward()`` and ``optimizer.step()`` together to get a
training step's peak: saved activations plus every transient (temporaries,
gradients, the optimizer's state created on the first step).

* CPU: PyTorch keeps no allocator statistics for the CPU, so the meter runs
  ``torch.profiler`` with ``profile_memory=True`` and replays its
  allocation/free events (the ``[memory]`` events, one per ``malloc``/``free``
  of the CPU allocator, signed sizes in bytes) in time order: the peak is
  the maximum of their running sum. The profiler does not see the free of a
  block allocated before it started (it does not know its size; PyTorch
  prints a one-time ``Memory block of unknown size`` notice), so such frees
  do not lower the sum: the CPU peak is then an upper bound. A training step
  frees little it did not allocate (gradients set to None by the previous
  ``zero_grad`` are freed there, before the block).
* CUDA: ``torch.cuda.reset_peak_memory_stats`` at entry, then
  ``torch.cuda.max_memory_allocated - memory_allocated(at entry)``.

Only allocations made through PyTorch's allocator count (tensors, including
autograd's and the optimizer's); Python objects do not. The profiler makes a
CPU step slower (it records every op), so time a step without the meter.
"""
from typing import Optional, Sequence, Union

import torch
from torch.profiler import ProfilerActivity, profile

from .ops import MIB

DeviceLike = Union[str, torch.device]


def running_peak(sizes: Sequence[int]) -> int:
    """Largest running sum of signed allocation ``sizes`` (bytes), at least 0
    (the empty prefix: nothing allocated yet)."""
    total = peak = 0
    for size in sizes:
        total += size
        peak = max(peak, total)
    return peak


def profiler_allocations(prof: profile) -> list:
    """Signed sizes (bytes; frees negative) of the CPU allocator's events
    recorded by a finished ``torch.profiler.profile(profile_memory=True)``,
    in time order."""
    results = prof.profiler.kineto_results if prof.profiler else None
    if results is None:
        raise RuntimeError('the profiler recorded nothing: was it started '
                           'with profile_memory=True and stopped?')
    events = [
        event for event in results.events()
        if event.name() == '[memory]'
        and event.device_type() == torch.autograd.DeviceType.CPU
    ]
    events.sort(key=lambda event: event.start_ns())
    return [event.nbytes() for event in events]


class PeakMemoryMeter:
    """Peak bytes allocated above the entry baseline inside the block.

    Example::

        meter = PeakMemoryMeter('cpu')
        with meter:
            loss = model(x).sum()
            loss.backward()
            optimizer.step()
        meter.peak_bytes   # int, bytes
        meter.peak_mib     # float, MiB

    Args:
        device: where the step allocates: ``'cpu'`` or a CUDA device.
            Only that device's allocations count.

    Attributes:
        peak_bytes: peak allocated above the baseline (bytes), ``None``
            before the block has finished.
        net_bytes: allocated above the baseline at exit (bytes; negative if
            the block freed more than it kept).
    """

    def __init__(self, device: DeviceLike = 'cpu') -> None:
        self.device = torch.device(device)
        if self.device.type not in ('cpu', 'cuda'):
            raise ValueError('PeakMemoryMeter measures cpu or cuda memory, '
                             f'got device {self.device}')
        self.peak_bytes: Optional[int] = None
        self.net_bytes: Optional[int] = None
        self._profiler: Optional[profile] = None
        self._baseline = 0

    def __enter__(self) -> 'PeakMemoryMeter':
        self.peak_bytes = self.net_bytes = None
        if self.device.type == 'cuda':
            torch.cuda.synchronize(self.device)
            self._baseline = torch.cuda.memory_allocated(self.device)
            torch.cuda.reset_peak_memory_stats(self.device)
        else:
            self._profiler = profile(activities=[ProfilerActivity.CPU],
                                     profile_memory=True)
            self._profiler.__enter__()
        return self

    def __exit__(self, *exc_info) -> None:
        if self.device.type == 'cuda':
            torch.cuda.synchronize(self.device)
            self.peak_bytes = (torch.cuda.max_memory_allocated(self.device) -
                               self._baseline)
            self.net_bytes = (torch.cuda.memory_allocated(self.device) -
                              self._baseline)
            return
        prof, self._profiler = self._profiler, None
        prof.__exit__(*exc_info)
        sizes = profiler_allocations(prof)
        self.peak_bytes = running_peak(sizes)
        self.net_bytes = sum(sizes)

    @property
    def peak_mib(self) -> float:
        """:attr:`peak_bytes` in MiB."""
        if self.peak_bytes is None:
            raise RuntimeError('no peak yet: use the meter as a context '
                               'manager and read it after the block')
        return self.peak_bytes / MIB
