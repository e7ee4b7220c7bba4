"""Conversion of the public CamVid release into the VOC-layout tree the
CamVid experiment reads (``tools/convert_camvid.py``).

Input: the ``CamVid/`` folder of the SegNet tutorial: ``train/``, ``val/``,
``test/`` (RGB PNG frames named ``<sequence>_<frame>.png``) and
``trainannot/``, ``valannot/``, ``testannot/`` (same names, class ids
0..10, 11 = void). Output: ``JPEGImages/camvid_<stem>.jpg``,
``SegmentationClassAug/camvid_<stem>.png`` (ids 0..10, 255 = void),
``ImageSets/Segmentation/<split>.txt`` (train, val, source_train: the
daytime train frames, target_train: the dusk train frames, target_val: the
dusk test frames) and ``classes.txt``.
"""
import os
import os.path as osp
from typing import Dict, List, Sequence

import numpy as np
from PIL import Image

CLASSES = ('sky', 'building', 'pole', 'road', 'pavement', 'tree',
           'signsymbol', 'fence', 'car', 'pedestrian', 'bicyclist')
VOID_IN, VOID_OUT = 11, 255
SOURCE_SEQUENCES = ('0006R0', '0016E5')  # daytime
TARGET_SEQUENCE = '0001TP'  # dusk
TEST_ONLY_SEQUENCES = ('Seq05VD', )
PARTS = ('train', 'val', 'test')  # CamVid's own splits (folders)
PREFIX = 'camvid_'
JPEG_QUALITY = 92


def sequence_of(stem: str) -> str:
    """The sequence of a frame: ``'0001TP_006690'`` -> ``'0001TP'``."""
    return stem.split('_', 1)[0]


def list_part(camvid: str, part: str) -> List[str]:
    """Sorted frame stems of one CamVid split, each with its annotation."""
    image_dir, annot_dir = osp.join(camvid, part), osp.join(camvid,
                                                            part + 'annot')
    for folder in (image_dir, annot_dir):
        if not osp.isdir(folder):
            raise FileNotFoundError(
                f'{folder}: missing; expected the SegNet tutorial CamVid '
                f'folder with {", ".join(PARTS)} and their *annot folders')
    stems = sorted(osp.splitext(n)[0] for n in os.listdir(image_dir)
                   if n.endswith('.png'))
    if not stems:
        raise FileNotFoundError(f'{image_dir}: no .png frame')
    missing = [s for s in stems
               if not osp.isfile(osp.join(annot_dir, s + '.png'))]
    if missing:
        raise FileNotFoundError(f'{annot_dir}: no annotation for '
                                f'{len(missing)} frame(s), e.g. {missing[0]}')
    return stems


def make_splits(parts: Dict[str, Sequence[str]]) -> Dict[str, List[str]]:
    """The five split files (output names, sorted) from CamVid's stems."""
    known = SOURCE_SEQUENCES + (TARGET_SEQUENCE, ) + TEST_ONLY_SEQUENCES
    for part, stems in parts.items():
        for stem in stems:
            if sequence_of(stem) not in known:
                raise ValueError(
                    f'{part}/{stem}.png: unknown sequence '
                    f'{sequence_of(stem)!r}; CamVid has {", ".join(known)}')
    def name(stem: str) -> str:
        return PREFIX + stem

    train, val, test = parts['train'], parts['val'], parts['test']
    splits = {
        'train': [name(s) for s in train],
        'val': [name(s) for s in val],
        'source_train': [name(s) for s in train
                         if sequence_of(s) in SOURCE_SEQUENCES],
        'target_train': [name(s) for s in train
                         if sequence_of(s) == TARGET_SEQUENCE],
        'target_val': [name(s) for s in test
                       if sequence_of(s) == TARGET_SEQUENCE],
    }
    return {key: sorted(names) for key, names in splits.items()}


def convert_frame(camvid: str, part: str, stem: str, out: str) -> None:
    """Write one frame's JPEG and label PNG (void 11 -> 255)."""
    image = Image.open(osp.join(camvid, part, stem + '.png')).convert('RGB')
    annot = np.array(Image.open(osp.join(camvid, part + 'annot',
                                         stem + '.png')))
    if annot.ndim != 2 or annot.shape != (image.height, image.width):
        raise ValueError(f'{part}annot/{stem}.png: shape {annot.shape}, '
                         f'expected ({image.height}, {image.width}) '
                         'single-channel as its frame')
    if annot.max() > VOID_IN:
        raise ValueError(f'{part}annot/{stem}.png: value {annot.max()}; '
                         f'expected class ids 0..{VOID_IN - 1} and '
                         f'{VOID_IN} = void')
    label = np.where(annot == VOID_IN, VOID_OUT, annot).astype(np.uint8)
    image.save(osp.join(out, 'JPEGImages', PREFIX + stem + '.jpg'),
               quality=JPEG_QUALITY)
    Image.fromarray(label, mode='L').save(
        osp.join(out, 'SegmentationClassAug', PREFIX + stem + '.png'))


def convert(camvid: str, out: str) -> Dict[str, List[str]]:
    """Convert ``camvid`` into a new VOC tree at ``out``; return the splits."""
    if osp.isdir(out) and os.listdir(out):
        raise FileExistsError(f'{out}: exists and is not empty')
    parts = {part: list_part(camvid, part) for part in PARTS}
    splits = make_splits(parts)
    for sub in ('JPEGImages', 'SegmentationClassAug',
                osp.join('ImageSets', 'Segmentation')):
        os.makedirs(osp.join(out, sub), exist_ok=True)
    wanted = set(splits['train'] + splits['val'] + splits['target_val'])
    for part, stems in parts.items():
        for stem in stems:
            if PREFIX + stem in wanted:
                convert_frame(camvid, part, stem, out)
    for key, names in splits.items():
        with open(osp.join(out, 'ImageSets', 'Segmentation', key + '.txt'),
                  'w') as f:
            f.write(''.join(n + '\n' for n in names))
    with open(osp.join(out, 'classes.txt'), 'w') as f:
        f.write(''.join(c + '\n' for c in CLASSES))
    return splits
