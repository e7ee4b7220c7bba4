"""One training-step path for benchmarks: what ``mim train`` runs.

:class:`TrainingStep` builds, from an mmengine ``Config``, the model
(``MODELS.build``), applies the config's compression
(:func:`mmseg_hosvd.compression.apply_compression` of the
``ActivationCompressionHook`` entries' :class:`~mmseg_hosvd.compression.
CompressionConfig`) and builds the optim wrapper
(``mmengine.optim.build_optim_wrapper``: optimizer, ``clip_grad`` of any
type and the wrapper type come from the config), and runs real
``model.train_step(data, optim_wrapper)`` calls.

Activation checkpointing (``activation_checkpointing='block'`` or
``'segment'``): after the compression is applied (and has frozen what it
freezes), the trainable modules run under ``torch.utils.checkpoint``
(:func:`mmseg_hosvd.checkpointing.checkpoint_modules` at
:func:`~mmseg_hosvd.checkpointing.checkpoint_paths` of that placement);
parameter names do not change.

Gradient accumulation (``accumulative_counts=k``): the optim wrapper gets
mmengine's ``accumulative_counts``, as a config with
``optim_wrapper=dict(accumulative_counts=k)`` does; :meth:`TrainingStep.
run_accumulated` runs the ``k`` micro-batches of one effective batch through
``train_step``, the wrapper scaling each loss by ``1/k`` and stepping after
the last.

Mixed precision (``amp=True``): on CUDA the optim wrapper becomes mmengine's
``AmpOptimWrapper`` (float16, loss scaling); on the CPU, where
``AmpOptimWrapper`` refuses to run, a :class:`~mmseg_hosvd.engine.CPUBFloat16OptimWrapper`, i.e.
the config's ``OptimWrapper`` whose ``optim_context`` (forward and loss) runs
under ``torch.autocast('cpu', dtype=torch.bfloat16)``.
"""
import copy
import logging
from contextlib import contextmanager
from typing import Any, Dict, Iterator, List, Optional, Sequence, Union

import torch
import torch.nn as nn
from mmengine.optim import OptimWrapper

from ..checkpointing import PLACEMENTS, checkpoint_modules, checkpoint_paths
from ..compression import (AppliedCompression, CompressionConfig,
                           apply_compression)
from ..step_in_backward import StepInBackward, install_step_in_backward

#: the optim wrapper types ``amp=True`` may replace
PLAIN_WRAPPERS = ('OptimWrapper', 'AmpOptimWrapper',
                  'CPUBFloat16OptimWrapper')
#: key rewrite for checkpoints saved from a wrapped (DDP) model
REVISE_KEYS = [(r'^module\.', '')]


def amp_optim_wrapper_cfg(cfg: dict, device: torch.device) -> dict:
    """The config's optim wrapper with mixed precision for ``device``:
    ``AmpOptimWrapper`` (float16) on CUDA, :class:`~mmseg_hosvd.engine.CPUBFloat16OptimWrapper`
    on the CPU; everything else (optimizer, ``clip_grad``) unchanged.

    Raises:
        ValueError: the config's wrapper is of another type (it may do
            more than a plain ``OptimWrapper``).
    """
    cfg = copy.deepcopy(dict(cfg))
    kind = cfg.get('type', 'OptimWrapper')
    if kind not in PLAIN_WRAPPERS:
        raise ValueError(f'amp: optim_wrapper type {kind!r} is not one of '
                         f'{PLAIN_WRAPPERS}; cannot switch it to mixed '
                         'precision')
    if device.type == 'cuda':
        cfg['type'] = 'AmpOptimWrapper'
        cfg.setdefault('dtype', 'float16')
    elif device.type == 'cpu':
        cfg['type'] = 'CPUBFloat16OptimWrapper'
        cfg.pop('dtype', None)
        cfg.pop('loss_scale', None)
    else:
        raise ValueError(f'amp: no mixed precision for device {device}')
    return cfg


#: the hook whose config entries :func:`compression_configs` reads
COMPRESSION_HOOK = 'ActivationCompressionHook'


def compression_configs(cfg) -> List[CompressionConfig]:
    """The :class:`~mmseg_hosvd.compression.CompressionConfig` of every
    ``ActivationCompressionHook`` entry of ``cfg.default_hooks`` and
    ``cfg.custom_hooks``, in config order."""
    entries = list((cfg.get('default_hooks') or {}).values()) + list(
        cfg.get('custom_hooks') or [])
    configs = []
    for entry in entries:
        if not isinstance(entry, dict):
            continue
        kind = entry.get('type')
        name = kind if isinstance(kind, str) else getattr(kind, '__name__',
                                                          None)
        if name != COMPRESSION_HOOK:
            continue
        configs.append(
            CompressionConfig.from_hook_cfg(copy.deepcopy(dict(entry))))
    return configs


class TrainingStep:
    """A model, its plugin hooks and its optim wrapper, built like the
    Runner builds them, and real training steps on given batches.

    Args:
        model: the segmentor (not wrapped), on its device.
        optim_wrapper: mmengine optim wrapper over ``model``'s parameters.
        compressions: what :func:`~mmseg_hosvd.compression.
            apply_compression` applied to ``model``.
        accumulative_counts: micro-batches per optimizer step, as set in
            ``optim_wrapper``.
        step_in_backward: the in-backward optimizer steps
            (``step_in_backward=True`` in a compression config), or None.
    """

    def __init__(self, model: nn.Module, optim_wrapper: OptimWrapper,
                 compressions: Sequence[AppliedCompression],
                 accumulative_counts: int = 1,
                 step_in_backward: Optional[StepInBackward] = None):
        self.model = model
        self.accumulative_counts = accumulative_counts
        self.optim_wrapper = optim_wrapper
        self.compressions = list(compressions)
        self.step_in_backward = step_in_backward
        #: the installed layers of every compression, by path
        self.installed: Dict[str, nn.Module] = {
            path: layer for applied in self.compressions
            for path, layer in applied.layers.items()}

    @classmethod
    def from_config(cls,
                    cfg,
                    device: Union[str, torch.device] = 'cpu',
                    checkpoint: Optional[str] = None,
                    amp: bool = False,
                    seed: Optional[int] = None,
                    init_weights: bool = True,
                    strict: bool = False,
                    activation_checkpointing: Optional[str] = None,
                    accumulative_counts: int = 1) -> 'TrainingStep':
        """Build everything from ``cfg``.

        Args:
            cfg: an mmengine ``Config`` of a plugin run.
            device: where the model runs.
            checkpoint: weights to load with
                ``mmengine.runner.load_checkpoint`` (``module.`` prefixes
                stripped); None: random initialisation.
            amp: mixed precision (see the module docstring).
            seed: ``mmengine.runner.set_random_seed`` before building;
                None: the config's ``randomness.seed`` if any.
            init_weights: call ``model.init_weights()`` (random weights)
                before loading ``checkpoint``; without a checkpoint the
                weights are always initialised.
            strict: load ``checkpoint`` strictly (every key must match;
                default: keys missing or extra are logged, e.g. a
                classifier of another class count).
            activation_checkpointing: None, or the placement
                (``'block'``, ``'segment'``) of the trainable modules
                to checkpoint (see the module docstring).
            accumulative_counts: micro-batches per optimizer step (the
                optim wrapper's ``accumulative_counts``; default 1).

        Raises:
            ValueError: an unknown ``activation_checkpointing`` placement,
                ``accumulative_counts`` below 1.
        """
        from mmengine.logging import MMLogger
        from mmengine.optim import build_optim_wrapper
        from mmengine.runner import load_checkpoint, set_random_seed
        from mmseg.registry import MODELS
        if (activation_checkpointing is not None
                and activation_checkpointing not in PLACEMENTS):
            raise ValueError('activation_checkpointing: expected None or '
                             f'one of {PLACEMENTS}, got '
                             f'{activation_checkpointing!r}')
        _check_counts(accumulative_counts)
        device = torch.device(device)
        if seed is None:
            seed = (cfg.get('randomness') or {}).get('seed')
        if seed is not None:
            set_random_seed(seed)
        model = MODELS.build(copy.deepcopy(cfg.model))
        with quiet_logger(MMLogger.get_current_instance()):
            if checkpoint is None or init_weights:
                model.init_weights()  # logs every parameter at INFO level
            if checkpoint is not None:
                load_checkpoint(model, checkpoint, map_location='cpu',
                                strict=strict, logger='current',
                                revise_keys=REVISE_KEYS)
        model = model.to(device)
        compressions = [apply_compression(model, config)
                        for config in compression_configs(cfg)]
        if activation_checkpointing is not None:
            checkpoint_modules(
                model, checkpoint_paths(model, activation_checkpointing))
        wrapper_cfg = copy.deepcopy(cfg.optim_wrapper)
        if amp:
            wrapper_cfg = amp_optim_wrapper_cfg(wrapper_cfg, device)
        if accumulative_counts != 1:
            wrapper_cfg['accumulative_counts'] = accumulative_counts
        optim_wrapper = build_optim_wrapper(model, wrapper_cfg)
        in_backward = None
        if any(applied.config.step_in_backward for applied in compressions):
            in_backward = install_step_in_backward(model, optim_wrapper)
        return cls(model, optim_wrapper, compressions, accumulative_counts,
                   in_backward)

    # -- the step --------------------------------------------------------
    def prepare(self) -> None:
        """What the train loop does before each iteration: ``train()``
        mode, then the BN layers back to eval (``set_norm_eval``)."""
        self.model.train()
        for applied in self.compressions:
            applied.set_norm_eval()

    def run(self, data: dict) -> Dict[str, torch.Tensor]:
        """One real ``model.train_step(data, optim_wrapper)``: data
        preprocessing, forward and loss (in the wrapper's
        ``optim_context``), backward, clipping, optimizer step, zero_grad.

        Args:
            data: a batch as the dataloader yields it
                (``dict(inputs=[(3, H, W) uint8], data_samples=[...])``).

        Returns:
            the step's ``log_vars`` (floats of the losses).
        """
        self.prepare()
        return self.model.train_step(data, optim_wrapper=self.optim_wrapper)

    def run_accumulated(self, micro_batches: Sequence[dict]
                        ) -> List[Dict[str, torch.Tensor]]:
        """One effective batch: :meth:`run` on each of its
        :attr:`accumulative_counts` micro-batches; the optimizer steps
        after the last (gradients accumulate in between).

        Raises:
            ValueError: not exactly :attr:`accumulative_counts`
                micro-batches, or the wrapper is mid-accumulation.
        """
        counts = self.accumulative_counts
        if len(micro_batches) != counts:
            raise ValueError(f'run_accumulated: expected {counts} '
                             f'micro-batch(es), got {len(micro_batches)}')
        if self.optim_wrapper.inner_count % counts:
            raise ValueError('run_accumulated: the optim wrapper is in the '
                             'middle of an accumulation')
        return [self.run(data) for data in micro_batches]

    def gradients(self, data: dict) -> Dict[str, torch.Tensor]:
        """The gradients of one forward/backward on ``data`` (no optimizer
        step, no clipping), by parameter name: float32 copies."""
        self.prepare()
        self.model.zero_grad(set_to_none=True)
        with self.optim_wrapper.optim_context(self.model):
            batch = self.model.data_preprocessor(data, True)
            losses = self.model(**batch, mode='loss')
        loss, _ = self.model.parse_losses(losses)
        if self.step_in_backward is None:
            self.optim_wrapper.backward(loss)
        else:
            with self.step_in_backward.suspended():  # keep the gradients
                self.optim_wrapper.backward(loss)
        grads = {
            name: param.grad.detach().float().clone()
            for name, param in self.model.named_parameters()
            if param.requires_grad and param.grad is not None
        }
        self.model.zero_grad(set_to_none=True)
        return grads

    # -- what the benchmarks read ----------------------------------------
    def trainable_parameters(self) -> List[nn.Parameter]:
        return [p for p in self.model.parameters() if p.requires_grad]

    def state_tensors(self) -> List[torch.Tensor]:
        """Parameters and buffers: the "parameter" side of
        :class:`mmseg_hosvd.profiling.SavedTensorMeter`."""
        return list(self.model.parameters()) + list(self.model.buffers())

    def last_stats(self) -> Dict[str, Any]:
        """The installed layers' ``last_stats`` of the latest forward."""
        return {
            path: conv.last_stats
            for path, conv in self.installed.items()
            if getattr(conv, 'last_stats', None) is not None
        }


def _check_counts(accumulative_counts: int) -> None:
    if (isinstance(accumulative_counts, bool)
            or not isinstance(accumulative_counts, int)
            or accumulative_counts < 1):
        raise ValueError('accumulative_counts: expected an int >= 1, '
                         f'got {accumulative_counts!r}')


@contextmanager
def quiet_logger(logger, level: int = logging.WARNING) -> Iterator[None]:
    """Raise ``logger`` (e.g. mmengine's current ``MMLogger``) to ``level``
    (default WARNING) for the duration."""
    old = logger.level
    logger.setLevel(level)
    try:
        yield
    finally:
        logger.setLevel(old)
