"""Gradient fidelity on the CamVid starting checkpoints
(``tools/camvid_grad_check.py``).

On the starting checkpoints the experiment pretrains
(``<out>/checkpoints/<pretrain config>.pth``), compares each method's
gradients with the exact (vanilla) ones on fixed ``target_train`` batches
of the fine-tuning config's train pipeline: cosine similarity and relative
error ``||g - g_exact|| / ||g_exact||`` (mean over batches), over the
compressed convs' weights and over all trainable parameters. Each method's
model, plugin hooks and optim wrapper come from its config through
:class:`mmseg_hosvd.bench.TrainingStep`; the gradients are those of one
forward/backward, before clipping.
"""
import copy
import os.path as osp
import statistics
from typing import Callable, Dict, List, Optional, Sequence, Tuple

import torch

from ..bench import TrainingStep, fixed_batches
from ..ops import Method
from .configs import (METHODS, MODELS, finetune_config, pretrain_config,
                      set_data, stem)
from .runs import dump_json


def method_gradients(cfg, start_ckpt: str, tag: str, batches: List[dict],
                     seed: int) -> Tuple[List[Dict[str, torch.Tensor]],
                                         List[str]]:
    """Per batch, the gradients of every trainable parameter (by name) with
    method ``tag``, and the names of the compressed/counted convs'
    weights."""
    cfg = copy.deepcopy(cfg)
    method, eps = METHODS[tag]
    hook = cfg.default_hooks.compression
    hook.method = method
    if eps is not None:
        hook.eps = eps
    if method == Method.ASI:
        hook.seed = seed
    step = TrainingStep.from_config(cfg, 'cpu', checkpoint=start_ckpt,
                                    seed=seed, init_weights=False,
                                    strict=True)
    weights = [f'{path}.weight' for path in step.installed]
    grads = [step.gradients(copy.deepcopy(batch)) for batch in batches]
    return grads, weights


def compare(exact: List[Dict[str, torch.Tensor]],
            approx: List[Dict[str, torch.Tensor]],
            names: Optional[Sequence[str]]) -> dict:
    """Mean cosine similarity and relative error over the batches, of the
    concatenated gradients of ``names`` (None: every exact gradient)."""
    cos, err = [], []
    for g_exact, g_approx in zip(exact, approx):
        keys = names if names is not None else sorted(g_exact)
        a = torch.cat([g_approx[n].flatten() for n in keys])
        b = torch.cat([g_exact[n].flatten() for n in keys])
        cos.append(float(torch.nn.functional.cosine_similarity(a, b, dim=0)))
        err.append(float((a - b).norm() / b.norm()))
    return dict(cos=statistics.fmean(cos), rel_err=statistics.fmean(err))


def grad_check_markdown(rows: List[dict], batches: int, seed: int) -> str:
    """``grad_check.md``: one table row per method."""
    from tabulate import tabulate
    table = tabulate(
        [[r['label'], r['depth'].upper(), r['tag'],
          f'{r["compressed"]["cos"]:.3f}',
          f'{r["compressed"]["rel_err"]:.3f}', f'{r["all"]["cos"]:.3f}',
          f'{r["all"]["rel_err"]:.3f}'] for r in rows],
        headers=['model', 'depth', 'method', 'cos (compressed)',
                 'rel. err (compressed)', 'cos (all trainable)',
                 'rel. err (all trainable)'],
        tablefmt='github', disable_numparse=True)
    return '\n'.join([
        '# Gradient fidelity on the starting checkpoints', '',
        f'{batches} fixed target_train batches (seed {seed}); '
        'cosine similarity and relative error (||g - g_exact|| / '
        '||g_exact||, mean over batches) of the gradients of the '
        'compressed convs\' weights, and of all trainable parameters, '
        'against the exact gradients of plain fine-tuning.', '', table, ''
    ])


def run_grad_check(args, repo: str,
                   log: Callable[[str], None]) -> List[dict]:
    """Every model, depth and method of ``args``
    (:func:`~.arguments.parse_grad_check_args`); writes
    ``grad_check.json`` and ``grad_check.md`` to ``args.out`` and returns
    the rows.

    Raises:
        SystemExit: a model's starting checkpoint is missing.
    """
    from mmengine.config import Config
    from mmseg.utils import register_all_modules
    register_all_modules()
    configs = osp.join(repo, 'configs', 'camvid')
    rows = []
    for model in args.models:
        start_ckpt = osp.join(args.out, 'checkpoints',
                              f'{stem(pretrain_config(configs, model))}.pth')
        if not osp.isfile(start_ckpt):
            raise SystemExit(f'no starting checkpoint {start_ckpt}; run '
                             'tools/camvid_experiment.py first')
        for depth in args.depths:
            cfg = Config.fromfile(
                finetune_config(configs, model, depth, 'vanilla'))
            set_data(cfg, args.data_root)
            loader = cfg.train_dataloader
            batches = fixed_batches(loader.dataset, loader.batch_size,
                                    args.batches, args.seed)
            exact, weights = method_gradients(cfg, start_ckpt, 'vanilla',
                                              batches, args.seed)
            for tag in args.methods:
                approx, _ = method_gradients(cfg, start_ckpt, tag, batches,
                                             args.seed)
                stats = dict(compressed=compare(exact, approx, weights),
                             all=compare(exact, approx, None))
                rows.append(dict(model=model, label=MODELS[model][2],
                                 depth=depth, tag=tag, batches=len(batches),
                                 **stats))
                log(f'[grad-check] {MODELS[model][2]} {depth} {tag}: cos '
                    f'{stats["compressed"]["cos"]:.3f} (compressed), '
                    f'{stats["all"]["cos"]:.3f} (all)')
    with open(osp.join(args.out, 'grad_check.md'), 'w') as f:
        f.write(grad_check_markdown(rows, args.batches, args.seed))
    dump_json(rows, osp.join(args.out, 'grad_check.json'))
    return rows
