"""Memory-leak check: the trend of the current RSS over a training run.

A leak keeps memory it no longer needs every iteration, so the process's
*current* resident set (``/proc/self/statm``) grows steadily. The peak RSS
(``ru_maxrss``) is no judge: a leak smaller than the headroom under an early
peak never raises it, and one late spike (a one-off allocation, freed)
raises it without any leak. :class:`RssProbe` samples both after every
training iteration; :func:`judge_trend` fits a robust slope (Theil-Sen: the
median of the pairwise slopes, so a few spikes do not move it) to the
current RSS over the second half of the run and fails above a limit in MiB
per iteration. All figures are MiB = 2**20 bytes.
"""
import os
import resource
import statistics
from dataclasses import dataclass
from typing import Dict, List, Optional, Sequence, Tuple

from mmengine.hooks import Hook

MIB = 2**20
#: the slope fit uses at most this many samples (evenly thinned)
MAX_FIT_POINTS = 200


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


def sample_rss(iteration: int) -> RssSample:
    """Peak and current RSS now, labelled ``iteration``."""
    return RssSample(iteration, peak_rss_mib(), current_rss_mib())


def relative_growth(before: float, after: float) -> float:
    """``(after - before) / before`` (a fraction, 0.05 = 5%)."""
    if before <= 0:
        raise ValueError(f'expected a positive reference, got {before!r}')
    return (after - before) / before


def theil_sen_slope(points: Sequence[Tuple[float, float]]) -> float:
    """Median of the slopes between every two points of distinct x (the
    Theil-Sen estimator: robust to up to ~29% outliers), after thinning
    ``points`` evenly to at most :data:`MAX_FIT_POINTS`."""
    if len(points) > MAX_FIT_POINTS:
        step = (len(points) - 1) / (MAX_FIT_POINTS - 1)
        points = [points[round(i * step)] for i in range(MAX_FIT_POINTS)]
    slopes = [(y2 - y1) / (x2 - x1)
              for i, (x1, y1) in enumerate(points)
              for x2, y2 in points[i + 1:] if x2 != x1]
    if not slopes:
        raise ValueError('a slope needs two points of distinct x, got '
                         f'{len(points)} point(s)')
    return statistics.median(slopes)


@dataclass(frozen=True)
class TrendVerdict:
    """The current-RSS slope over iterations ``first``..``last``."""
    first: int
    last: int
    slope_mib: float  # MiB per iteration
    max_slope_mib: float

    @property
    def ok(self) -> bool:
        return self.slope_mib <= self.max_slope_mib

    def line(self) -> str:
        return (f'current RSS trend over iterations {self.first}-'
                f'{self.last}: {self.slope_mib:+.4f} MiB/iteration (limit '
                f'{self.max_slope_mib:.4f}): {"OK" if self.ok else "LEAK?"}')


def judge_trend(samples: Sequence[RssSample],
                max_slope_mib: float) -> TrendVerdict:
    """Fit the current-RSS slope over the second half of ``samples`` (the
    iterations after the last one's half: warm-up allocations excluded)."""
    if not samples:
        raise ValueError('no RSS samples to judge')
    half = samples[-1].iteration / 2
    window = [s for s in samples if s.iteration > half]
    slope = theil_sen_slope([(s.iteration, s.current_mib) for s in window])
    return TrendVerdict(window[0].iteration, window[-1].iteration, slope,
                        max_slope_mib)


def peak_growth_line(first: RssSample, last: RssSample) -> str:
    """The peak-RSS growth from ``first`` to ``last``: printed for
    information, not judged (see the module)."""
    growth = relative_growth(first.peak_mib, last.peak_mib)
    return (f'peak RSS growth {first.iteration} -> {last.iteration}: '
            f'{100 * growth:+.2f}% (not judged)')


def sample_line(sample: RssSample) -> str:
    return (f'after iteration {sample.iteration}: peak RSS '
            f'{sample.peak_mib:.1f} MiB, current RSS '
            f'{sample.current_mib:.1f} MiB')


class RssProbe(Hook):
    """Records an :class:`RssSample` after every training iteration into
    :attr:`samples` (``iteration`` 1-based)."""

    priority = 'LOWEST'

    def __init__(self) -> None:
        self.samples: List[RssSample] = []

    def after_train_iter(self, runner, batch_idx: int, data_batch=None,
                         outputs: Optional[Dict] = None) -> None:
        """Sample the RSS.

        Args:
            runner (Runner): The runner of the training process.
            batch_idx (int): The index of the current batch in the loop.
            data_batch (dict or tuple or list, optional): Data from the
                dataloader.
            outputs (dict, optional): Outputs of ``model.train_step``.
        """
        # runner.iter counts the finished iterations
        self.samples.append(sample_rss(runner.iter + 1))


def build_leak_config(config: str, data_root: str, work_dir: str,
                      iters: int, crop: int, batch_size: int, seed: int):
    """The fine-tuning config shrunk for the check: random init, ``iters``
    iterations, ``crop`` x ``crop`` crops, no validation or checkpoint
    (one-off allocations), text logs every 50 iterations."""
    from mmengine.config import Config
    if crop < 1 or batch_size < 1 or iters < 1:
        raise ValueError(f'crop, batch_size and iters must be positive, got '
                         f'{crop}, {batch_size}, {iters}')
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
