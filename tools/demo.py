"""The README's main command: a HOSVD fine-tuning run on a generated dataset.

1. writes a tiny VOC-layout dataset to ``data/tiny_voc``
   (:func:`mmseg_hosvd.datasets.make_tiny_voc`);
2. runs ``mim train mmsegmentation configs/demo/<config> --work-dir ...``;
3. prints the final mIoU/mAcc and the activation-memory summary that
   :class:`ActivationMemoryHook` wrote to the work_dir.

The command and its environment come from :mod:`mmseg_hosvd.demo`.

Usage: python tools/demo.py [--work-dir work_dirs/demo] [--config ...]
(the transformer demo: ``--config
configs/demo/segformer_mit-b0_10l-hosvd-eps0.8_tiny-voc-64x64.py``).
"""
import argparse
import json
import os.path as osp
import subprocess
import time

from mmseg_hosvd.datasets import make_tiny_voc
from mmseg_hosvd.demo import last_val_metrics, train_command, train_env

REPO = osp.dirname(osp.dirname(osp.abspath(__file__)))

DEFAULT_CONFIG = osp.join(REPO, 'configs', 'demo',
                          'fcn_r18-d8_5l-hosvd-eps0.8_tiny-voc-64x64.py')


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
