"""The compression hook: :func:`~mmseg_hosvd.compression.apply_compression`
in a Runner."""
import copy
from typing import Optional

from mmengine.hooks import Hook
from mmengine.model import is_model_wrapper
from mmengine.registry import HOOKS

from ..compression import (AppliedCompression, CompressionConfig,
                           apply_compression)
from ..lean_backward import LeanBackward
from ..ops import ASI
from ..step_in_backward import KEY as STEP_IN_BACKWARD
from ..step_in_backward import StepInBackward, install_step_in_backward
from .guard_hook import NonFiniteStepGuardHook, step_guard

#: key of the compression state (``asi`` ranks and bases) in checkpoints
CHECKPOINT_KEY = 'compression_state'


@HOOKS.register_module()
class ActivationCompressionHook(Hook):
    """Apply a :class:`~mmseg_hosvd.compression.CompressionConfig` to the
    runner's model: freeze it, compress the saved inputs of its trainable
    convs and linears, keep its BatchNorms in eval mode, and keep the
    ``asi`` state in checkpoints.

    ``before_run`` (after the runner built the optimizer and wrapped the
    model, before ``load_from``/``--resume``) applies the config to the
    unwrapped model. The Parameter objects and names do not change, so the
    optimizer and checkpoints are unaffected; a DDP-wrapped model is then
    wrapped again with the run's own ``model_wrapper_cfg``, so that only
    the trainable parameters are in DDP's buckets (the frozen ones are never
    all-reduced, ``find_unused_parameters`` is not needed).

    The ``non_finite`` policy is enforced by the run's
    :class:`~.guard_hook.NonFiniteStepGuardHook`, which this hook registers
    itself when the config has none: ``non_finite`` is this hook's key, so
    its meaning must not depend on whether another entry is in the config
    (a NaN loss or gradient would otherwise reach the weights under
    ``'raise'`` as under ``'skip'``); a run without compression may still
    register the guard alone.

    Args:
        **config: the keys of :class:`~mmseg_hosvd.compression.
            CompressionConfig` (``method``, ``eps``, ``radius``, ``layers``,
            ``num_layers``, ``freeze``, ``norm_eval``, ``trace_size``,
            ``budget_mib``, ``seed``, ``init``, ``share_inputs``,
            ``non_finite``, ``lean_backward``, ``lean_loss``,
            ``step_in_backward``, ``frozen_chunk``, ``fold_frozen_norms``,
            ``split_concat``), validated when the hook is built.

    With ``step_in_backward``, ``before_train`` (the runner built
    ``runner.optim_wrapper`` at the start of ``Runner.train()``, before
    ``before_run``) makes every trainable parameter's optimizer step happen
    inside backward (:func:`~mmseg_hosvd.step_in_backward.
    install_step_in_backward`); ``after_train`` / ``after_run`` remove it.

    Attributes:
        config: the validated config.
        applied: what was applied (after ``before_run``), else None.
    """

    priority = 'VERY_HIGH'

    def __init__(self, **config) -> None:
        self.config = CompressionConfig.from_dict(config)
        self.applied: Optional[AppliedCompression] = None
        self.step_in_backward: Optional[StepInBackward] = None

    @property
    def lean(self) -> Optional[LeanBackward]:
        """What ``lean_backward`` installed (after ``before_run``)."""
        return None if self.applied is None else self.applied.lean

    def set_norm_eval(self) -> None:
        """``applied.set_norm_eval()`` (nothing before ``before_run``)."""
        if self.applied is not None:
            self.applied.set_norm_eval()

    def before_run(self, runner) -> None:
        """Apply the config to the unwrapped model, register or configure
        the step guard, and re-wrap a wrapped model.

        Args:
            runner (Runner): The runner of the training process.

        Raises:
            ValueError: a bad layer path or freeze list (named), or a
                ``NonFiniteStepGuardHook`` whose own ``non_finite``
                contradicts this hook's.
        """
        guard = self._step_guard(runner)
        wrapped = is_model_wrapper(runner.model)
        model = runner.model.module if wrapped else runner.model
        self.applied = apply_compression(model, self.config, step_guard=True)
        if wrapped:
            runner.model = runner.wrap_model(
                copy.deepcopy(runner.cfg.get('model_wrapper_cfg')), model)
        runner.logger.info(
            f'{type(self).__name__}: {self.applied.summary()}; non_finite='
            f'{guard.non_finite!r}; model wrapper: '
            f'{type(runner.model).__name__} (built after freezing)')

    def _step_guard(self, runner) -> NonFiniteStepGuardHook:
        """The run's guard, registered if missing, set to ``non_finite``."""
        guard = step_guard(runner)
        if guard is None:
            guard = NonFiniteStepGuardHook(non_finite=self.config.non_finite)
            runner.register_hook(guard)
        elif guard.non_finite is None:
            guard.non_finite = self.config.non_finite
        elif guard.non_finite != self.config.non_finite:
            raise ValueError(
                f'non_finite: {type(self).__name__} has non_finite='
                f'{self.config.non_finite!r} but {type(guard).__name__} has '
                f'non_finite={guard.non_finite!r}; set one of them')
        return guard

    def before_train(self, runner) -> None:
        """With ``step_in_backward``: step each parameter inside backward.

        Args:
            runner (Runner): The runner of the training process.

        Raises:
            ValueError: naming ``step_in_backward``, where the step inside
                backward could not be exact (a wrapped (DDP) model, several
                optimizers, AMP, gradient accumulation, ``clip_grad`` by
                norm, an optimizer that is not per-parameter).
        """
        if not self.config.step_in_backward or self.applied is None:
            return
        if is_model_wrapper(runner.model):
            raise ValueError(
                f'{STEP_IN_BACKWARD}: the model is wrapped in '
                f'{type(runner.model).__name__}, which averages gradients '
                'over ranks after the local backward; a per-parameter step '
                'inside backward would use the local gradient')
        self.step_in_backward = install_step_in_backward(
            self.applied.model, runner.optim_wrapper)
        runner.logger.info(
            f'{type(self).__name__}: {STEP_IN_BACKWARD}: '
            f'{len(self.step_in_backward.params)} parameter(s) stepped '
            'inside backward, each gradient freed after its step')

    def after_train(self, runner) -> None:
        """Remove the in-backward steps.

        Args:
            runner (Runner): The runner of the training process.
        """
        self._remove_step_in_backward()

    def after_run(self, runner) -> None:
        """Remove the in-backward steps (also after a failed run).

        Args:
            runner (Runner): The runner of the training process.
        """
        self._remove_step_in_backward()

    def _remove_step_in_backward(self) -> None:
        if self.step_in_backward is not None:
            self.step_in_backward.remove()
            self.step_in_backward = None

    def before_train_iter(self,
                          runner,
                          batch_idx: int,
                          data_batch=None) -> None:
        """Put the BatchNorms back in eval mode (``norm_eval``): the
        train loop calls ``model.train()`` before every iteration.

        Args:
            runner (Runner): The runner of the training process.
            batch_idx (int): The index of the current batch in the loop.
            data_batch (dict or tuple or list, optional): Data from the
                dataloader.
        """
        self.set_norm_eval()

    def before_save_checkpoint(self, runner, checkpoint: dict) -> None:
        """Put the ``asi`` state into ``checkpoint['compression_state']``.

        Args:
            runner (Runner): The runner of the training process.
            checkpoint (dict): The checkpoint about to be saved.
        """
        if self.applied is None:
            return
        state = self.applied.state_dict()
        if any(state.values()):
            checkpoint[CHECKPOINT_KEY] = state

    def after_load_checkpoint(self, runner, checkpoint: dict) -> None:
        """Restore the ``asi`` state from ``checkpoint`` (``--resume`` /
        ``load_from``).

        Args:
            runner (Runner): The runner of the training process.
            checkpoint (dict): The loaded checkpoint.
        """
        state = checkpoint.get(CHECKPOINT_KEY)
        if (not state or self.config.method != ASI or self.applied is None
                or not self.applied.layers):
            return
        self.applied.load_state_dict(state)
        runner.logger.info(
            f'{type(self).__name__}: asi state of '
            f'{len(state.get("asi", {}))} layer(s) restored from the '
            'checkpoint')
