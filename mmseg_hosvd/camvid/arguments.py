"""Command-line arguments the CamVid tools share (the experiment driver and
its gradient check)."""
import argparse
import os.path as osp

from .configs import DEPTHS, MODELS

#: the experiment's output folder, relative to the repository root
DEFAULT_OUT = osp.join('work_dirs', 'camvid_experiment')
#: the camvid_voc tree (``tools/convert_camvid.py``), relative to the
#: repository root
DEFAULT_DATA = osp.join('data', 'camvid_voc')


def add_selection_arguments(parser: argparse.ArgumentParser) -> None:
    """``--models``, ``--depths`` and ``--data-root``."""
    parser.add_argument('--models', nargs='+', choices=list(MODELS),
                        default=list(MODELS))
    parser.add_argument('--depths', nargs='+', choices=DEPTHS,
                        default=list(DEPTHS))
    parser.add_argument('--data-root', default=DEFAULT_DATA,
                        help='the camvid_voc tree (relative: to the '
                        'repository root)')


def resolve_data_root(parser: argparse.ArgumentParser, data_root: str,
                      repo: str) -> str:
    """``data_root`` made absolute (relative to ``repo``); a parser error
    unless it is a camvid_voc tree."""
    data_root = osp.abspath(osp.join(repo, data_root))
    if not osp.isdir(osp.join(data_root, 'ImageSets', 'Segmentation')):
        parser.error(f'--data-root {data_root!r}: not a camvid_voc '
                     'tree (no ImageSets/Segmentation)')
    return data_root
