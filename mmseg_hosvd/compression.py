"""The compression API: one validated config, one call that applies it to a
model, one object that reverts it (model surgery; no runner, no hook).

>>> config = CompressionConfig(method='hosvd', eps=0.8,
...                            layers=['decode_head.conv_cat'])
>>> applied = apply_compression(model, config)   # doctest: +SKIP
>>> applied.layers        # path -> CompressedConv2d / CompressedLinear
>>> applied.set_norm_eval()   # after every model.train()
>>> applied.remove()      # plain nn.Conv2d / nn.Linear again, same Parameters

:func:`apply_compression` freezes the model (``freeze`` or ``num_layers``),
installs the compressed layers and the ``asi`` tracker
(:func:`~mmseg_hosvd.surgery.install_compression`), the lean-backward
modules (:func:`~mmseg_hosvd.lean_backward.install_lean_backward`) and,
with ``lean_loss``, the lean-loss segmentor class
(:func:`~mmseg_hosvd.lean_loss.install_lean_loss`) and, with
``split_concat``, the split decode-head classes
(:func:`~mmseg_hosvd.split_concat.install_split_concat`) and, with
``frozen_chunk`` / ``fold_frozen_norms``, the frozen-part forward
(:func:`~mmseg_hosvd.frozen_forward.install_frozen_forward`) and, with
``activation_checkpointing``, checkpointed trainable blocks
(:func:`~mmseg_hosvd.checkpointing.checkpoint_modules`), last;
``step_in_backward`` needs the optimizer and is installed by the hook or
:class:`~mmseg_hosvd.bench.TrainingStep`. The config itself is
:class:`~mmseg_hosvd.compression_config.CompressionConfig`. Every replacement
keeps the Parameter objects and ``state_dict`` keys, so an optimizer built
before, a DDP wrapper built after, and checkpoints are unaffected.
:class:`~mmseg_hosvd.engine.ActivationCompressionHook` is the mmengine
adapter of this module.
"""
from dataclasses import dataclass, field
from typing import Any, Dict, List, Optional, Sequence

import torch
import torch.nn as nn

from .checkpointing import (checkpoint_modules, checkpoint_paths,
                            remove_checkpointing)
from .compat import prepare_mmseg
from .compression_config import CompressionConfig, LayerEntry
from .frozen_forward import (FrozenForward, install_frozen_forward,
                             remove_frozen_forward)
from .layer_paths import (classifier_paths, last_layer_paths,
                          layer_execution_order, resolve_layers)
from .lean_backward import (LeanBackward, install_lean_backward,
                            remove_lean_backward)
from .lean_loss import install_lean_loss, remove_lean_loss
from .ops import VANILLA
from .split_concat import (SplitConcat, install_split_concat,
                           remove_split_concat)
from .unused_features import (FeatureRelease, install_feature_release,
                              remove_feature_release)
from .surgery import (CompressedLayer, apply_freeze, batch_norms,
                      check_methods, check_trainable, compression_state_dict,
                      freeze_all_but, install_compression,
                      load_compression_state_dict, remove_compression,
                      set_norm_eval)

prepare_mmseg()  # before mmseg.models (mmcv.ops fallback)

from mmseg.models.segmentors import EncoderDecoder  # noqa: E402  # isort: skip

__all__ = ['CompressionConfig', 'AppliedCompression', 'apply_compression']


@dataclass
class AppliedCompression:
    """What :func:`apply_compression` changed in ``model``, and how to
    undo it.

    Attributes:
        model: the (unwrapped) model.
        config: the applied config.
        layers: the installed layers by path.
        lean: what ``lean_backward`` installed.
        norms: the BatchNorms kept in eval mode (``norm_eval``).
    """
    model: nn.Module
    config: CompressionConfig
    layers: Dict[str, CompressedLayer]
    lean: LeanBackward
    norms: List[nn.Module] = field(default_factory=list)
    requires_grad: Dict[str, bool] = field(default_factory=dict)
    lean_loss_installed: bool = False
    originals: Dict[str, nn.Module] = field(default_factory=dict)
    frozen: Optional[FrozenForward] = None
    split: SplitConcat = field(default_factory=SplitConcat)
    features: FeatureRelease = field(default_factory=FeatureRelease)
    checkpointed: List[str] = field(default_factory=list)

    def set_norm_eval(self) -> None:
        """Put the BatchNorms back in eval mode (call after every
        ``model.train()``); nothing without ``norm_eval``."""
        set_norm_eval(self.norms)

    def trainable_parameter_names(self) -> List[str]:
        return [n for n, p in self.model.named_parameters()
                if p.requires_grad]

    def state_dict(self) -> Dict[str, Any]:
        """The ``asi`` state (ranks, bases): tensors only, ``{}`` if none."""
        return compression_state_dict(self.model)

    def load_state_dict(self, state: Dict[str, Any]) -> None:
        """Restore :meth:`state_dict` output."""
        load_compression_state_dict(self.model, state)

    def summary(self) -> str:
        verb = 'counted' if self.config.method == VANILLA else 'compressed'
        return (f'method={self.config.method}, {len(self.layers)} layer(s) '
                f'{verb}: {", ".join(self.layers)}; '
                f'{len(self.trainable_parameter_names())} trainable '
                f'parameter tensor(s); BN eval: {self.config.norm_eval}; '
                f'{self.lean.summary()}; lean loss: {self.config.lean_loss}; '
                f'{self.split.summary()}; {self.features.summary()}' +
                ('' if self.frozen is None else
                 f'; {self.frozen.summary()}') +
                (f'; checkpointed: {", ".join(self.checkpointed)}'
                 if self.checkpointed else ''))

    def remove(self) -> None:
        """Revert every swap: the lean-loss class, the lean-backward
        modules, the compressed layers (the original ``nn.Conv2d`` /
        ``nn.Linear`` modules, which hold the same Parameters) and
        attention classes; restore each parameter's ``requires_grad``."""
        remove_checkpointing(self.model, self.checkpointed)
        self.checkpointed = []
        if self.frozen is not None:
            remove_frozen_forward(self.model, self.frozen)
        remove_feature_release(self.features)
        remove_split_concat(self.model, self.split)
        if self.lean_loss_installed:
            remove_lean_loss(self.model)
        remove_lean_backward(self.model, self.lean)
        remove_compression(self.model)
        for path, module in self.originals.items():
            parent, _, name = path.rpartition('.')
            setattr(self.model.get_submodule(parent) if parent else
                    self.model, name, module)
        for name, param in self.model.named_parameters():
            if name in self.requires_grad:
                param.requires_grad_(self.requires_grad[name])
        self.layers = {}
        self.norms = []


def _trace_forward(model: nn.Module, size: Sequence[int]) -> None:
    """One eval-mode, no-grad ``model(inputs, mode='tensor')`` on zeros of
    (1, 3, H, W)."""
    param = next(model.parameters())
    inputs = torch.zeros(1, 3, *size, device=param.device, dtype=param.dtype)
    was_training = model.training
    model.eval()
    try:
        with torch.no_grad():
            model(inputs, mode='tensor')
    finally:
        model.train(was_training)


def _freeze(model: nn.Module, config: CompressionConfig) -> List[LayerEntry]:
    """Freeze ``model`` as ``config`` says; return the layer entries."""
    if config.num_layers is None:
        apply_freeze(model, config.freeze)
        return list(config.layers)
    order = layer_execution_order(
        model, lambda: _trace_forward(model, config.trace_size))
    layers = last_layer_paths(order, config.num_layers)
    freeze_all_but(model, layers + classifier_paths(model))
    return list(layers)


def apply_compression(model: nn.Module,
                      config: CompressionConfig,
                      step_guard: bool = False) -> AppliedCompression:
    """Freeze ``model`` (unwrapped) and install everything ``config``
    asks for (see the module docstring).

    Args:
        model: an mmseg segmentor, not wrapped by DDP.
        config: the validated choices.
        step_guard: an optimizer step guard
            (:class:`~mmseg_hosvd.engine.NonFiniteStepGuardHook`) enforces
            ``config.non_finite``: the layers then never raise, they flag a
            non-finite input (ops mode ``'skip'``) so that the guard can
            name the iteration, rank and first non-finite tensor.

    Raises:
        ValueError: a path that does not exist or stands for no layer, a
            listed layer that is frozen, a method a linear does not take.
    """
    requires_grad = {n: p.requires_grad for n, p in model.named_parameters()}
    entries = _freeze(model, config)
    specs = resolve_layers(model, entries, config.eps, config.radius)
    check_trainable(model, specs)
    check_methods(model, specs, config.method)
    originals = {path: model.get_submodule(path) for spec in specs
                 for path in spec.layer_paths}
    layers = install_compression(
        model, specs, config.method, share_inputs=config.share_inputs,
        subspaces=config.subspace_tracker(),
        non_finite='skip' if step_guard else config.non_finite)
    lean = install_lean_backward(model, config.lean_backward,
                                 fold_norms=config.norm_eval)
    lean_loss_installed = False
    if config.lean_loss:
        lean_loss_installed = type(model) is EncoderDecoder
        install_lean_loss(model)
    frozen = install_frozen_forward(model, config.frozen_chunk,
                                    config.fold_frozen_norms,
                                    config.norm_eval)
    norms = batch_norms(model) if config.norm_eval else []
    split = install_split_concat(model, config.split_concat)
    features = (install_feature_release(model)
                if config.release_unused_features else FeatureRelease(
                    reason='release_unused_features=False'))
    checkpointed = []
    if config.activation_checkpointing is not None:
        checkpointed = checkpoint_modules(model, checkpoint_paths(
            model, config.activation_checkpointing))
    return AppliedCompression(model, config, layers, lean, norms,
                              requires_grad, lean_loss_installed, originals,
                              frozen, split, features, checkpointed)
