"""Runner hooks for measured runs: the step probe and a progress bar."""
import statistics
from typing import Dict, List, Optional, Sequence

from mmengine.hooks import Hook
from mmengine.model import is_model_wrapper
from mmengine.registry import HOOKS

from ..ops import MIB
from .probe import StepProbe


@HOOKS.register_module()
class StepProbeHook(Hook):
    """Time every training iteration's ``train_step`` (forward, backward,
    optimizer step; data loading and preprocessing excluded) with a
    :class:`StepProbe`, and meter the saved tensors of the iterations in
    ``saved_iters``.

    Args:
        saved_iters: 0-based iterations whose saved bytes are metered (a
            pack hook per saved tensor: they are timed too, but the first
            iteration and these are left out of :meth:`step_time`).
    """

    priority = 'VERY_LOW'

    def __init__(self, saved_iters: Sequence[int] = ()) -> None:
        self.saved_iters = set(saved_iters)
        self.times: List[float] = []
        self.saved_mib: List[float] = []
        self.saved_param_mib: List[float] = []
        self._metered: List[bool] = []
        self._probe: Optional[StepProbe] = None

    def before_train(self, runner) -> None:
        """Attach the probe to the runner's model and optimizer.

        Args:
            runner: the runner of the training.
        """
        model = runner.model.module if is_model_wrapper(
            runner.model) else runner.model
        params = [p for p in model.parameters() if p.requires_grad]
        state = list(model.parameters()) + list(model.buffers())
        device = next(model.parameters()).device
        self._probe = StepProbe(runner.model,
                                runner.optim_wrapper.optimizer, params,
                                state, device)
        self._probe.__enter__()

    def before_train_iter(self, runner, batch_idx: int,
                          data_batch: Optional[dict] = None) -> None:
        """Arm the probe for this iteration.

        Args:
            runner: the runner of the training.
            batch_idx: index of the batch in the epoch (unused).
            data_batch: the batch (unused).
        """
        metered = runner.iter in self.saved_iters
        self._metered.append(metered)
        self._probe.arm(saved=metered)

    def after_train_iter(self, runner, batch_idx: int,
                         data_batch: Optional[dict] = None,
                         outputs: Optional[Dict] = None) -> None:
        """Collect the iteration's measurement.

        Args:
            runner: the runner of the training.
            batch_idx: index of the batch in the epoch (unused).
            data_batch: the batch (unused).
            outputs: the step's outputs (unused).
        """
        measured = self._probe.collect()
        self.times.append(measured.step_s)
        if measured.saved_bytes is not None:
            self.saved_mib.append(measured.saved_bytes / MIB)
            self.saved_param_mib.append(measured.saved_param_bytes / MIB)

    def after_train(self, runner) -> None:
        """Detach the probe.

        Args:
            runner: the runner of the training.
        """
        if self._probe is not None:
            self._probe.__exit__(None, None, None)
            self._probe = None

    def step_time(self) -> float:
        """Median step time (s) of the unmetered iterations after the
        first (all iterations if there are no such)."""
        plain = [t for i, (t, m) in enumerate(zip(self.times, self._metered))
                 if i > 0 and not m]
        times = plain or self.times
        return statistics.median(times) if times else float('nan')


@HOOKS.register_module()
class ProgressBarHook(Hook):
    """A progress bar (``tqdm``, on stderr) with iterations and ETA over
    the training iterations, independent of the logger's console output.

    Args:
        desc: the bar's label.
    """

    priority = 'LOWEST'

    def __init__(self, desc: str = 'train') -> None:
        self.desc = desc
        self._bar = None

    def before_train(self, runner) -> None:
        """Open the bar over ``runner.max_iters``.

        Args:
            runner: the runner of the training.
        """
        from tqdm import tqdm
        self._bar = tqdm(total=runner.max_iters, initial=runner.iter,
                         desc=self.desc, unit='it', dynamic_ncols=True)

    def after_train_iter(self, runner, batch_idx: int,
                         data_batch: Optional[dict] = None,
                         outputs: Optional[Dict] = None) -> None:
        """Advance the bar by one iteration.

        Args:
            runner: the runner of the training.
            batch_idx: index of the batch in the epoch (unused).
            data_batch: the batch (unused).
            outputs: the step's outputs (unused).
        """
        if self._bar is not None:
            self._bar.update(1)

    def after_train(self, runner) -> None:
        """Close the bar.

        Args:
            runner: the runner of the training.
        """
        if self._bar is not None:
            self._bar.close()
            self._bar = None
