"""Fit a fine-tune into a memory budget: measure, choose, write a config.

Measures the candidate configurations of CONFIG (a plugin config with one
``ActivationCompressionHook``): plain fine-tuning, its exact lean modes,
activation checkpointing, HOSVD and ASI in their leanest mode, mixed
precision where the device has it, each at micro-batches 1 ... B through
gradient accumulation (smallest first; a family stops at the first that
does not fit, the whole batch then still measured); picks the fastest
whose total tensor memory (held between steps + the step's peak) is at
most the budget less the margin, writes a config inheriting CONFIG with the
chosen settings and prints its ``mim train`` command
(:mod:`mmseg_hosvd.bench.fit`). Several budgets share one search and get
one config each. Exit status 2 if a budget fits nothing.

Usage: python tools/fit_memory.py CONFIG --budget-mib N [N ...] [--device cpu]
"""
import shlex
import sys

from mmseg_hosvd.bench.fit import default_crop, fit_budgets
from mmseg_hosvd.bench.fit_cli import (mib_text, parse_fit_args, print_table,
                                       row)
from mmseg_hosvd.bench.fit_config import (default_out, train_command,
                                          write_fitted_config)
from mmseg_hosvd.ops import MIB


def main(argv=None) -> int:
    args = parse_fit_args(argv, __doc__.split('\n')[0])
    from mmengine.config import Config

    import mmseg_hosvd.engine  # noqa: F401  (mmcv.ops fallback, hooks)
    from mmseg.utils import register_all_modules
    register_all_modules()
    cfg = Config.fromfile(args.config)
    try:
        crop = tuple(args.crop) if args.crop else default_crop(cfg)
        results = fit_budgets(
            cfg, args.budget_mib, args.device, args.batch_size, crop,
            args.checkpoint, args.data_root, args.margin,
            progress=lambda m: print('measured: ' + row(m), file=sys.stderr,
                                     flush=True))
    except ValueError as error:
        print(f'error: {error}', file=sys.stderr)
        return 2
    print_table(results[0].tried)
    print(f'device {results[0].device}, effective batch '
          f'{results[0].batch_size}, crop {crop[0]}x{crop[1]}')
    status = 0
    for budget, result in zip(args.budget_mib, results):
        head = (f'budget {budget:g} MiB less margin '
                f'{result.margin_bytes / MIB:g} MiB')
        if result.choice is None:
            print(f'{head}: error: {result.error}', file=sys.stderr)
            status = 2
            continue
        print(f'{head}: choice: {result.choice.describe()}, total '
              f'{mib_text(result.choice.total_bytes)} MiB, '
              f'{result.choice.seconds_per_batch:.3f} s per effective batch')
        out = args.out or default_out(args.config, budget)
        write_fitted_config(cfg, args.config, out, result)
        print(f'config: {out}')
        print('$ ' + shlex.join(train_command(out)))
    return status


if __name__ == '__main__':
    sys.exit(main())
