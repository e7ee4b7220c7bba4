"""The README demo's pieces (``tools/demo.py``): the ``mim train`` command
on a tiny dataset, its environment and the last validation metrics."""
import glob
import json
import os
import os.path as osp
import shutil
import sys
from typing import List, Sequence

#: the folder that holds the ``mmseg_hosvd`` package (the repository root)
PACKAGE_ROOT = osp.dirname(osp.dirname(osp.abspath(__file__)))


def mim_executable() -> str:
    """``mim`` next to this interpreter (a venv), else on PATH.

    Raises:
        SystemExit: no ``mim``.
    """
    candidate = osp.join(osp.dirname(sys.executable), 'mim')
    found = candidate if osp.exists(candidate) else shutil.which('mim')
    if found is None:
        raise SystemExit('mim not found: run `bash tools/setup_env.sh` first')
    return found


def train_command(config: str, work_dir: str, data_root: str,
                  options: Sequence[str] = ()) -> List[str]:
    """``mim train mmsegmentation CONFIG`` on the tiny dataset at
    ``data_root``; ``options`` are further ``--cfg-options`` (``key=value``).
    Run it from the repository root with :func:`train_env`."""
    return [
        mim_executable(), 'train', 'mmsegmentation', config, '--work-dir',
        work_dir, '--cfg-options',
        f'train_dataloader.dataset.data_root={data_root}',
        f'val_dataloader.dataset.data_root={data_root}',
        f'test_dataloader.dataset.data_root={data_root}', *options
    ]


#: mim and mmengine import (and reload) setuptools' deprecated
#: pkg_resources in the training processes; its warning says nothing about
#: the run
PKG_RESOURCES_FILTER = 'ignore:pkg_resources is deprecated as an API'


def train_env() -> dict:
    """The environment with the package's folder on ``PYTHONPATH`` (the
    configs' ``custom_imports`` import ``mmseg_hosvd.engine`` from it) and
    the ``pkg_resources`` deprecation warning filtered out."""
    def joined(first: str, name: str, sep: str) -> str:
        return sep.join(filter(None, [first, os.environ.get(name)]))

    return dict(os.environ,
                PYTHONPATH=joined(PACKAGE_ROOT, 'PYTHONPATH', os.pathsep),
                PYTHONWARNINGS=joined(PKG_RESOURCES_FILTER,
                                      'PYTHONWARNINGS', ','))


def last_val_metrics(work_dir: str) -> dict:
    """Last validation record of the newest run's ``vis_data/scalars.json``.

    Raises:
        SystemExit: no ``scalars.json`` under ``work_dir``.
    """
    files = sorted(glob.glob(osp.join(work_dir, '*', 'vis_data',
                                      'scalars.json')))
    if not files:
        raise SystemExit(f'no scalars.json under {work_dir}: did training '
                         'run?')
    metrics = {}
    with open(files[-1]) as f:
        for line in f:
            record = json.loads(line)
            if 'mIoU' in record:
                metrics = record
    return metrics
