"""Generated tiny segmentation datasets for tests, demos and smoke runs.

:func:`make_tiny_voc` writes a Pascal-VOC-layout tree: each image is a noisy
background (class 0) with a few filled shapes whose class decides their
colour, so a network can learn it in a few hundred iterations on a CPU::

    ROOT/JPEGImages/tiny_XXXX.jpg
    ROOT/SegmentationClass/tiny_XXXX.png      uint8 class ids, 255 = ignore
    ROOT/ImageSets/Segmentation/{train,val}.txt

:func:`make_tiny_camvid` writes the same kind of images in the layout of the
CamVid tree the CamVid experiment reads (11 classes, labels in
``SegmentationClassAug``, the splits ``source_train``, ``target_train``,
``target_val`` and ``val``).
"""
import os
import os.path as osp
from typing import Dict, Optional, Sequence, Tuple

import numpy as np
from PIL import Image

#: (class id, RGB colour) of the shapes; 21 VOC classes exist, 4 are used.
SHAPE_CLASSES = ((1, (220, 40, 40)), (7, (40, 200, 60)), (12, (50, 80, 230)),
                 (15, (230, 210, 40)))


def _draw_sample(
    rng: np.random.Generator,
    size: int,
    classes: Sequence[Tuple[int, Tuple[int, int, int]]] = SHAPE_CLASSES
) -> Tuple[np.ndarray, np.ndarray]:
    """Return an (H, W, 3) uint8 image and its (H, W) uint8 label map;
    ``classes``: the shapes' (class id, RGB colour)."""
    image = rng.normal(110, 25, (size, size, 3))
    label = np.zeros((size, size), np.uint8)
    yy, xx = np.mgrid[:size, :size]
    for _ in range(rng.integers(1, 4)):
        cls, colour = classes[rng.integers(len(classes))]
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



#: (class id, RGB colour) of the shapes of :func:`make_tiny_camvid`: CamVid
#: ids below 11
CAMVID_SHAPE_CLASSES = ((3, (128, 64, 128)), (5, (128, 128, 0)),
                        (8, (64, 0, 128)), (9, (64, 64, 0)))
#: split -> number of images of :func:`make_tiny_camvid`
CAMVID_SPLITS = dict(source_train=6, target_train=6, target_val=4, val=4)


def make_tiny_camvid(root: str,
                     splits: Optional[Dict[str, int]] = None,
                     size: int = 96,
                     seed: int = 0) -> str:
    """Write a tree in the CamVid experiment's layout under ``root``
    (``JPEGImages``, ``SegmentationClassAug``, one split file per key of
    ``splits``, default :data:`CAMVID_SPLITS`; labels < 11) and return
    ``root``."""
    splits = dict(CAMVID_SPLITS if splits is None else splits)
    if size < 16 or not splits or min(splits.values()) < 1:
        raise ValueError('make_tiny_camvid: need size >= 16 and at least one '
                         f'image per split, got {size}, {splits}')
    rng = np.random.default_rng(seed)
    for sub in ('JPEGImages', 'SegmentationClassAug',
                'ImageSets/Segmentation'):
        os.makedirs(osp.join(root, sub), exist_ok=True)
    index = 0
    for split, count in splits.items():
        names = [f'{split}_{index + i:04d}' for i in range(count)]
        index += count
        for name in names:
            image, label = _draw_sample(rng, size, CAMVID_SHAPE_CLASSES)
            Image.fromarray(image).save(
                osp.join(root, 'JPEGImages', f'{name}.jpg'), quality=95)
            Image.fromarray(label).save(
                osp.join(root, 'SegmentationClassAug', f'{name}.png'))
        with open(osp.join(root, 'ImageSets/Segmentation', f'{split}.txt'),
                  'w') as f:
            f.write('\n'.join(names) + '\n')
    return root
