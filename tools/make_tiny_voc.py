"""Generate a tiny Pascal-VOC-layout segmentation dataset
(:func:`mmseg_hosvd.datasets.make_tiny_voc`).

Usage: python tools/make_tiny_voc.py ROOT [--train 32] [--val 8] [--size 96]
"""
import argparse

from mmseg_hosvd.datasets import make_tiny_voc


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split('\n')[0])
    parser.add_argument('root', help='output folder')
    parser.add_argument('--train', type=int, default=32)
    parser.add_argument('--val', type=int, default=8)
    parser.add_argument('--size', type=int, default=96)
    parser.add_argument('--seed', type=int, default=0)
    args = parser.parse_args()
    make_tiny_voc(args.root, args.train, args.val, args.size, args.seed)
    print(f'tiny VOC dataset written to {args.root}')


if __name__ == '__main__':
    main()
