"""The floor of a training step's memory: plain inference of its batch.

:func:`inference_peak_bytes` builds the config's model as plain
MMSegmentation builds it (no plugin hook applied: nothing frozen, nothing
compressed), puts it in eval mode and measures, with a
:class:`~mmseg_hosvd.peak_memory.PeakMemoryMeter`, the data preprocessing
and the ``mode='tensor'`` forward of one batch under ``torch.no_grad()``:
what any forward of that batch needs, whatever a training step saves.
"""
import copy
from typing import Union

import torch

from ..peak_memory import PeakMemoryMeter


def inference_peak_bytes(cfg, data: dict,
                         device: Union[str, torch.device] = 'cpu') -> int:
    """Peak bytes allocated above what was held while plain ``cfg.model``
    preprocesses ``data`` and runs its no-grad, eval-mode ``'tensor'``
    forward.

    Args:
        cfg: an mmengine ``Config`` with ``model``.
        data: a batch as the dataloader yields it.
        device: where the model runs.
    """
    from mmseg.registry import MODELS
    model = MODELS.build(copy.deepcopy(cfg.model)).to(device).eval()
    meter = PeakMemoryMeter(device)
    with torch.no_grad(), meter:
        batch = model.data_preprocessor(data, True)
        model(batch['inputs'], batch['data_samples'], mode='tensor')
        del batch
    return int(meter.peak_bytes)
