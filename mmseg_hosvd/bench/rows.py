"""What the benchmarks run: their methods, one row's settings and the named
row sets (presets) of the memory benchmark.

Method names come from the plugin's registry (:data:`mmseg_hosvd.ops.
METHOD_SPECS`); the memory benchmark adds one peer, :data:`CHECKPOINT`: the
vanilla leaf config with its trainable modules under
``torch.utils.checkpoint``. A :class:`BenchmarkRow` is one row: a method and
its variant flags (lean backward, lean loss, mixed precision), for a model
and setup. ``which-to-pick`` is the "Which to pick" table of
docs/benchmarks.md: plain partial fine-tuning and what PyTorch and
MMSegmentation already offer
(activation checkpointing, mixed precision) beside the compression methods
in their default and best modes; ``which-to-pick-short`` keeps five of its
rows (vanilla, checkpointing, vanilla AMP, HOSVD in its leanest mode, with
and without AMP); ``frontier`` puts the plain tools (vanilla,
checkpointing, vanilla AMP) beside HOSVD and ASI in their leanest mode, to
be run at several micro-batches.
"""
import dataclasses
import itertools
from typing import Any, Dict, List, Optional, Sequence, Tuple

from ..ops import METHOD_SPECS, Method, method_spec

#: the compression hook's default ``lean_backward`` (the benchmarks' too)
DEFAULT_LEAN_BACKWARD = 'exact'
#: the memory benchmark's activation-checkpointing peer
CHECKPOINT = 'checkpoint'
#: where that peer places ``torch.utils.checkpoint``: one per block
#: (10L, batch 2, 256x256, CPU step peak: FCN 66.8 MiB per block, 67.9 per
#: segment; DeepLabV3 62.5 both; 86.8 and 72.2 without checkpointing)
CHECKPOINT_PLACEMENT = 'block'
#: the compression methods, in the registry's order
METHODS = tuple(method.value for method in METHOD_SPECS)
#: the memory benchmark's methods: the compression methods and the peer
MEMORY_METHODS = (Method.VANILLA.value, CHECKPOINT) + tuple(
    m for m in METHODS if m != Method.VANILLA.value)


def is_low_rank(method: str) -> bool:
    """Whether ``method`` keeps low-rank factors (it takes an eps)."""
    return method != CHECKPOINT and method_spec(method).low_rank


def config_method(method: str) -> str:
    """The method of the leaf config a benchmark method runs
    (:data:`CHECKPOINT`: the vanilla one, its trainable modules then
    checkpointed)."""
    return Method.VANILLA.value if method == CHECKPOINT else method


@dataclasses.dataclass(frozen=True)
class BenchmarkRow:
    """One benchmark row (a preset's rows leave model and setup None).

    Args:
        method: a method of :data:`MEMORY_METHODS`.
        eps: svd/hosvd/asi threshold, None for the others.
        lean_backward: the compression hook's ``lean_backward``.
        lean_loss: the compression hook's ``lean_loss``.
        amp: bf16 autocast on the CPU, ``AmpOptimWrapper`` on CUDA.
        model: a key of :data:`~.configs.MODEL_CONFIGS`.
        setup: one of :data:`~.configs.SETUPS`.
        micro_batch: samples per micro-batch of gradient accumulation
            (None: the whole batch in one ``train_step``).
        options: more keys of the row's compression hook, as ``(key,
            value)`` pairs (e.g. ``(('split_concat', True),)``).
    """
    method: str
    eps: Optional[float] = None
    lean_backward: str = DEFAULT_LEAN_BACKWARD
    lean_loss: bool = False
    amp: bool = False
    model: Optional[str] = None
    setup: Optional[str] = None
    micro_batch: Optional[int] = None
    options: Tuple[Tuple[str, Any], ...] = ()

    @property
    def plain(self) -> bool:
        """Plain MMSegmentation / PyTorch: vanilla or checkpointing, with
        no lean mode and no option of the plugin (it then runs with
        :data:`PLAIN_OPTIONS`)."""
        return (self.method in (Method.VANILLA.value, CHECKPOINT)
                and self.lean_backward == 'off' and not self.lean_loss
                and not self.options)

    def hook_options(self) -> Dict[str, Any]:
        """The keys to set on the row's compression hook."""
        return dict(PLAIN_OPTIONS if self.plain else self.options)

    def at(self, model: str, setup: str,
           micro_batch: Optional[int] = None) -> 'BenchmarkRow':
        """This row for ``model``, ``setup`` and ``micro_batch``."""
        return dataclasses.replace(self, model=model, setup=setup,
                                   micro_batch=micro_batch)


#: the compression hook keys of a plain row: the plugin's exact memory
#: options that are on by default, off
PLAIN_OPTIONS = (('release_unused_features', False), )
#: the plugin's exact memory options of the frontier's compressed rows
BEST_OPTIONS = (('split_concat', True), )

_VANILLA, _GRADIENT_FILTER, _HOSVD, _ASI = (
    m.value for m in (Method.VANILLA, Method.GRADIENT_FILTER, Method.HOSVD,
                      Method.ASI))
_OFF = dict(lean_backward='off')
_LEANEST = dict(lean_backward='all', lean_loss=True)
PRESETS: Dict[str, Tuple[BenchmarkRow, ...]] = {
    'which-to-pick': (
        BenchmarkRow(_VANILLA, **_OFF),
        BenchmarkRow(_VANILLA, lean_backward='exact', lean_loss=True),
        BenchmarkRow(CHECKPOINT, **_OFF),
        BenchmarkRow(_VANILLA, amp=True, **_OFF),
        BenchmarkRow(_GRADIENT_FILTER, lean_backward='exact'),
        BenchmarkRow(_HOSVD, 0.8, lean_backward='exact'),
        BenchmarkRow(_HOSVD, 0.8, **_LEANEST),
        BenchmarkRow(_ASI, 0.8, **_LEANEST),
        BenchmarkRow(_HOSVD, 0.8, amp=True, **_LEANEST),
    ),
    # the same comparison in five rows, for the heaviest models on a CPU
    'which-to-pick-short': (
        BenchmarkRow(_VANILLA, **_OFF),
        BenchmarkRow(CHECKPOINT, **_OFF),
        BenchmarkRow(_VANILLA, amp=True, **_OFF),
        BenchmarkRow(_HOSVD, 0.8, **_LEANEST),
        BenchmarkRow(_HOSVD, 0.8, amp=True, **_LEANEST),
    ),
    # the frontier: plain tools against the plugin's best modes (run with
    # --micro-batch 1 2 4 8)
    'frontier': (
        BenchmarkRow(_VANILLA, **_OFF),
        BenchmarkRow(CHECKPOINT, **_OFF),
        BenchmarkRow(_VANILLA, amp=True, **_OFF),
        BenchmarkRow(_HOSVD, 0.8, options=BEST_OPTIONS, **_LEANEST),
        BenchmarkRow(_ASI, 0.8, options=BEST_OPTIONS, **_LEANEST),
    ),
}


def memory_rows(models: Sequence[str], setups: Sequence[str],
                methods: Sequence[str] = (), eps: Sequence[float] = (),
                lean_backward: Sequence[str] = (DEFAULT_LEAN_BACKWARD, ),
                lean_loss: Sequence[bool] = (False, ), amp: bool = False,
                preset: Optional[str] = None,
                micro_batches: Sequence[Optional[int]] = (None, ),
                options: Tuple[Tuple[str, Any], ...] = ()
                ) -> List[BenchmarkRow]:
    """The rows in run order: a preset's rows for every model and setup, or
    the cross product, the variants (lean_backward modes, lean loss off/on,
    the amp twin, the micro-batches) of one combination next to each
    other; ``options`` (hook keys) go to every row that is not plain."""
    pairs = list(itertools.product(models, setups))
    if preset is not None:
        return [row.at(model, setup, micro) for model, setup in pairs
                for row in PRESETS[preset] for micro in micro_batches]
    amps = (False, True) if amp else (False, )
    rows = [
        BenchmarkRow(method, e, lean, loss, twin, model, setup, micro)
        for model, setup in pairs for method in methods
        for e in (eps if is_low_rank(method) else [None])
        for lean in lean_backward for loss in lean_loss for twin in amps
        for micro in micro_batches
    ]
    return [row if row.plain else dataclasses.replace(row, options=options)
            for row in rows]
