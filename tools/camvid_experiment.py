"""A CPU-scale transfer experiment on real images: CamVid daytime -> dusk.

1. Pretrains each model from scratch on ``source_train`` (daytime) with plain
   full training (``configs/camvid/<folder>/<model>_pretrain_*.py``); skipped
   when ``<out>/checkpoints/<pretrain config>.pth`` exists, unless
   ``--force``.
2. From that checkpoint, fine-tunes the paper's 5L and 10L layer sets on
   ``target_train`` (dusk) with each method (``configs/camvid/<folder>/
   <model>_{5l,10l}-<method>_*.py``), one work_dir per run, seeded: 5L with
   the first ``--seeds-5l`` seeds, 10L with every seed of ``--seeds``.
3. Evaluates every checkpoint (the pretrained ones too) on ``target_val`` and
   on ``val`` (daytime: what is forgotten) with a fresh mmengine Runner built
   from the config dumped in the run's work_dir, i.e. exactly what
   ``mim test mmsegmentation <work_dir>/<config>.py --checkpoint
   <work_dir>/iter_<N>.pth`` does.
4. Records per run: mIoU/mAcc on target_val and val, the paper-count
   activation memory of the compressed layers (peak and mean over all
   training iterations, from ``activation_memory.json``), the bytes autograd
   saves for a whole training step (``mmseg_hosvd.profiling.
   SavedTensorMeter``, between forward and backward, parameters apart; mean
   over ``--profile-iters`` iterations) and the median step time
   (forward + backward + optimizer step of ``model.train_step``, measured
   by :class:`mmseg_hosvd.bench.StepProbeHook`; data loading and
   preprocessing excluded).

Writes ``<out>/results.json``, ``<out>/results.md`` (markdown tables) and
``<out>/pareto.png`` (activation memory, log scale, against target_val mIoU;
one marker per depth, one colour per method), and prints its wall time.
Finished runs (``<work_dir>/result.json``) are reused unless ``--force``.

Usage (from the repository root)::

    .venv/bin/python tools/camvid_experiment.py            # the full run
    .venv/bin/python tools/camvid_experiment.py --smoke    # seconds

The full run trains in-process, one run after the other, with
``torch.set_num_threads(--threads)``; every run shows a progress bar with
its iterations and ETA on stderr, also with ``--quiet``. The pieces (config
editing, runs, evaluation, provenance, tables, plot) are in
:mod:`mmseg_hosvd.camvid` (the run itself:
:mod:`mmseg_hosvd.camvid.experiment`); the gradient check is
``tools/camvid_grad_check.py``.
"""
import os.path as osp
import sys
import time

import mmseg_hosvd.engine  # noqa: F401  (mmcv.ops fallback, hooks)
from mmseg_hosvd.camvid import (experiment_parser, parse_experiment_args,
                                rel, run_experiment)

REPO = osp.dirname(osp.dirname(osp.abspath(__file__)))


def main() -> None:
    start = time.perf_counter()
    args = parse_experiment_args(
        None, REPO, experiment_parser(__doc__.split('\n')[0]))

    def log(message: str) -> None:
        elapsed = time.perf_counter() - start
        print(f'[camvid {elapsed / 60:6.1f} min] {message}', flush=True)

    summary = run_experiment(args, REPO, log, sys.argv[1:])
    log(f'results: {rel(osp.join(args.out, "results.md"), REPO)}, '
        f'{rel(osp.join(args.out, "results.json"), REPO)}, '
        f'{summary["pareto"]}')
    log(f'wall time {summary["wall_s"]:.0f} s '
        f'({summary["wall_s"] / 60:.1f} min)')


if __name__ == '__main__':
    main()
