"""Activation memory of real fine-tuning steps, per model, setup and method.

For every combination of ``--models`` x ``--setups`` x ``--methods`` (x
``--eps`` for SVD/HOSVD/ASI), or every row of a ``--preset``, it builds the
model, its plugin hooks and its optim wrapper from the 5L/10L leaf config
under ``configs/`` with :class:`mmseg_hosvd.bench.TrainingStep`
(mmengine's ``MODELS.build``, ``HOOKS.build`` + ``install``,
``build_optim_wrapper``). Each row (:class:`mmseg_hosvd.bench.MemoryRow`)
runs one warm-up step and one step inside a
:class:`mmseg_hosvd.peak_memory.PeakMemoryMeter`; then the rows of one
model and setup run ``--iters`` measured real ``model.train_step`` calls
(data preprocessor, ``mode='loss'``, backward, the config's gradient
clipping and optimizer step) round-robin, one row after the other in each
round, so that a load drifting during the run slows all rows alike. They
are measured from the outside by :class:`mmseg_hosvd.bench.StepProbe`,
recording

* ``step_peak_mib``: the peak memory of one whole step (forward, backward,
  optimizer step) above what was held before it (CPU: the profiler's
  allocation events; CUDA: ``max_memory_allocated``), untimed;
* ``floor_mib``: the peak of plain MMSegmentation's no-grad, eval-mode
  ``mode='tensor'`` forward of one micro-batch (nothing frozen or
  compressed), and ``peak_over_floor``;
* the paper's activation count of the compressed/counted layers (fp32, MiB =
  2**20 bytes; mean and peak over the iterations) and the bytes those layers
  really keep;
* what autograd saves for the whole step (every saved storage once,
  parameters and buffers apart), and where it comes from: the saving op
  (conv inputs, BN inputs, ReLU outputs, compressed factors, loss, ...), see
  :mod:`mmseg_hosvd.profiling`;
* the CUDA allocator peak of the timed steps (on a GPU), forward/backward/
  optimizer/step median times, ``step_time_ratio_per_round`` (the median
  over rounds of the row's step time over the first row's of its model
  and setup) and the ranks per layer (last and mean).

Peers as rows of the same run: method ``checkpoint`` is the vanilla config
with its trainable modules under ``torch.utils.checkpoint``, one per block
(exact gradients); ``--amp`` adds an ``amp: true`` twin of each row (bf16
autocast on the CPU, ``AmpOptimWrapper`` float16 on CUDA); ``--lean-loss on``
sets the compression hook's ``lean_loss``; ``--micro-batch M [M ...]`` runs
each row as batch-size / M micro-batches of M samples through mmengine's
gradient accumulation (``accumulative_counts``): the peak and the time are
then those of the effective batch, gradients kept between micro-batches
included (``micro_batch`` is in every record). ``--anatomy`` adds one
profiled step per row: what is live at its peak, by group, and the phase,
module and op running then (``peak_anatomy``).

Writes ``OUT/results.json``, ``OUT/results.csv`` and ``OUT/memory.png`` and
prints a markdown table. What it runs is :mod:`mmseg_hosvd.bench.memory`.

Usage::

    .venv/bin/python tools/benchmark_memory.py --models fcn upernet \\
        --setups 5L --methods vanilla hosvd --eps 0.8 --iters 3

Without ``--checkpoint`` the weights are random (said in the output and in
each record); without ``--data-root`` the batches are random images and
random label maps (seeded).
"""
import os.path as osp
import time

import mmseg_hosvd.engine  # noqa: F401  (mmcv.ops fallback, hooks)
from mmseg_hosvd.bench.memory import (memory_parser, parse_memory_args,
                                      rows_of, run_memory_benchmark)
from mmseg_hosvd.bench.frontier import budget_table
from mmseg_hosvd.bench.report import (anatomy_table, comparison_table,
                                      markdown_table)
from mmseg_hosvd.bench.rows import CHECKPOINT_PLACEMENT

REPO = osp.dirname(osp.dirname(osp.abspath(__file__)))
CONFIGS = osp.join(REPO, 'configs')


def main() -> None:
    parser = memory_parser(__doc__.split('\n')[0],
                           osp.join(REPO, 'work_dirs', 'benchmark_memory'))
    args = parse_memory_args(parser=parser)
    init = (f'checkpoint {args.checkpoint} (weights_only=True)'
            if args.checkpoint else 'random initialisation (no --checkpoint)')
    data = (f'{args.data_root} (config train pipeline)'
            if args.data_root else 'synthetic random images and labels')
    print(f'benchmark_memory: {len(rows_of(args))} combination(s), batch '
          f'{args.batch_size}, crop {args.crop[0]}x{args.crop[1]}, 1 warm-up '
          f'+ 1 peak step + {args.iters} timed iteration(s), device '
          f'{args.device}\n'
          f'  weights: {init}\n  data: {data}', flush=True)
    start = time.time()
    records = run_memory_benchmark(args, CONFIGS, REPO)
    print()
    print(markdown_table(records))
    print()
    print(comparison_table(records))
    if len(args.micro_batch) > 1:
        print()
        print(budget_table(records, args.budgets))
    if args.anatomy:
        print()
        print(anatomy_table(records))
    print(f'\nMiB = 2**20 bytes. paper = the paper\'s count of the compressed '
          f'(vanilla: counted) layers, fp32; kept = bytes those layers really '
          f'keep; step saved = every activation storage autograd saves for '
          f'the step, each once (parameters apart), split by the op that '
          f'saved it first; step peak = the most memory one whole step '
          f'(forward, backward, optimizer) allocated above what was held '
          f'before it (CPU: profiler allocation events, an upper bound; '
          f'CUDA: max_memory_allocated), measured on a step of its own '
          f'after the warm-up; floor = the peak of plain MMSegmentation\'s '
          f'no-grad eval forward (mode=tensor) of one micro-batch. '
          f'checkpoint = the vanilla config with its '
          f'trainable modules under torch.utils.checkpoint, one per '
          f'{CHECKPOINT_PLACEMENT}. Weights: {init}; data: {data}.')
    print(f'results: {args.out}/results.json, results.csv, memory.png'
          f'{", frontier.png" if len(args.micro_batch) > 1 else ""} '
          f'(wall time {time.time() - start:.0f} s)')


if __name__ == '__main__':
    main()
