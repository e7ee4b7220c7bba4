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

Writes ``<out>/grad_check.json`` and ``<out>/grad_check.md``. What it runs
is :mod:`mmseg_hosvd.camvid.grad_check`.

Usage (from the repository root)::

    .venv/bin/python tools/camvid_grad_check.py --batches 4
"""
import os.path as osp

import mmseg_hosvd.engine  # noqa: F401  (mmcv.ops fallback, hooks)
from mmseg_hosvd.camvid import (grad_check_parser, parse_grad_check_args,
                                rel, run_grad_check)

REPO = osp.dirname(osp.dirname(osp.abspath(__file__)))


def main() -> None:
    args = parse_grad_check_args(
        None, REPO, grad_check_parser(__doc__.split('\n')[0]))
    run_grad_check(args, REPO, lambda line: print(line, flush=True))
    print(rel(osp.join(args.out, 'grad_check.md'), REPO))


if __name__ == '__main__':
    main()
