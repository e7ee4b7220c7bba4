"""Named row sets of the memory benchmark.

A preset is a list of :class:`PresetRow` s: the method and variant flags of
each row, run for every model and setup. ``which-to-pick`` is the README's
"Which to pick" table: plain partial fine-tuning and what PyTorch and
MMSegmentation already offer (activation checkpointing, mixed precision)
beside the compression methods in their default and best modes;
``which-to-pick-short`` keeps five of its rows (vanilla, checkpointing,
vanilla AMP, HOSVD in its leanest mode, with and without AMP).
"""
from dataclasses import dataclass
from typing import Dict, Optional, Tuple


@dataclass(frozen=True)
class PresetRow:
    """One row of a preset (the model and setup come from the run).

    Args:
        method: a benchmark method (``'checkpoint'``: vanilla with its
            trainable modules under ``torch.utils.checkpoint``).
        eps: svd/hosvd/asi threshold, None for the others.
        lean_backward: the compression hook's ``lean_backward``.
        lean_loss: the compression hook's ``lean_loss``.
        amp: bf16 autocast on the CPU, ``AmpOptimWrapper`` on CUDA.
    """
    method: str
    eps: Optional[float] = None
    lean_backward: str = 'off'
    lean_loss: bool = False
    amp: bool = False


PRESETS: Dict[str, Tuple[PresetRow, ...]] = {
    'which-to-pick': (
        PresetRow('vanilla'),
        PresetRow('vanilla', lean_backward='exact', lean_loss=True),
        PresetRow('checkpoint'),
        PresetRow('vanilla', amp=True),
        PresetRow('gradient_filter', lean_backward='exact'),
        PresetRow('hosvd', 0.8, lean_backward='exact'),
        PresetRow('hosvd', 0.8, lean_backward='all', lean_loss=True),
        PresetRow('asi', 0.8, lean_backward='all', lean_loss=True),
        PresetRow('hosvd', 0.8, lean_backward='all', lean_loss=True,
                  amp=True),
    ),
    # the same comparison in five rows, for the heaviest models on a CPU
    'which-to-pick-short': (
        PresetRow('vanilla'),
        PresetRow('checkpoint'),
        PresetRow('vanilla', amp=True),
        PresetRow('hosvd', 0.8, lean_backward='all', lean_loss=True),
        PresetRow('hosvd', 0.8, lean_backward='all', lean_loss=True,
                  amp=True),
    ),
}
