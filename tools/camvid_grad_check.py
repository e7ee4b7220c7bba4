"""Gradient fidelity on the CamVid starting checkpoints.

On the starting checkpoints that ``tools/camvid_experiment.py`` pretrains
(``<out>/checkpoints/<pretrain config>.pth``, which must exist), compares
each method's gradients with the exact (vanilla) ones on ``--batches``
fixed ``target_train`` batches of the fine-tuning config's train pipeline:
cosine similarity and relative error ``||g - g_exact|| / ||g_exact||``
(mean over batches), over the compressed convs' weights and over all
trainable parameters (Gradient Filter also approximates grad_input, which
reaches the layers below). Each method's model, plugin hooks and optim
wrapper come from its config through :class:`mmseg_hosvd.bench.
TrainingStep`; the gradients are those of one forward/backward, before
clipping.

Writes ``<out>/grad_check.json`` and ``<out>/grad_check.md``.

Usage (from the repository root)::

    .venv/bin/python tools/camvid_grad_check.py --batches 4
"""
import argparse
import copy
import os.path as osp
import statistics
import sys
from typing import Dict, List, Optional, Sequence, Tuple

REPO = osp.dirname(osp.dirname(osp.abspath(__file__)))
if REPO not in sys.path:
    sys.path.insert(0, REPO)

import torch  # noqa: E402

from mmseg_hosvd.bench import TrainingStep, fixed_batches  # noqa: E402
from mmseg_hosvd.camvid import (DEFAULT_OUT, METHODS, MODELS,  # noqa: E402
                                add_selection_arguments, resolve_data_root,
                                dump_json, finetune_config, pretrain_config,
                                rel, set_data, stem)

CONFIGS = osp.join(REPO, 'configs', 'camvid')


def parse_args(argv: Optional[Sequence[str]] = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        description=__doc__.split('\n')[0],
        formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    add_selection_arguments(parser)
    parser.add_argument('--methods', nargs='+', choices=list(METHODS),
                        default=[m for m in METHODS if m != 'vanilla'])
    parser.add_argument('--batches', type=int, default=4,
                        help='fixed target_train batches')
    parser.add_argument('--seed', type=int, default=233)
    parser.add_argument('--out', default=DEFAULT_OUT,
                        help='the experiment\'s output folder (relative: to '
                        'the repository root)')
    args = parser.parse_args(argv)
    if args.batches < 1:
        parser.error('--batches must be >= 1')
    args.methods = [m for m in dict.fromkeys(args.methods) if m != 'vanilla']
    args.out = osp.abspath(osp.join(REPO, args.out))
    args.data_root = resolve_data_root(parser, args.data_root, REPO)
    return args


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
    if method == 'asi':
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


def markdown(rows: List[dict], args) -> str:
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
        f'{args.batches} fixed target_train batches (seed {args.seed}); '
        'cosine similarity and relative error (||g - g_exact|| / '
        '||g_exact||, mean over batches) of the gradients of the '
        'compressed convs\' weights, and of all trainable parameters, '
        'against the exact gradients of plain fine-tuning.', '', table, ''
    ])


def main(argv: Optional[Sequence[str]] = None) -> List[dict]:
    args = parse_args(argv)
    from mmengine.config import Config
    from mmseg.utils import register_all_modules
    register_all_modules()
    rows = []
    for model in args.models:
        start_ckpt = osp.join(args.out, 'checkpoints',
                              f'{stem(pretrain_config(CONFIGS, model))}.pth')
        if not osp.isfile(start_ckpt):
            raise SystemExit(f'no starting checkpoint {start_ckpt}; run '
                             'tools/camvid_experiment.py first')
        for depth in args.depths:
            cfg = Config.fromfile(
                finetune_config(CONFIGS, model, depth, 'vanilla'))
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
                print(f'[grad-check] {MODELS[model][2]} {depth} {tag}: cos '
                      f'{stats["compressed"]["cos"]:.3f} (compressed), '
                      f'{stats["all"]["cos"]:.3f} (all)', flush=True)
    with open(osp.join(args.out, 'grad_check.md'), 'w') as f:
        f.write(markdown(rows, args))
    dump_json(rows, osp.join(args.out, 'grad_check.json'))
    print(f'{rel(osp.join(args.out, "grad_check.md"), REPO)}')
    return rows


if __name__ == '__main__':
    main()
