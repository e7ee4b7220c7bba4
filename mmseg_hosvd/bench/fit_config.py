"""Write the configuration :func:`~.fit.fit_memory` chose as a config file.

The written file inherits the user's config (``_base_``, a path relative to
the written file) and sets only what changed: the compression hook's entry
(the ``default_hooks`` entry, or its place in ``custom_hooks``),
``custom_hooks`` (written whole, as mmengine replaces lists when merging)
with a :class:`~mmseg_hosvd.engine.TensorMemoryHook` that meters the run
against the budget, ``train_dataloader.batch_size`` (the micro-batch),
``optim_wrapper.accumulative_counts`` and, for mixed precision,
``optim_wrapper.type``: ``'AmpOptimWrapper'`` (float16) on CUDA,
``'CPUBFloat16OptimWrapper'`` on the CPU.
"""
import os
import os.path as osp
import pprint
from typing import List, Optional

from ..ops import MIB
from .fit import FitResult, Measurement
from .fit_candidates import (find_compression_hook, hook_entry,
                             plain_tree, with_hook)


#: the hook the written config meters its run with
METER = 'TensorMemoryHook'
#: its interval after the first two optimizer steps (on the CPU a metered
#: iteration runs under the profiler)
METER_INTERVAL = 100


def default_out(config_path: str, budget_mib: float,
                root: str = 'work_dirs') -> str:
    """``<root>/fit_memory/<config name>_fit<N>mib.py``."""
    name = osp.splitext(osp.basename(config_path))[0]
    return osp.join(root, 'fit_memory', f'{name}_fit{budget_mib:g}mib.py')


def _assignment(name: str, value) -> str:
    return f'{name} = {pprint.pformat(value, indent=1, width=76)}\n'


def fitted_config_text(cfg, config_path: str, out_path: str,
                       result: FitResult) -> str:
    """The text of the config that runs ``result.choice``.

    Raises:
        ValueError: ``result`` has no choice (nothing fitted).
    """
    choice: Optional[Measurement] = result.choice
    if choice is None:
        raise ValueError(f'nothing to write: {result.error}')
    (place, key), entry = find_compression_hook(cfg)
    entry = hook_entry(entry, choice.candidate)
    base = osp.relpath(osp.abspath(config_path),
                       osp.dirname(osp.abspath(out_path)))
    counts = choice.accumulative_counts
    lines = [
        f'# Written by tools/fit_memory.py: {osp.basename(config_path)} '
        f'fitted to {result.budget_bytes / MIB:g} MiB',
        f'# (margin {result.margin_bytes / MIB:g} MiB) on '
        f'{result.device.type}: {choice.describe()}, measured total',
        f'# {choice.total_bytes / MIB:.1f} MiB at effective batch '
        f'{result.batch_size}, crop {result.crop[0]}x{result.crop[1]}.',
    ]
    if counts > 1:
        lines += [
            f'# One iteration is one micro-batch: multiply train_cfg.'
            f'max_iters, by-iteration scheduler bounds and intervals by '
            f'{counts}',
            '# to see as many samples as the base config.',
        ]
    text = '\n'.join(lines) + '\n' + _assignment('_base_', [base])
    if place == 'custom_hooks':
        cfg = with_hook(cfg, (place, key), entry)
    else:
        text += _assignment('default_hooks', {key: entry})
    hooks = [h for h in plain_tree(list(cfg.get('custom_hooks') or []))
             if not (isinstance(h, dict) and h.get('type') == METER)]
    hooks.append(dict(type=METER, interval=METER_INTERVAL,
                      begin_iters=2 * counts,
                      budget_mib=result.budget_bytes / MIB))
    text += _assignment('custom_hooks', hooks)
    wrapper = {}
    if counts > 1:
        wrapper['accumulative_counts'] = counts
    if choice.candidate.amp and result.device.type == 'cuda':
        wrapper.update(type='AmpOptimWrapper', dtype='float16')
    elif choice.candidate.amp:
        wrapper.update(type='CPUBFloat16OptimWrapper')
    if wrapper:
        text += _assignment('optim_wrapper', wrapper)
    text += _assignment('train_dataloader',
                        dict(batch_size=choice.micro_batch))
    return text


def write_fitted_config(cfg, config_path: str, out_path: str,
                        result: FitResult) -> str:
    """Write :func:`fitted_config_text` to ``out_path`` (folders made);
    returns ``out_path``."""
    text = fitted_config_text(cfg, config_path, out_path, result)
    os.makedirs(osp.dirname(osp.abspath(out_path)), exist_ok=True)
    with open(out_path, 'w') as f:
        f.write(text)
    return out_path


def train_command(out_path: str, mim: str = '.venv/bin/mim') -> List[str]:
    """``mim train mmsegmentation <out_path>``."""
    return [mim, 'train', 'mmsegmentation', out_path]
