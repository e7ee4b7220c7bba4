"""Batches for benchmarks, as a dataloader yields them.

Every batch is ``dict(inputs=[(3, H, W) uint8 tensors], data_samples=[
SegDataSample with gt_sem_seg (1, H, W)])``, the ``pseudo_collate`` of
``PackSegInputs`` outputs, ready for ``model.train_step``.
"""
import copy
import os.path as osp
from typing import Iterator, List, Tuple

import torch
import torch.nn.functional as F

Crop = Tuple[int, int]


def _sample(label: torch.Tensor, crop: Crop):
    from mmengine.structures import PixelData
    from mmseg.structures import SegDataSample
    height, width = crop
    sample = SegDataSample(metainfo=dict(img_shape=(height, width),
                                         ori_shape=(height, width)))
    sample.gt_sem_seg = PixelData(data=label)
    return sample


def synthetic_batches(batch_size: int, crop: Crop, num_classes: int,
                      seed: int) -> Iterator[dict]:
    """Endless batches of uniform random uint8 images and random label maps
    (``crop`` = (H, W) pixels), seeded."""
    generator = torch.Generator().manual_seed(seed)
    height, width = crop
    while True:
        inputs, samples = [], []
        for _ in range(batch_size):
            inputs.append(
                torch.randint(0, 256, (3, height, width), dtype=torch.uint8,
                              generator=generator))
            label = torch.randint(0, num_classes, (1, height, width),
                                  generator=generator)
            samples.append(_sample(label, crop))
        yield dict(inputs=inputs, data_samples=samples)


def smooth_batch(batch_size: int, crop: Crop, num_classes: int,
                 seed: int) -> dict:
    """One batch of smooth images (coarse random colour fields, upsampled,
    plus noise: natural-image-like ranks) and random labels, seeded."""
    generator = torch.Generator().manual_seed(seed)
    height, width = crop
    coarse = torch.rand(batch_size, 3, max(2, height // 32),
                        max(2, width // 32), generator=generator)
    images = F.interpolate(coarse, size=tuple(crop), mode='bilinear',
                           align_corners=False)
    images = images + 0.05 * torch.randn(images.shape, generator=generator)
    images = list((images.clamp(0, 1) * 255).to(torch.uint8))
    labels = [
        torch.randint(0, num_classes, (1, height, width),
                      generator=generator) for _ in range(batch_size)
    ]
    return dict(inputs=images,
                data_samples=[_sample(label, crop) for label in labels])


def folder_batch(root: str, batch_size: int, crop: Crop, num_classes: int,
                 seed: int, split: str = 'train') -> dict:
    """The first ``batch_size`` images of ``ImageSets/Segmentation/
    <split>.txt`` of a VOC tree, upscaled if smaller than ``crop`` and
    centre-cropped, with their labels (``SegmentationClass[Aug]``; random
    labels, seeded, where none is found).

    Raises:
        ValueError: the split lists fewer than ``batch_size`` images.
    """
    import mmcv
    names_file = osp.join(root, 'ImageSets', 'Segmentation', f'{split}.txt')
    with open(names_file) as f:
        names = [line.split()[0] for line in f if line.strip()][:batch_size]
    if len(names) < batch_size:
        raise ValueError(f'{names_file}: fewer than {batch_size} images')
    generator = torch.Generator().manual_seed(seed)
    height, width = crop
    images, samples = [], []
    for name in names:
        image = mmcv.imread(osp.join(root, 'JPEGImages', name + '.jpg'),
                            channel_order='rgb')
        label = None
        for folder in ('SegmentationClass', 'SegmentationClassAug'):
            path = osp.join(root, folder, name + '.png')
            if osp.isfile(path):
                label = mmcv.imread(path, flag='unchanged')
                break
        scale = max(height / image.shape[0], width / image.shape[1])
        if scale > 1:
            image = mmcv.imrescale(image, scale)
            if label is not None:
                label = mmcv.imrescale(label, scale, interpolation='nearest')
        top = (image.shape[0] - height) // 2
        left = (image.shape[1] - width) // 2
        image = image[top:top + height, left:left + width]
        images.append(torch.from_numpy(image.copy()).permute(2, 0, 1))
        if label is None:
            label = torch.randint(0, num_classes, (1, height, width),
                                  generator=generator)
        else:
            label = label[top:top + height, left:left + width]
            label = torch.from_numpy(label.copy()).long()[None]
        samples.append(_sample(label, crop))
    return dict(inputs=images, data_samples=samples)


def _with_crop(pipeline: List[dict], crop: Crop) -> List[dict]:
    pipeline = copy.deepcopy(pipeline)
    for transform in pipeline:
        if transform.get('type') == 'RandomCrop':
            transform['crop_size'] = tuple(crop)
        elif transform.get('type') == 'Pad' and 'size' in transform:
            transform['size'] = tuple(crop)
    return pipeline


def dataset_config(cfg, data_root: str, crop: Crop) -> dict:
    """The config's train dataset on ``data_root`` with the crop overridden;
    sub-datasets whose annotation file or folders are missing (e.g. no SBD
    ``aug.txt``) are left out.

    Raises:
        ValueError: no sub-dataset is usable.
    """
    dataset = copy.deepcopy(cfg.train_dataloader.dataset)
    parts = dataset['datasets'] if dataset.get(
        'type') == 'ConcatDataset' else [dataset]
    kept, missing = [], []
    for part in parts:
        part = dict(part, data_root=data_root)
        ann_file = osp.join(data_root, part.get('ann_file', ''))
        prefix = part.get('data_prefix', {})
        folders = [osp.join(data_root, p) for p in prefix.values()]
        absent = [p for p in [ann_file] + folders if not osp.exists(p)]
        if absent:
            missing.extend(absent)
            continue
        part['pipeline'] = _with_crop(part['pipeline'], crop)
        kept.append(part)
    if not kept:
        raise ValueError(f'data root {data_root!r}: no usable dataset, '
                         f'missing: {", ".join(missing)}')
    if len(kept) == 1:
        return kept[0]
    return dict(type='ConcatDataset', datasets=kept)


def dataset_batches(cfg, data_root: str, crop: Crop, batch_size: int,
                    seed: int) -> Iterator[dict]:
    """Endless batches of the config's train pipeline on ``data_root``
    (shuffled with ``seed``, cycled).

    Raises:
        ValueError: the dataset is empty or unusable.
    """
    from mmengine.dataset import pseudo_collate
    from mmseg.registry import DATASETS
    dataset = DATASETS.build(dataset_config(cfg, data_root, crop))
    if len(dataset) == 0:
        raise ValueError(f'data root {data_root!r}: the dataset is empty')
    generator = torch.Generator().manual_seed(seed)

    def indices() -> Iterator[int]:
        while True:
            yield from torch.randperm(len(dataset),
                                      generator=generator).tolist()

    order = indices()
    while True:
        yield pseudo_collate(
            [dataset[next(order)] for _ in range(batch_size)])


def fixed_batches(dataset_cfg: dict, batch_size: int, count: int,
                  seed: int) -> List[dict]:
    """``count`` batches of ``dataset_cfg`` (augmentation included), drawn
    once with ``seed`` (Python, numpy and a torch generator): every method
    compared on them sees the same ones."""
    import random

    import numpy as np
    from mmengine.dataset import pseudo_collate
    from mmseg.registry import DATASETS
    dataset = DATASETS.build(copy.deepcopy(dataset_cfg))
    random.seed(seed)
    np.random.seed(seed)
    generator = torch.Generator().manual_seed(seed)
    order = torch.randperm(len(dataset), generator=generator).tolist()
    batches = []
    for index in range(count):
        items = [order[(index * batch_size + k) % len(order)]
                 for k in range(batch_size)]
        batches.append(pseudo_collate([dataset[i] for i in items]))
    return batches


def split_batch(data: dict, micro_batch: int) -> List[dict]:
    """``data`` (``inputs`` and ``data_samples`` lists of B samples) as
    B / ``micro_batch`` consecutive micro-batches of ``micro_batch``
    samples, in order.

    Raises:
        ValueError: ``micro_batch`` below 1 or not dividing B.
    """
    size = len(data['inputs'])
    if micro_batch < 1 or size % micro_batch:
        raise ValueError(f'micro_batch {micro_batch} does not divide the '
                         f'batch of {size}')
    return [{key: value[start:start + micro_batch]
             for key, value in data.items()}
            for start in range(0, size, micro_batch)]
