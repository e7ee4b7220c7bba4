"""The compression hook: freezing, compressed layers, lean modules, BN eval."""
from typing import Dict, List, Optional, Sequence, Tuple, Union

import torch
import torch.nn as nn
from mmengine.hooks import Hook
from mmengine.model import is_model_wrapper
from mmengine.registry import HOOKS
from torch.nn.parallel import DistributedDataParallel

from ..ops import (ASI, MODULE_METHODS, NON_FINITE_MODES, VANILLA,
                   SubspaceTracker, check_eps)
from ..lean_backward import (LeanBackward, check_lean_backward,
                             install_lean_backward)
from ..lean_loss import install_lean_loss
from ..ops.gradient_filter import check_radius
from ..surgery import (CompressedLayer, apply_freeze, batch_norms,
                       check_methods, check_trainable, classifier_paths,
                       compression_state_dict, freeze_all_but,
                       install_compression, last_layer_paths,
                       layer_execution_order, load_compression_state_dict,
                       optional_list, resolve_layers, set_norm_eval,
                       trainable_parameter_names)
from .guard_hook import NonFiniteStepGuardHook, step_guard

LayerEntry = Union[str, dict]
#: key of the compression state (``asi`` ranks and bases) in checkpoints
CHECKPOINT_KEY = 'compression_state'


@HOOKS.register_module()
class ActivationCompressionHook(Hook):
    """Freeze a model, keep its BN layers in eval mode and compress the saved
    inputs of its trainable convs and linears (CNNs and transformer
    segmentors alike: SegFormer's MiT, Swin).

    Runs in ``before_run``, i.e. after the runner built the optimizer and
    wrapped the model, and before ``load_from``/``--resume``: convs are
    replaced by :class:`~mmseg_hosvd.ops.CompressedConv2d` s and linears by
    :class:`~mmseg_hosvd.ops.CompressedLinear` s sharing the same Parameter
    objects, so the optimizer, DDP and state-dict keys are unaffected (an
    ``nn.MultiheadAttention`` whose ``out_proj`` is compressed becomes a
    :class:`~mmseg_hosvd.ops.attention.CompressedMultiheadAttention`, which
    calls it as a module; its in-projection is not compressed).

    The ``asi`` state (per-layer ranks and bases, plain attributes, not in
    ``state_dict``) goes into every checkpoint as ``checkpoint[
    'compression_state']`` (tensors only) and is restored from it on
    ``--resume`` / ``load_from``.

    Args:
        method: ``'vanilla'`` (freezing only; the listed layers are counted,
            not compressed), ``'gradient_filter'``, ``'svd'``, ``'hosvd'`` or
            ``'asi'`` (Activation Subspace Iteration: fixed ranks, one
            warm-started subspace-iteration step per training step).
        eps: explained-variance threshold in (0, 1] for ``svd``/``hosvd``;
            for ``asi`` the rank rule of each layer's first step.
        budget_mib: ``asi`` only: instead of ``eps``, allocate the ranks of
            all layers under this total memory (MiB of fp32 factors and
            cores), by a knapsack over per-layer (ranks, error) choices made
            from the first step's spectra; the first step uses ``eps``.
        seed: ``asi`` only: seed of the random starting bases (a
            :class:`torch.Generator` per layer; the global RNG is untouched).
        init: ``asi`` only: ``'random'`` bases, or ``'hosvd'`` (the exact
            factors of the first step).
        share_inputs: decompose an input read by several compressed convs
            (e.g. DeepLabV3's ASPP branches) once.
        radius: Gradient Filter patch size (>= 1).
        layers: module paths to compress: an ``nn.Conv2d``, an
            ``nn.Linear``, or a block standing for its layers (``ConvModule``,
            ResNet ``BasicBlock``, ``nn.MultiheadAttention`` and mmcv's
            wrapper (the out-projection), mmcv ``FFN``, Swin ``WindowMSA`` /
            ``ShiftWindowMSA`` / ``SwinBlock``, MiT ``MixFFN`` /
            ``TransformerEncoderLayer``; see :mod:`mmseg_hosvd.layer_paths`);
            an entry may be ``dict(path=..., eps=..., radius=...,
            method=...)`` to override ``eps``/``radius``/``method`` for that
            entry's layers (e.g. ``method='vanilla'`` for a linear in a
            ``gradient_filter`` config: the Gradient Filter is for convs
            only).
        num_layers: instead of ``layers`` and ``freeze``: train and compress
            the ``num_layers`` layers (convs, linears, attention
            out-projections) nearest the loss in forward execution order
            (found by tracing one forward pass); everything else is frozen
            except the classifier ``conv_seg`` (trained, never
            compressed).
        freeze: module paths frozen in order; ``'~path'`` unfreezes.
        norm_eval: keep every BatchNorm layer in eval mode while training
            (running statistics frozen), as mmseg's ``norm_eval`` does for
            backbones; mmseg 1.x decode heads have no such option.
        trace_size: (H, W) of the dummy input traced for ``num_layers``.
        non_finite: what a NaN/Inf input to a compressed conv does:
            ``'raise'``: HOSVD/SVD raise ``FloatingPointError`` naming the
            layer (the other methods let NaN propagate into the weights);
            ``'skip'``: the convs keep nothing of it and give a NaN weight
            gradient, and the companion
            :class:`~.guard_hook.NonFiniteStepGuardHook` (which the run must
            register, else ``before_train`` raises ValueError) skips every
            optimizer step whose gradients are not all finite.

        lean_backward: make the step keep only what backward needs
            (:mod:`mmseg_hosvd.lean_backward`): ``'exact'`` (default; the
            gradients are those of ``'off'``) folds eval-mode BatchNorms into
            the conv before them (not a trainable BatchNorm after a
            compressed conv), gives ReLU/ReLU6 1-bit masks and adaptive
            average pooling shape-only backward; ``'all'`` also folds
            trainable BatchNorms after compressed convs (their ``gamma``
            gradient then comes from the compressed input); ``'off'``.
            Folding needs ``norm_eval=True``.
        lean_loss: compute the decode (and auxiliary) heads' resize +
            cross-entropy without full-resolution tensors
            (:func:`mmseg_hosvd.lean_loss.install_lean_loss`): only the
            low-resolution logits are kept; upsampling and softmax are
            recomputed in backward, one sample at a time. Loss and
            gradients are those of mmseg's ``resize`` + ``CrossEntropyLoss``.
            Needs a plain ``EncoderDecoder`` with softmax
            ``CrossEntropyLoss`` heads (anything else raises, naming it).

    Attributes:
        lean: what ``lean_backward`` installed (after ``install``).
        compressed_paths: the paths of the installed layers.
    """

    priority = 'VERY_HIGH'

    def __init__(self,
                 method: str = 'hosvd',
                 eps: float = 0.8,
                 radius: int = 2,
                 layers: Optional[Sequence[LayerEntry]] = None,
                 num_layers: Optional[int] = None,
                 freeze: Optional[Sequence[str]] = None,
                 norm_eval: bool = True,
                 trace_size: Tuple[int, int] = (64, 64),
                 budget_mib: Optional[float] = None,
                 seed: int = 0,
                 init: str = 'random',
                 share_inputs: bool = True,
                 non_finite: str = 'skip',
                 lean_backward: str = 'exact',
                 lean_loss: bool = False) -> None:
        self.lean_backward = check_lean_backward(lean_backward)
        if not isinstance(lean_loss, bool):
            raise ValueError(
                f'lean_loss: expected True or False, got {lean_loss!r}')
        self.lean_loss = lean_loss
        self.lean: Optional[LeanBackward] = None
        if non_finite not in NON_FINITE_MODES:
            raise ValueError(f'non_finite: expected one of '
                             f'{NON_FINITE_MODES}, got {non_finite!r}')
        self.non_finite = non_finite
        if method not in MODULE_METHODS:
            raise ValueError(f'method: unknown method {method!r}; expected '
                             f'one of {MODULE_METHODS}')
        if budget_mib is not None and method != ASI:
            raise ValueError(f'budget_mib is for method={ASI!r}, got '
                             f'method={method!r}')
        # validates budget_mib, seed and init
        SubspaceTracker(budget_mib=budget_mib, seed=seed, init=init)
        self.budget_mib = budget_mib
        self.seed = seed
        self.init = init
        self.share_inputs = share_inputs
        self.method = method
        self.eps = check_eps(eps)
        self.radius = check_radius(radius)
        self.layers = optional_list(layers, 'layers', (str, dict))
        self.freeze = optional_list(freeze, 'freeze', (str, ))
        if num_layers is not None:
            if self.layers:
                raise ValueError('layers and num_layers are exclusive: give '
                                 'explicit layers or num_layers, not both')
            if self.freeze:
                raise ValueError('freeze and num_layers are exclusive: '
                                 'num_layers freezes all but the last layers')
        for index, entry in enumerate(self.layers):
            if not isinstance(entry, dict):
                continue
            if entry.get('method', method) not in MODULE_METHODS:
                raise ValueError(f'layers[{index}]: unknown method '
                                 f"{entry['method']!r}; expected one of "
                                 f'{MODULE_METHODS}')
            try:
                if 'eps' in entry:
                    check_eps(entry['eps'])
                if 'radius' in entry:
                    check_radius(entry['radius'])
            except ValueError as error:
                raise ValueError(f'layers[{index}]: {error}') from None
        self.num_layers = num_layers
        if num_layers is not None and (isinstance(num_layers, bool)
                                       or not isinstance(num_layers, int)
                                       or num_layers < 1):
            raise ValueError(
                f'num_layers: expected an int >= 1, got {num_layers!r}')
        self.norm_eval = norm_eval
        self.trace_size = tuple(trace_size)
        self.compressed_paths: List[str] = []
        self._norms = []

    def before_run(self, runner) -> None:
        """Freeze the model and install the compressed layers and the lean
        modules (:meth:`install`), on the unwrapped model.

        Args:
            runner (Runner): The runner of the training process.
        """
        self._check_ddp(runner.model)
        model = runner.model.module if is_model_wrapper(
            runner.model) else runner.model
        installed = self.install(model)
        trainable = trainable_parameter_names(model)
        runner.logger.info(
            f'{type(self).__name__}: method={self.method}, '
            f'{len(installed)} layer(s) '
            f'{"counted" if self.method == VANILLA else "compressed"}: '
            f'{", ".join(installed)}; {len(trainable)} trainable '
            f'parameter tensor(s); BN eval: {self.norm_eval}; '
            f'{self.lean.summary()}; lean loss: {self.lean_loss}')

    def install(self, model: nn.Module) -> Dict[str, CompressedLayer]:
        """Freeze ``model`` (unwrapped) and install the compressed layers;
        return them by layer path. ``before_run`` calls this; benchmarks may
        call it on a bare model."""
        if self.num_layers is not None:
            order = layer_execution_order(
                model, lambda: self._trace_forward(model))
            layers = last_layer_paths(order, self.num_layers)
            freeze_all_but(model, layers + classifier_paths(model))
        else:
            layers = self.layers
            apply_freeze(model, self.freeze)
        specs = resolve_layers(model, layers, self.eps, self.radius)
        check_trainable(model, specs)
        check_methods(model, specs, self.method)
        subspaces = SubspaceTracker(budget_mib=self.budget_mib,
                                    seed=self.seed, init=self.init)
        installed = install_compression(model, specs, self.method,
                                        share_inputs=self.share_inputs,
                                        subspaces=subspaces,
                                        non_finite=self.non_finite)
        self.compressed_paths = list(installed)
        self.lean = install_lean_backward(model, self.lean_backward,
                                          fold_norms=self.norm_eval)
        if self.lean_loss:
            install_lean_loss(model)
        self._norms = batch_norms(model) if self.norm_eval else []
        return installed

    def set_norm_eval(self) -> None:
        """Put the model's BN layers back in eval mode (``norm_eval``)."""
        set_norm_eval(self._norms)

    def state_dict(self, model: nn.Module) -> dict:
        """The compression state of ``model`` (unwrapped): tensors only."""
        return compression_state_dict(model)

    def load_state_dict(self, model: nn.Module, state: dict) -> None:
        """Restore :meth:`state_dict` output into ``model`` (unwrapped)."""
        load_compression_state_dict(model, state)

    def before_save_checkpoint(self, runner, checkpoint: dict) -> None:
        """Put the ``asi`` state into ``checkpoint['compression_state']``.

        Args:
            runner (Runner): The runner of the training process.
            checkpoint (dict): The checkpoint about to be saved.
        """
        state = self.state_dict(self._unwrap(runner.model))
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
        if not state or self.method != ASI or not self.compressed_paths:
            return
        self.load_state_dict(self._unwrap(runner.model), state)
        runner.logger.info(
            f'{type(self).__name__}: asi state of '
            f'{len(state.get("asi", {}))} layer(s) restored from the '
            'checkpoint')

    @staticmethod
    def _unwrap(model: nn.Module) -> nn.Module:
        return model.module if is_model_wrapper(model) else model

    def before_train(self, runner) -> None:
        """With ``non_finite='skip'``, check that the run registers the
        companion :class:`~.guard_hook.NonFiniteStepGuardHook`.

        Args:
            runner (Runner): The runner of the training process.

        Raises:
            ValueError: ``non_finite='skip'`` without the guard hook (the
                NaN weight gradients would reach the weights).
        """
        if self.non_finite == 'skip' and step_guard(runner) is None:
            raise ValueError(
                f"{type(self).__name__}: non_finite='skip' needs a "
                f'{NonFiniteStepGuardHook.__name__} in the run (add '
                "default_hooks.non_finite_guard=dict(type='"
                f"{NonFiniteStepGuardHook.__name__}')), or set "
                "non_finite='raise'")

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

    def _trace_forward(self, model: torch.nn.Module) -> None:
        param = next(model.parameters())
        inputs = torch.zeros(1, 3, *self.trace_size, device=param.device,
                             dtype=param.dtype)
        was_training = model.training
        model.eval()
        try:
            with torch.no_grad():
                model(inputs, mode='tensor')
        finally:
            model.train(was_training)

    @staticmethod
    def _check_ddp(wrapped: torch.nn.Module) -> None:
        if isinstance(wrapped, DistributedDataParallel) and \
                not wrapped.find_unused_parameters:
            raise ValueError(
                'model_wrapper_cfg: the model is wrapped by DDP with '
                'find_unused_parameters=False, but the frozen parameters '
                'receive no gradient; set model_wrapper_cfg=dict('
                "type='MMDistributedDataParallel', "
                'find_unused_parameters=True)')
