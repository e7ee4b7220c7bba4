"""CPU mixed precision as an optim wrapper a config can name.

mmengine's ``AmpOptimWrapper`` refuses to run without an accelerator;
:class:`CPUBFloat16OptimWrapper` is its CPU counterpart, registered in
mmengine's ``OPTIM_WRAPPERS`` when a config's ``custom_imports`` names
``mmseg_hosvd.engine``::

    optim_wrapper = dict(type='CPUBFloat16OptimWrapper',
                         optimizer=dict(type='SGD', lr=0.01))
"""
from contextlib import contextmanager
from typing import Iterator

import torch
import torch.nn as nn
from mmengine.optim import OptimWrapper
from mmengine.registry import OPTIM_WRAPPERS


@OPTIM_WRAPPERS.register_module()
class CPUBFloat16OptimWrapper(OptimWrapper):
    """``OptimWrapper`` whose forward and loss (``optim_context``) run under
    ``torch.autocast('cpu', dtype=torch.bfloat16)``; backward and the
    optimizer step stay outside autocast, as with ``AmpOptimWrapper``.
    Parameters, gradients and optimizer state stay float32 (bfloat16 has
    float32's range: no loss scaling)."""

    @contextmanager
    def optim_context(self, model: nn.Module) -> Iterator[None]:
        with super().optim_context(model), torch.autocast(
                device_type='cpu', dtype=torch.bfloat16):
            yield
