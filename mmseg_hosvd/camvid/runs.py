"""Training, evaluation and provenance of the CamVid experiment's runs.

Every run goes through mmengine's ``Runner`` (what ``mim train`` /
``mim test`` do). Training adds two hooks of :mod:`mmseg_hosvd.bench`: a
:class:`~mmseg_hosvd.bench.StepProbeHook` (step time, whole-step saved
bytes) and a :class:`~mmseg_hosvd.bench.ProgressBarHook` (iterations and
ETA, shown even when the console log is silenced).
"""
import contextlib
import gc
import hashlib
import json
import logging
import os
import os.path as osp
import subprocess
import sys
import statistics
import time
from typing import Dict, Optional

from ..bench.hooks import ProgressBarHook, StepProbeHook


def build_runner(cfg, quiet: bool = False):
    """``Runner.from_cfg(cfg)``; with ``quiet`` the console handler of the
    run's logger only passes errors: mmengine's messages go to the run's
    log file only."""
    from mmengine.runner import Runner
    if not quiet:
        return Runner.from_cfg(cfg)
    with open(os.devnull, 'w') as devnull, \
            contextlib.redirect_stdout(devnull):
        runner = Runner.from_cfg(cfg)  # its console handler: devnull
        for handler in runner.logger.handlers:
            if type(handler) is logging.StreamHandler:  # not a FileHandler
                handler.setLevel(logging.ERROR)
                handler.setStream(sys.__stdout__)
    return runner


def train(cfg, profile_iters: int = 3, quiet: bool = False,
          desc: str = 'train') -> dict:
    """Train ``cfg`` with a Runner; meter the saved bytes of iterations
    ``1..profile_iters`` (0-based; iteration 0 if the run has only one).

    Returns:
        ``dict(iters, checkpoint, config, step_time_s, step_saved_mib,
        step_saved_param_mib, train_wall_s)``: the last checkpoint, the
        config dumped in the work_dir, the median step time (s), the mean
        saved MiB (2**20 bytes) of the metered iterations.

    Raises:
        RuntimeError: no checkpoint of the last iteration was written.
    """
    start = time.perf_counter()
    runner = build_runner(cfg, quiet)
    iters = cfg.train_cfg.max_iters
    metered = [i for i in range(1, 1 + profile_iters) if i < iters] or [0]
    probe = StepProbeHook(saved_iters=metered)
    runner.register_hook(probe)
    runner.register_hook(ProgressBarHook(desc))
    runner.train()
    checkpoint = osp.join(cfg.work_dir, f'iter_{iters}.pth')
    if not osp.isfile(checkpoint):
        raise RuntimeError(f'no checkpoint {checkpoint} after training')
    result = dict(
        iters=iters,
        checkpoint=checkpoint,
        config=osp.join(cfg.work_dir, osp.basename(cfg.filename)),
        step_time_s=probe.step_time(),
        step_saved_mib=(statistics.fmean(probe.saved_mib)
                        if probe.saved_mib else None),
        step_saved_param_mib=(statistics.fmean(probe.saved_param_mib)
                              if probe.saved_param_mib else None),
        train_wall_s=time.perf_counter() - start)
    del runner, probe
    gc.collect()
    return result


def evaluate(cfg, quiet: bool = False) -> Dict[str, float]:
    """``runner.test()`` of an evaluation config (see
    :func:`mmseg_hosvd.camvid.configs.eval_cfg`): its metrics as floats."""
    runner = build_runner(cfg, quiet)
    metrics = runner.test()
    del runner
    gc.collect()
    return {k: float(v) for k, v in metrics.items()}


# ---------------------------------------------------------------------------
# provenance and files
# ---------------------------------------------------------------------------
def sha256(path: str) -> str:
    """Hex SHA-256 of a file."""
    digest = hashlib.sha256()
    with open(path, 'rb') as f:
        for block in iter(lambda: f.read(1 << 20), b''):
            digest.update(block)
    return digest.hexdigest()


def git_commit(repo: str) -> Optional[str]:
    """HEAD of the git checkout ``repo``, with ``+dirty`` when tracked
    files differ from it; None outside git."""
    try:
        head = subprocess.run(['git', 'rev-parse', 'HEAD'], cwd=repo,
                              capture_output=True, text=True,
                              check=True).stdout.strip()
        dirty = subprocess.run(['git', 'status', '--porcelain',
                                '--untracked-files=no'], cwd=repo,
                               capture_output=True, text=True,
                               check=True).stdout.strip()
    except (OSError, subprocess.CalledProcessError):
        return None
    return f'{head}+dirty' if dirty else head


def rel(path: Optional[str], root: str) -> Optional[str]:
    """``path`` relative to ``root`` if inside it, else absolute."""
    if path is None:
        return None
    path = osp.abspath(path)
    root = osp.abspath(root)
    return osp.relpath(path, root) if path.startswith(root + os.sep) \
        else path


def load_json(path: str):
    with open(path) as f:
        return json.load(f)


def dump_json(obj, path: str) -> None:
    """Write JSON atomically (a temporary file, then ``os.replace``)."""
    tmp = path + '.tmp'
    with open(tmp, 'w') as f:
        json.dump(obj, f, indent=2)
    os.replace(tmp, path)
