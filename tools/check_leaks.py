"""Memory-leak check: peak RSS of a long compressed fine-tuning run.

Runs ``--iters`` (default 300) training iterations of a CamVid fine-tuning
config (default: FCN-R18 10L, HOSVD eps 0.8) through mmengine's ``Runner``
with the plugin's hooks, from random weights, on small crops and batches, and
records after iteration ``--check-at`` (default 50) and after the last one

* the process's peak RSS: ``resource.getrusage(RUSAGE_SELF).ru_maxrss``;
* its current RSS: resident pages in ``/proc/self/statm``.

Both are printed in MiB (2**20 bytes) with the relative growth of the peak
between the two points; the exit code is 1 if that growth is at least
``--threshold`` (default 0.05, i.e. 5%), else 0. Validation and checkpoints
are off (they would add one-off allocations to the window).

Usage (from the repository root)::

    .venv/bin/python tools/check_leaks.py --iters 300 --check-at 50

Output (the last three lines; ``<...>`` are numbers)::

    after iteration 50: peak RSS <p1> MiB, current RSS <c1> MiB
    after iteration 300: peak RSS <p2> MiB, current RSS <c2> MiB
    peak RSS growth 50 -> 300: <+x.xx>% (limit 5.00%): OK
"""
import argparse
import os
import os.path as osp
import resource
import sys
import tempfile
from dataclasses import dataclass
from typing import Dict, List, Optional, Sequence, Tuple

REPO = osp.dirname(osp.dirname(osp.abspath(__file__)))
DEFAULT_CONFIG = osp.join(
    REPO, 'configs', 'camvid', 'fcn',
    'fcn_r18-d8_10l-hosvd-eps0.8_1xb8-100it_camvid-target-80x80.py')
DEFAULT_DATA = osp.join(REPO, 'data', 'camvid_voc')  # tools/convert_camvid.py
MIB = 2**20


@dataclass(frozen=True)
class RssSample:
    """Process memory after one iteration, in MiB (2**20 bytes)."""
    iteration: int
    peak_mib: float
    current_mib: float


def peak_rss_mib() -> float:
    """Peak resident set size of this process so far (Linux: ru_maxrss is
    in KiB), MiB."""
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024 / MIB


def current_rss_mib() -> float:
    """Current resident set size from ``/proc/self/statm``, MiB."""
    with open('/proc/self/statm') as f:
        resident_pages = int(f.read().split()[1])
    return resident_pages * os.sysconf('SC_PAGE_SIZE') / MIB


def relative_growth(before: float, after: float) -> float:
    """``(after - before) / before`` (a fraction, 0.05 = 5%)."""
    if before <= 0:
        raise ValueError(f'expected a positive reference, got {before!r}')
    return (after - before) / before


def verdict(first: RssSample, last: RssSample,
            threshold: float) -> Tuple[str, bool]:
    """The summary line and whether the peak grew by less than
    ``threshold`` (a fraction) from ``first`` to ``last``."""
    growth = relative_growth(first.peak_mib, last.peak_mib)
    ok = growth < threshold
    line = (f'peak RSS growth {first.iteration} -> {last.iteration}: '
            f'{100 * growth:+.2f}% (limit {100 * threshold:.2f}%): '
            f'{"OK" if ok else "LEAK?"}')
    return line, ok


def sample_line(sample: RssSample) -> str:
    return (f'after iteration {sample.iteration}: peak RSS '
            f'{sample.peak_mib:.1f} MiB, current RSS '
            f'{sample.current_mib:.1f} MiB')


def build_config(config: str, data_root: str, work_dir: str, iters: int,
                 crop: int, batch_size: int, seed: int):
    """The fine-tuning config shrunk for the check: random init,
    ``iters`` iterations, ``crop`` x ``crop`` crops, no validation or
    checkpoint, text logs every 50 iterations."""
    from mmengine.config import Config
    cfg = Config.fromfile(config)
    cfg.load_from = None
    cfg.resume = False
    cfg.work_dir = work_dir
    cfg.randomness = dict(seed=seed)
    cfg.log_level = 'WARNING'
    for loader in ('train_dataloader', 'val_dataloader', 'test_dataloader'):
        if cfg.get(loader):
            cfg[loader].dataset.data_root = data_root
    cfg.train_dataloader.batch_size = batch_size
    for step in cfg.train_dataloader.dataset.pipeline:
        if step['type'] == 'RandomCrop':
            step['crop_size'] = (crop, crop)
    cfg.model.data_preprocessor.size = (crop, crop)
    cfg.train_cfg = dict(type='IterBasedTrainLoop', max_iters=iters,
                         val_interval=iters + 1)
    cfg.val_cfg = cfg.val_dataloader = cfg.val_evaluator = None
    cfg.test_cfg = cfg.test_dataloader = cfg.test_evaluator = None
    cfg.default_hooks.checkpoint = dict(type='CheckpointHook', by_epoch=False,
                                        interval=iters + 1, save_last=False)
    cfg.default_hooks.logger = dict(type='LoggerHook', interval=50,
                                    log_metric_by_epoch=False)
    cfg.visualizer.vis_backends = [dict(type='LocalVisBackend')]
    return cfg


def make_probe(iterations: Sequence[int]):
    """A hook recording an :class:`RssSample` after each of ``iterations``
    (1-based) into its ``samples`` list."""
    from mmengine.hooks import Hook

    class RssProbe(Hook):
        priority = 'LOWEST'

        def __init__(self) -> None:
            self.iterations = set(iterations)
            self.samples: List[RssSample] = []

        def after_train_iter(self, runner, batch_idx: int, data_batch=None,
                             outputs: Optional[Dict] = None) -> None:
            done = runner.iter + 1  # runner.iter counts finished iterations
            if done in self.iterations:
                self.samples.append(
                    RssSample(done, peak_rss_mib(), current_rss_mib()))

    return RssProbe()


def parse_args(argv: Optional[Sequence[str]] = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split('\n')[0])
    parser.add_argument('--config', default=DEFAULT_CONFIG)
    parser.add_argument('--data-root', default=DEFAULT_DATA,
                        help='CamVid in VOC layout')
    parser.add_argument('--iters', type=int, default=300,
                        help='training iterations (the last check point)')
    parser.add_argument('--check-at', type=int, default=50,
                        help='iteration of the reference measurement')
    parser.add_argument('--crop', type=int, default=64,
                        help='square training crop, pixels')
    parser.add_argument('--batch-size', type=int, default=4)
    parser.add_argument('--threshold', type=float, default=0.05,
                        help='largest allowed relative peak-RSS growth')
    parser.add_argument('--seed', type=int, default=0)
    parser.add_argument('--work-dir', default=None,
                        help='default: a temporary directory')
    args = parser.parse_args(argv)
    if not 1 <= args.check_at < args.iters:
        parser.error(f'--check-at must be in [1, --iters), got '
                     f'{args.check_at} with --iters {args.iters}')
    if not osp.isdir(args.data_root):
        parser.error(f'--data-root {args.data_root!r} is not a directory')
    return args


def main(argv: Optional[Sequence[str]] = None) -> int:
    args = parse_args(argv)
    import mmseg_hosvd.engine  # noqa: F401  (registers the hooks)
    from mmengine.runner import Runner
    with tempfile.TemporaryDirectory() as scratch:
        work_dir = args.work_dir or scratch
        cfg = build_config(args.config, osp.abspath(args.data_root), work_dir,
                           args.iters, args.crop, args.batch_size, args.seed)
        runner = Runner.from_cfg(cfg)
        probe = make_probe((args.check_at, args.iters))
        runner.register_hook(probe)
        runner.train()
    first, last = probe.samples
    line, ok = verdict(first, last, args.threshold)
    print(f'{osp.basename(args.config)}: {args.iters} iterations, '
          f'{args.crop}x{args.crop} crops, batch {args.batch_size}')
    print(sample_line(first))
    print(sample_line(last))
    print(line)
    return 0 if ok else 1


if __name__ == '__main__':
    sys.exit(main())
