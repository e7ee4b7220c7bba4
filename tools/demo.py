"""The README's main command: a HOSVD fine-tuning run on a generated dataset.

1. writes a tiny VOC-layout dataset to ``data/tiny_voc``
   (:func:`mmseg_hosvd.datasets.make_tiny_voc`);
2. runs ``mim train mmsegmentation configs/demo/<config> --work-dir ...``;
3. prints the final mIoU/mAcc and the activation-memory summary that
   :class:`ActivationMemoryHook` wrote to the work_dir.

Usage: python tools/demo.py [--work-dir work_dirs/demo] [--config ...]
(the transformer demo: ``--config
configs/demo/segformer_mit-b0_10l-hosvd-eps0.8_tiny-voc-64x64.py``).
"""
import argparse
import glob
import json
import os
import os.path as osp
import shutil
import subprocess
import sys
import time
from typing import List, Sequence

REPO = osp.dirname(osp.dirname(osp.abspath(__file__)))
if REPO not in sys.path:
    sys.path.insert(0, REPO)

from mmseg_hosvd.datasets import make_tiny_voc  # noqa: E402

DEFAULT_CONFIG = osp.join(REPO, 'configs', 'demo',
                          'fcn_r18-d8_5l-hosvd-eps0.8_tiny-voc-64x64.py')


def mim_executable() -> str:
    """``mim`` next to this interpreter (a venv), else on PATH."""
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


def train_env() -> dict:
    """The environment with the repository on ``PYTHONPATH`` (the configs'
    ``custom_imports`` import ``mmseg_hosvd`` from it)."""
    return dict(os.environ, PYTHONPATH=os.pathsep.join(
        filter(None, [REPO, os.environ.get('PYTHONPATH')])))


def last_val_metrics(work_dir: str) -> dict:
    """Last validation record of the newest run's ``vis_data/scalars.json``."""
    files = sorted(glob.glob(osp.join(work_dir, '*', 'vis_data',
                                      'scalars.json')))
    if not files:
        raise SystemExit(f'no scalars.json under {work_dir}: did training run?')
    metrics = {}
    with open(files[-1]) as f:
        for line in f:
            record = json.loads(line)
            if 'mIoU' in record:
                metrics = record
    return metrics


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split('\n')[0])
    parser.add_argument('--config', default=DEFAULT_CONFIG)
    parser.add_argument('--work-dir', default=osp.join(REPO, 'work_dirs',
                                                       'demo'))
    parser.add_argument('--data-root', default=osp.join(REPO, 'data',
                                                        'tiny_voc'))
    args = parser.parse_args()

    start = time.time()
    make_tiny_voc(args.data_root)
    command = train_command(args.config, args.work_dir, args.data_root)
    print('$ ' + ' '.join(command), flush=True)
    subprocess.run(command, check=True, cwd=REPO, env=train_env())

    metrics = last_val_metrics(args.work_dir)
    with open(osp.join(args.work_dir, 'activation_memory.json')) as f:
        memory = json.load(f)
    total = memory['total']
    print('\n=== demo result ===')
    print(f"mIoU {metrics.get('mIoU')}  mAcc {metrics.get('mAcc')}  "
          f"aAcc {metrics.get('aAcc')} (tiny synthetic val set, random init)")
    print(f"activation memory over {memory['iterations']} iterations "
          f"({memory['unit']}): paper count peak "
          f"{total['paper_mib']['peak']:.4f} mean "
          f"{total['paper_mib']['mean']:.4f}; really kept peak "
          f"{total['kept_mib']['peak']:.4f} mean "
          f"{total['kept_mib']['mean']:.4f}")
    for path, layer in memory['layers'].items():
        print(f"  {path:32s} {layer['method']:8s} input "
              f"{'x'.join(map(str, layer['input_shape'])):16s} paper "
              f"{layer['paper_mib']['mean']:.4f} MiB  kept "
              f"{layer['kept_mib']['mean']:.4f} MiB  ranks(last) "
              f"{layer['ranks']['last']}")
    print(f'work_dir: {args.work_dir}  wall time: {time.time() - start:.1f} s')


if __name__ == '__main__':
    main()
