"""What :mod:`.fit` measures: the candidate configurations of a fine-tune.

A :class:`Candidate` is one family of settings: a dict of overrides of the
config's ``ActivationCompressionHook`` keys (adding a key to a candidate is
one more entry in its ``hook`` dict; activation checkpointing is the hook's
``activation_checkpointing`` key), mixed precision, whether its gradients
are exact, and what the plugin's docs say about its accuracy. The
micro-batch is measured per candidate by :mod:`.fit`.

:func:`find_compression_hook` locates the hook entry a candidate's overrides
replace: in ``custom_hooks`` (a list, by index) or ``default_hooks`` (by
key).
"""
import copy
import dataclasses
from typing import Any, List, Mapping, Tuple, Union

import torch

from .rows import BEST_OPTIONS, CHECKPOINT_PLACEMENT, PLAIN_OPTIONS
from .step import COMPRESSION_HOOK, PLAIN_WRAPPERS

#: eps of the compression candidates when the config's method has none
DEFAULT_EPS = 0.8
#: the accuracy note of candidates with exact gradients
EXACT_NOTE = 'exact gradients (= plain)'
#: what the docs say about the accuracy of compression, by (method, eps)
ACCURACY_NOTES = {
    ('hosvd', 0.8): 'CamVid: HOSVD eps 0.8 within 0.5 mIoU of plain (DLV3-M '
                    '5L/10L -0.08/-0.02, FCN -0.46/-0.47; docs/camvid.md)',
    ('hosvd', 0.9): 'CamVid: HOSVD eps 0.9 -0.03/-0.06 (DLV3-M 5L/10L), '
                    '-0.27/-0.27 (FCN) mIoU against plain; docs/camvid.md',
    ('asi', 0.8): 'CamVid: ASI eps 0.8 -0.17/-0.08 (DLV3-M 5L/10L), '
                  '-0.42/-0.48 (FCN) mIoU against plain; docs/camvid.md',
}
#: AMP's accuracy note (docs/benchmarks.md, "Which to pick")
AMP_NOTE = ('mixed precision: CamVid accuracy not run (docs/benchmarks.md, '
            'Which to pick)')
@dataclasses.dataclass(frozen=True)
class Candidate:
    """One family of settings measured at several micro-batches.

    Args:
        name: what the table calls it.
        hook: overrides of the compression hook's keys.
        amp: mixed precision (``CPUBFloat16OptimWrapper`` on the CPU,
            ``AmpOptimWrapper`` float16 on CUDA).
        exact: whether its gradients equal plain fine-tuning's.
        accuracy: the one-line accuracy note of the table.
    """
    name: str
    hook: Mapping[str, Any]
    amp: bool = False
    exact: bool = True
    accuracy: str = EXACT_NOTE


HookSite = Tuple[str, Union[int, str]]


def find_compression_hook(cfg) -> Tuple[HookSite, dict]:
    """Where the config's one ``ActivationCompressionHook`` entry is
    (``('custom_hooks', index)`` or ``('default_hooks', key)``) and the
    entry (a plain dict copy).

    Raises:
        ValueError: no such entry, or more than one.
    """
    found = []
    for key, entry in (cfg.get('default_hooks') or {}).items():
        if isinstance(entry, dict) and entry.get('type') == COMPRESSION_HOOK:
            found.append((('default_hooks', key), entry))
    for index, entry in enumerate(cfg.get('custom_hooks') or []):
        if isinstance(entry, dict) and entry.get('type') == COMPRESSION_HOOK:
            found.append((('custom_hooks', index), entry))
    if not found:
        raise ValueError(
            f'{cfg.filename}: no {COMPRESSION_HOOK} in custom_hooks or '
            'default_hooks; add one with the layers to train, e.g. '
            f"custom_hooks = [dict(type='{COMPRESSION_HOOK}', "
            "method='vanilla', layers=[...], freeze=[...])]")
    if len(found) > 1:
        raise ValueError(f'{cfg.filename}: {len(found)} {COMPRESSION_HOOK} '
                         'entries; expected one')
    site, entry = found[0]
    return site, plain_tree(entry)


def plain_tree(value: Any) -> Any:
    """A ConfigDict / list tree as plain dicts and lists."""
    if isinstance(value, dict):
        return {k: plain_tree(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return type(value)(plain_tree(v) for v in value)
    return value


def hook_entry(entry: Mapping[str, Any], candidate: Candidate) -> dict:
    """The hook entry ``entry`` with ``candidate``'s overrides
    (``budget_mib``, an ``asi``-only key, is cleared for other methods)."""
    merged = dict(copy.deepcopy(dict(entry)), **copy.deepcopy(
        dict(candidate.hook)))
    if merged.get('method') != 'asi' and merged.get('budget_mib') is not None:
        merged['budget_mib'] = None
    return merged


def with_hook(cfg, site: HookSite, entry: dict):
    """A deep copy of ``cfg`` whose compression hook entry is ``entry``."""
    cfg = copy.deepcopy(cfg)
    place, key = site
    if place == 'custom_hooks':
        hooks = list(cfg.custom_hooks)
        hooks[key] = entry
        cfg.custom_hooks = hooks
    else:
        cfg.default_hooks[key] = entry
    return cfg


def amp_supported(cfg, device: torch.device) -> bool:
    """Mixed precision can be measured: a CPU or CUDA device and a plain
    optim wrapper type."""
    kind = (cfg.get('optim_wrapper') or {}).get('type', 'OptimWrapper')
    return device.type in ('cpu', 'cuda') and kind in PLAIN_WRAPPERS


def default_candidates(entry: Mapping[str, Any], cfg,
                       device: torch.device) -> List[Candidate]:
    """The families measured by default: plain (the hook's method
    ``'vanilla'``, lean modes and the plugin's default memory options
    off, as the memory benchmark's plain rows), plain with the exact lean
    modes, plain + activation checkpointing (the hook's
    ``activation_checkpointing``), HOSVD and ASI in their leanest mode with
    the frontier's options (``split_concat``; the config's eps if its
    method has one, else 0.8) and, where mixed precision is supported,
    plain and HOSVD with it."""
    eps = entry.get('eps', DEFAULT_EPS) if entry.get('method') in (
        'svd', 'hosvd', 'asi') else DEFAULT_EPS
    # what a user gets without the plugin: its default memory options off
    plain = dict(method='vanilla', lean_backward='off', lean_loss=False,
                 **dict(PLAIN_OPTIONS))
    lean = dict(lean_backward='all', lean_loss=True)
    amp_tag = ' + amp fp16' if device.type == 'cuda' else ' + cpu bf16 amp'

    def compressed(method: str, amp: bool = False) -> Candidate:
        note = ACCURACY_NOTES.get(
            (method, eps), f'no CamVid figure for {method} eps {eps} in the '
            'docs (docs/camvid.md)')
        note += '; CamVid runs were without split_concat'
        return Candidate(
            f'{method} {eps} lean all split' + (amp_tag if amp else ''),
            dict(method=method, eps=eps, **lean, **dict(BEST_OPTIONS)),
            amp=amp, exact=False,
            accuracy=f'{note}; {AMP_NOTE}' if amp else note)

    candidates = [
        Candidate('plain', plain),
        Candidate('plain lean exact',
                  dict(method='vanilla', lean_backward='exact',
                       lean_loss=True)),
        Candidate('plain + checkpointing',
                  dict(plain, activation_checkpointing=CHECKPOINT_PLACEMENT)),
        compressed('hosvd'),
        compressed('asi'),
    ]
    if amp_supported(cfg, device):
        candidates += [
            Candidate('plain' + amp_tag, plain, amp=True, exact=False,
                      accuracy=AMP_NOTE),
            compressed('hosvd', amp=True),
        ]
    return candidates
