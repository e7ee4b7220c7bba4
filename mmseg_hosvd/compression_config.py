"""The choices of a compressed fine-tuning run: :class:`CompressionConfig`,
validated once (model surgery's input; nothing here touches a model)."""
import dataclasses
from dataclasses import dataclass
from typing import Any, Dict, Optional, Tuple, Union

from .checkpointing import PLACEMENTS
from .frozen_forward import check_frozen_chunk
from .lean_backward import check_lean_backward
from .ops import (ASI, MODULE_METHODS, NON_FINITE_MODES, VANILLA,
                  SubspaceTracker, check_eps)
from .ops.gradient_filter import check_radius
from .surgery import optional_list

LayerEntry = Union[str, dict]


@dataclass(frozen=True)
class CompressionConfig:
    """Every choice of a compressed fine-tuning run, validated once.

    Args:
        method: ``'vanilla'`` (freezing only; the listed layers are counted,
            not compressed), ``'gradient_filter'``, ``'svd'``, ``'hosvd'``
            or ``'asi'`` (fixed ranks, one warm-started subspace-iteration
            step per training step).
        eps: explained-variance threshold in (0, 1] for ``svd``/``hosvd``;
            for ``asi`` the rank rule of each layer's first step.
        radius: Gradient Filter patch size (>= 1).
        layers: module paths to compress: an ``nn.Conv2d``, an
            ``nn.Linear`` or a block standing for its layers (see
            :mod:`mmseg_hosvd.layer_paths`); an entry may be ``dict(path=,
            eps=, radius=, method=)`` overriding those for its layers.
        num_layers: instead of ``layers`` and ``freeze``: train and compress
            the ``num_layers`` layers nearest the loss in forward order
            (traced once); everything else is frozen except ``conv_seg``.
        freeze: module paths frozen in order; ``'~path'`` unfreezes.
        norm_eval: keep every BatchNorm in eval mode while training.
        trace_size: (H, W) of the dummy input traced for ``num_layers``.
        budget_mib: ``asi`` only: total MiB of fp32 factors and cores to
            allocate the ranks under (knapsack), instead of ``eps``.
        seed: ``asi`` only: seed of the random starting bases.
        init: ``asi`` only: ``'random'`` or ``'hosvd'`` starting bases.
        share_inputs: decompose an input read by several layers once.
        non_finite: what a step with a NaN/Inf input, loss or gradient
            does: ``'raise'`` stops before the optimizer step, naming the
            iteration, the rank and the first non-finite tensor; ``'skip'``
            skips that optimizer step on every rank. Enforced by
            :class:`~mmseg_hosvd.engine.NonFiniteStepGuardHook`, which
            :class:`~mmseg_hosvd.engine.ActivationCompressionHook` installs
            itself; without a runner, ``'raise'`` makes HOSVD/SVD/ASI layers
            raise on a non-finite input and ``'skip'`` gives their weight a
            NaN gradient (the caller must guard its optimizer).
        lean_backward: ``'exact'`` (default), ``'all'`` or ``'off'`` (see
            :mod:`mmseg_hosvd.lean_backward`); folding needs ``norm_eval``.
        lean_loss: the heads' resize + cross-entropy without
            full-resolution tensors (:mod:`mmseg_hosvd.lean_loss`).
        step_in_backward: take the optimizer step inside backward, one
            parameter at a time, freeing each gradient after its step
            (:mod:`mmseg_hosvd.step_in_backward`; installed with the
            optimizer by :class:`~mmseg_hosvd.engine.
            ActivationCompressionHook` or :class:`~mmseg_hosvd.bench.
            TrainingStep`, not by :func:`apply_compression`). Exactly the
            normal step; needs ``non_finite='raise'`` (a step cannot be
            skipped once earlier parameters were stepped).
        frozen_chunk: None, or run each maximal frozen module in training
            mode without grad on chunks of this many samples
            (:mod:`mmseg_hosvd.frozen_forward`); needs ``norm_eval``.
        fold_frozen_norms: frozen conv + eval BatchNorm pairs compute one
            folded conv (:mod:`mmseg_hosvd.frozen_forward`); needs
            ``norm_eval``.
        split_concat: compute the decode heads' concatenation convs as sums
            of per-branch convs, so the concatenation never exists
            (:mod:`mmseg_hosvd.split_concat`): ``True`` for every head that
            can be split, ``False``, or a list of head paths (each must be
            splittable).
        release_unused_features: in training, the backbone's (or neck's)
            outputs that no head reads (``in_index``) are dropped from its
            output tuple as soon as it returns
            (:mod:`mmseg_hosvd.unused_features`); nothing computed
            changes.
        activation_checkpointing: None, or ``'block'`` / ``'segment'``:
            run the trainable blocks (or the largest trainable modules)
            under non-reentrant ``torch.utils.checkpoint``, recomputing
            their forward in backward (:mod:`mmseg_hosvd.checkpointing`;
            exact gradients). Only with ``method='vanilla'``: a compressed
            layer would decompose its input twice (and ``asi`` step its
            bases twice).

    Raises:
        ValueError: naming the key and the bad value; also when the config
            compresses nothing (no ``layers``, no ``num_layers``), unless
            ``method='vanilla'`` with a ``freeze`` list (a freezing-only
            run).
    """
    method: str = 'hosvd'
    eps: float = 0.8
    radius: int = 2
    layers: Tuple[LayerEntry, ...] = ()
    num_layers: Optional[int] = None
    freeze: Tuple[str, ...] = ()
    norm_eval: bool = True
    trace_size: Tuple[int, int] = (64, 64)
    budget_mib: Optional[float] = None
    seed: int = 0
    init: str = 'random'
    share_inputs: bool = True
    non_finite: str = 'skip'
    lean_backward: str = 'exact'
    lean_loss: bool = False
    step_in_backward: bool = False
    frozen_chunk: Optional[int] = None
    fold_frozen_norms: bool = False
    split_concat: Union[bool, Tuple[str, ...]] = False
    release_unused_features: bool = True
    activation_checkpointing: Optional[str] = None

    @classmethod
    def from_dict(cls, values: Dict[str, Any]) -> 'CompressionConfig':
        """Build from a config dict (``None`` lists allowed); ValueError
        naming unknown keys."""
        names = [f.name for f in dataclasses.fields(cls)]
        unknown = sorted(set(values) - set(names))
        if unknown:
            raise ValueError(f'unknown compression key(s) {unknown}; '
                             f'allowed: {", ".join(names)}')
        return cls(**values)

    @classmethod
    def from_hook_cfg(cls, entry: Dict[str, Any]) -> 'CompressionConfig':
        """Build from an ``ActivationCompressionHook`` config entry: its
        keys less mmengine's ``type`` and ``priority``."""
        return cls.from_dict({k: v for k, v in dict(entry).items()
                              if k not in ('type', 'priority')})

    def __post_init__(self) -> None:
        check_lean_backward(self.lean_backward)
        if not isinstance(self.lean_loss, bool):
            raise ValueError(
                f'lean_loss: expected True or False, got {self.lean_loss!r}')
        self._check_split_concat()
        if not isinstance(self.release_unused_features, bool):
            raise ValueError('release_unused_features: expected True or '
                             f'False, got {self.release_unused_features!r}')
        if self.non_finite not in NON_FINITE_MODES:
            raise ValueError(f'non_finite: expected one of '
                             f'{NON_FINITE_MODES}, got {self.non_finite!r}')
        if self.method not in MODULE_METHODS:
            raise ValueError(f'method: unknown method {self.method!r}; '
                             f'expected one of {MODULE_METHODS}')
        if self.budget_mib is not None and self.method != ASI:
            raise ValueError(f'budget_mib is for method={ASI!r}, got '
                             f'method={self.method!r}')
        self.subspace_tracker()  # validates budget_mib, seed and init
        check_eps(self.eps)
        check_radius(self.radius)
        self._set('layers', tuple(optional_list(self.layers, 'layers',
                                                (str, dict))))
        self._set('freeze', tuple(optional_list(self.freeze, 'freeze',
                                                (str, ))))
        self._check_trace_size()
        self._check_layer_entries()
        self._check_num_layers()
        self._check_step_in_backward()
        self._check_frozen_forward()
        self._check_checkpointing()

    def _set(self, name: str, value: Any) -> None:
        object.__setattr__(self, name, value)  # normalising a frozen field

    def _check_split_concat(self) -> None:
        value = self.split_concat
        if isinstance(value, bool):
            return
        if not isinstance(value, (list, tuple)) or not all(
                isinstance(path, str) for path in value):
            raise ValueError('split_concat: expected True, False or a list '
                             f'of decode head paths, got {value!r}')
        self._set('split_concat', tuple(value))

    def _check_trace_size(self) -> None:
        size = self.trace_size
        if (not isinstance(size, (tuple, list)) or len(size) != 2
                or any(isinstance(s, bool) or not isinstance(s, int) or s < 1
                       for s in size)):
            raise ValueError('trace_size: expected (H, W), two ints >= 1, '
                             f'got {size!r}')
        self._set('trace_size', tuple(size))

    def _check_layer_entries(self) -> None:
        for index, entry in enumerate(self.layers):
            if not isinstance(entry, dict):
                continue
            if entry.get('method', self.method) not in MODULE_METHODS:
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

    def _check_num_layers(self) -> None:
        num = self.num_layers
        if num is not None:
            if self.layers:
                raise ValueError('layers and num_layers are exclusive: give '
                                 'explicit layers or num_layers, not both')
            if self.freeze:
                raise ValueError('freeze and num_layers are exclusive: '
                                 'num_layers freezes all but the last layers')
            if isinstance(num, bool) or not isinstance(num, int) or num < 1:
                raise ValueError(
                    f'num_layers: expected an int >= 1, got {num!r}')
        elif not self.layers and not (self.method == VANILLA
                                      and self.freeze):
            raise ValueError(
                f'layers / num_layers: method={self.method!r} has nothing '
                'to compress (no layers and no num_layers, or layers=[]); '
                'list the module paths in layers=[...] or set num_layers=N'
                " (method='vanilla' with a freeze list only freezes)")

    def _check_step_in_backward(self) -> None:
        if not isinstance(self.step_in_backward, bool):
            raise ValueError('step_in_backward: expected True or False, got '
                             f'{self.step_in_backward!r}')
        if self.step_in_backward and self.non_finite != 'raise':
            raise ValueError(
                "step_in_backward: needs non_finite='raise', got "
                f'non_finite={self.non_finite!r}: a step with a non-finite '
                'gradient cannot be skipped once the parameters backward '
                'reached first have been stepped')

    def _check_frozen_forward(self) -> None:
        check_frozen_chunk(self.frozen_chunk)
        if not isinstance(self.fold_frozen_norms, bool):
            raise ValueError('fold_frozen_norms: expected True or False, got '
                             f'{self.fold_frozen_norms!r}')
        for key in ('frozen_chunk', 'fold_frozen_norms'):
            if getattr(self, key) not in (None, False) and not self.norm_eval:
                raise ValueError(
                    f'{key} and norm_eval=False are incompatible: BatchNorms'
                    ' in training mode use batch statistics; set '
                    f'norm_eval=True or turn {key} off')

    def _check_checkpointing(self) -> None:
        placement = self.activation_checkpointing
        if placement is None:
            return
        if placement not in PLACEMENTS:
            raise ValueError('activation_checkpointing: expected None or one '
                             f'of {PLACEMENTS}, got {placement!r}')
        methods = {self.method} | {entry.get('method', self.method)
                                   for entry in self.layers
                                   if isinstance(entry, dict)}
        if methods != {VANILLA}:
            raise ValueError(
                f'activation_checkpointing={placement!r} needs '
                f"method='vanilla' (every layer), got {sorted(methods)}: a "
                'checkpointed block recomputes its forward, so a compressed '
                'layer in it would decompose its input twice')

    def subspace_tracker(self) -> SubspaceTracker:
        """A new ``asi`` state holder for this config."""
        return SubspaceTracker(budget_mib=self.budget_mib, seed=self.seed,
                               init=self.init)
