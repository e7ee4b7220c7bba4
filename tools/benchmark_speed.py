"""Training-step time of vanilla vs compressed fine-tuning, side by side.

For each ``--models`` x ``--setups`` it gives every method of ``--methods``
its own :class:`mmseg_hosvd.bench.TrainingStep`, built from the setup's
vanilla leaf config under ``configs/`` with the compression hook's
``method``/``eps``/``lean_backward`` replaced (same ``--seed``, hence the
same random weights unless ``--checkpoint``): model, plugin hooks and the
config's optim wrapper (SGD, gradient clipping) by mmengine's builders. It
times real ``model.train_step`` calls on one fixed batch, split by
:class:`mmseg_hosvd.bench.StepProbe` into forward (``mode='loss'``),
backward and clipping + optimizer step (data preprocessing excluded);
``--lean-backward`` and ``--lean-loss`` (off and/or on) multiply the
contenders. The methods run **round-robin, one step each per
round** (the first method of a round rotates), so that a concurrent load
slows them alike; ``--warmup`` rounds are dropped (they include the first
step of ``asi``, which fixes its ranks), ``--iters`` rounds are measured.

Prints, as markdown:

1. per method: median forward / backward / optimizer / step time, the step
   ratio to vanilla (ratio of the medians, and the median of the per-round
   ratios), the ranks and the activation memory kept by the compressed
   layers (each storage once; MiB = 2**20 bytes);
2. per distinct input of the compressed convs (``--layers``; an input read
   by several convs, e.g. the ASPP branches, is one row): the time of the
   HOSVD of :func:`mmseg_hosvd.ops.hosvd` (Gram + eigh) and of one ASI step
   (:func:`mmseg_hosvd.ops.subspace_iteration_step`, same ranks) against
   the forward of the convs that read it and against a plain HOSVD made of
   four ``torch.linalg.svd`` calls on the contiguous mode unfoldings (plus
   the eps rule and the core), all on the input captured from the model;
3. the load average before and after, threads, torch version, device.

``--profile`` adds one profiled step per method (torch.profiler, top
entries by self time).

Usage::

    .venv/bin/python tools/benchmark_speed.py --models deeplabv3 \\
        --setups 10L --methods vanilla hosvd asi --batch-size 8 \\
        --crop 256 256 --iters 5

Without ``--checkpoint`` the weights are random; without ``--data-root`` the
images are smooth random noise and the labels random (seeded). What it runs
is :mod:`mmseg_hosvd.bench.speed` (the layer table:
:mod:`mmseg_hosvd.bench.layer_timing`).
"""
import json
import os.path as osp
import platform
import sys
from typing import List

import torch

import mmseg_hosvd.engine  # noqa: F401  (mmcv.ops fallback, hooks)
from mmseg_hosvd.bench.layer_timing import layer_columns
from mmseg_hosvd.bench.speed import (STEP_COLUMNS, SpeedBenchmark,
                                     column_table, load_text,
                                     parse_speed_args, speed_parser)

REPO = osp.dirname(osp.dirname(osp.abspath(__file__)))
CONFIGS = osp.join(REPO, 'configs')


def heading(args, bench: SpeedBenchmark, model_name: str,
            setup: str) -> str:
    device = bench.device
    device_name = (torch.cuda.get_device_name(device)
                   if device.type == 'cuda' else platform.processor() or
                   platform.machine())
    lean_loss = ', '.join('on' if on else 'off' for on in args.lean_loss)
    return (f'\n## {model_name} {setup}: batch {args.batch_size}, crop '
            f'{args.crop[0]}x{args.crop[1]}, {args.iters} measured rounds '
            f'after {args.warmup} warm-up, lean loss {lean_loss}\n\n'
            f'config `{osp.relpath(bench.contenders[0].config, REPO)}` '
            '(method/eps replaced); weights: '
            f'{args.checkpoint or "random init (seed %d)" % args.seed}'
            f'; data: {args.data_root or "smooth random images"}; device '
            f'{device.type} ({device_name}), torch {torch.__version__}, '
            f'{torch.get_num_threads()} threads; load average before: '
            f'{load_text()}\n')


def run(args, model_name: str, setup: str) -> dict:
    """Time every contender of one model/setup; print the tables; return
    ``dict(model, setup, steps=[step rows], layers=[layer rows])``."""
    bench = SpeedBenchmark(args, model_name, setup, CONFIGS)
    print(heading(args, bench, model_name, setup), flush=True)
    bench.run_rounds(lambda line: print(line, file=sys.stderr, flush=True))
    steps = bench.step_rows()
    print(column_table(steps, STEP_COLUMNS))
    print(f'\nload average after: {load_text()}')
    layers = []
    if args.layers:
        print()
        layers = bench.layer_rows()
        print(column_table(layers, layer_columns(args.eps)))
        print(f'\nload average after the layer table: {load_text()}')
    if args.profile:
        for contender in bench.contenders:
            print(f'\nprofile of one {contender.method} step (top '
                  f'{args.profile_rows} by self time):\n')
            print(bench.profile(contender, args.profile_rows))
    sys.stdout.flush()
    return dict(model=model_name, setup=setup, steps=steps, layers=layers)


def main() -> List[dict]:
    args = parse_speed_args(parser=speed_parser(__doc__.split('\n')[0]))
    torch.set_num_threads(args.threads)
    from mmseg.utils import register_all_modules
    register_all_modules()
    results = [
        run(args, model_name, setup) for model_name in args.models
        for setup in args.setups
    ]
    if args.json is not None:
        with open(args.json, 'w') as f:
            json.dump(results, f, indent=2)
    return results


if __name__ == '__main__':
    main()
