"""Memory-leak check: the current-RSS trend of a long compressed fine-tune.

Runs ``--iters`` (default 300) training iterations of a CamVid fine-tuning
config (default: FCN-R18 10L, HOSVD eps 0.8) through mmengine's ``Runner``
with the plugin's hooks, from random weights, on small crops and batches,
samples the process's current RSS (``/proc/self/statm``) and peak RSS
(``ru_maxrss``) after every iteration, and judges the *current* RSS: the
Theil-Sen slope over the second half of the run, in MiB (2**20 bytes) per
iteration; the exit code is 1 if it exceeds ``--max-slope`` (default 0.05
MiB/iteration, i.e. 7.5 MiB over the last 150 of 300 iterations), else 0.
The peak RSS is printed at ``--check-at`` and at the end for information
only (a leak below an early peak leaves it flat; one late spike raises it
without a leak). Validation and checkpoints are off. See
:mod:`mmseg_hosvd.diagnostics.leaks`.

Usage (from the repository root)::

    .venv/bin/python tools/check_leaks.py --iters 300 --check-at 50

Output (the last four lines; ``<...>`` are numbers; the last one is
printed on one line)::

    after iteration 50: peak RSS <p1> MiB, current RSS <c1> MiB
    after iteration 300: peak RSS <p2> MiB, current RSS <c2> MiB
    peak RSS growth 50 -> 300: <+x.xx>% (not judged)
    current RSS trend over iterations 151-300: <+s.ssss> MiB/iteration
    (limit 0.0500): OK
"""
import argparse
import os.path as osp
import sys
import tempfile
from typing import Optional, Sequence

from mmseg_hosvd.diagnostics import (RssProbe, build_leak_config, judge_trend,
                                     peak_growth_line, sample_line)

REPO = osp.dirname(osp.dirname(osp.abspath(__file__)))
DEFAULT_CONFIG = osp.join(
    REPO, 'configs', 'camvid', 'fcn',
    'fcn_r18-d8_10l-hosvd-eps0.8_1xb8-100it_camvid-target-80x80.py')
DEFAULT_DATA = osp.join(REPO, 'data', 'camvid_voc')  # tools/convert_camvid.py


def parse_args(argv: Optional[Sequence[str]] = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split('\n')[0])
    parser.add_argument('--config', default=DEFAULT_CONFIG)
    parser.add_argument('--data-root', default=DEFAULT_DATA,
                        help='CamVid in VOC layout')
    parser.add_argument('--iters', type=int, default=300,
                        help='training iterations (the slope uses the '
                        'second half)')
    parser.add_argument('--check-at', type=int, default=50,
                        help='iteration whose RSS is printed for reference')
    parser.add_argument('--crop', type=int, default=64,
                        help='square training crop, pixels')
    parser.add_argument('--batch-size', type=int, default=4)
    parser.add_argument('--max-slope', type=float, default=0.05,
                        help='largest allowed current-RSS slope, '
                        'MiB/iteration')
    parser.add_argument('--seed', type=int, default=0)
    parser.add_argument('--work-dir', default=None,
                        help='default: a temporary directory')
    args = parser.parse_args(argv)
    if args.iters < 3:
        parser.error(f'--iters must be at least 3 (the slope needs two '
                     f'iterations in the second half), got {args.iters}')
    if not 1 <= args.check_at < args.iters:
        parser.error(f'--check-at must be in [1, --iters), got '
                     f'{args.check_at} with --iters {args.iters}')
    if args.crop < 1:
        parser.error(f'--crop must be a positive number of pixels, got '
                     f'{args.crop}')
    if args.batch_size < 1:
        parser.error(f'--batch-size must be positive, got {args.batch_size}')
    if not args.max_slope >= 0:
        parser.error(f'--max-slope must be >= 0 MiB/iteration, got '
                     f'{args.max_slope}')
    if not osp.isdir(args.data_root):
        parser.error(f'--data-root {args.data_root!r} is not a directory')
    return args


def main(argv: Optional[Sequence[str]] = None) -> int:
    args = parse_args(argv)
    from mmengine.runner import Runner
    probe = RssProbe()
    with tempfile.TemporaryDirectory() as scratch:
        cfg = build_leak_config(args.config, osp.abspath(args.data_root),
                                args.work_dir or scratch, args.iters,
                                args.crop, args.batch_size, args.seed)
        runner = Runner.from_cfg(cfg)
        runner.register_hook(probe)
        runner.train()
    samples = {s.iteration: s for s in probe.samples}
    first, last = samples[args.check_at], samples[args.iters]
    trend = judge_trend(probe.samples, args.max_slope)
    print(f'{osp.basename(args.config)}: {args.iters} iterations, '
          f'{args.crop}x{args.crop} crops, batch {args.batch_size}')
    print(sample_line(first))
    print(sample_line(last))
    print(peak_growth_line(first, last))
    print(trend.line())
    return 0 if trend.ok else 1


if __name__ == '__main__':
    sys.exit(main())
