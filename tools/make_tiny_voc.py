"""Generate a tiny Pascal-VOC-layout segmentation dataset.

Each image is a noisy background (class 0) with a few filled shapes whose
class decides their colour, so a network can learn it in a few hundred
iterations on a CPU. The tree is what mmseg's ``PascalVOCDataset`` reads::

    ROOT/JPEGImages/tiny_XXXX.jpg
    ROOT/SegmentationClass/tiny_XXXX.png      uint8 class ids, 255 = ignore
    ROOT/ImageSets/Segmentation/{train,val}.txt

Usage: python tools/make_tiny_voc.py ROOT [--train 32] [--val 8] [--size 96]
"""
import argparse
import os
import os.path as osp
from typing import Tuple

import numpy as np
from PIL import Image

#: (class id, RGB colour) of the shapes; 21 VOC classes exist, 4 are used.
SHAPE_CLASSES = ((1, (220, 40, 40)), (7, (40, 200, 60)), (12, (50, 80, 230)),
                 (15, (230, 210, 40)))


def _draw_sample(rng: np.random.Generator,
                 size: int) -> Tuple[np.ndarray, np.ndarray]:
    """Return an (H, W, 3) uint8 image and its (H, W) uint8 label map."""
    image = rng.normal(110, 25, (size, size, 3))
    label = np.zeros((size, size), np.uint8)
    yy, xx = np.mgrid[:size, :size]
    for _ in range(rng.integers(1, 4)):
        cls, colour = SHAPE_CLASSES[rng.integers(len(SHAPE_CLASSES))]
        cy, cx = rng.integers(size // 6, size - size // 6, 2)
        radius = rng.integers(size // 8, size // 4)
        if rng.random() < 0.5:
            mask = (yy - cy)**2 + (xx - cx)**2 <= radius**2
        else:
            mask = (abs(yy - cy) <= radius) & (abs(xx - cx) <= radius)
        image[mask] = np.asarray(colour) + rng.normal(0, 12, (mask.sum(), 3))
        label[mask] = cls
    return np.clip(image, 0, 255).astype(np.uint8), label


def make_tiny_voc(root: str,
                  num_train: int = 32,
                  num_val: int = 8,
                  size: int = 96,
                  seed: int = 0) -> str:
    """Write the dataset under ``root`` (idempotent for equal arguments) and
    return ``root``."""
    if num_train < 1 or num_val < 1 or size < 16:
        raise ValueError('make_tiny_voc: need num_train >= 1, num_val >= 1 '
                         f'and size >= 16, got {num_train}, {num_val}, {size}')
    rng = np.random.default_rng(seed)
    for sub in ('JPEGImages', 'SegmentationClass', 'ImageSets/Segmentation'):
        os.makedirs(osp.join(root, sub), exist_ok=True)
    names = [f'tiny_{i:04d}' for i in range(num_train + num_val)]
    for name in names:
        image, label = _draw_sample(rng, size)
        Image.fromarray(image).save(
            osp.join(root, 'JPEGImages', f'{name}.jpg'), quality=95)
        Image.fromarray(label).save(
            osp.join(root, 'SegmentationClass', f'{name}.png'))
    splits = dict(train=names[:num_train], val=names[num_train:])
    for split, split_names in splits.items():
        with open(osp.join(root, 'ImageSets/Segmentation', f'{split}.txt'),
                  'w') as f:
            f.write('\n'.join(split_names) + '\n')
    return root


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
