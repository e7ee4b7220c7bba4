"""Command lines of the CamVid tools (``tools/camvid_experiment.py`` and
``tools/camvid_grad_check.py``); the options they share are defined once.

Relative paths (``--out``, ``--data-root``) are relative to the repository
root, passed in as ``repo``.
"""
import argparse
import os.path as osp
from typing import Optional, Sequence

from .configs import DEPTHS, METHODS, MODELS, SMOKE

#: the experiment's output folder, relative to the repository root
DEFAULT_OUT = osp.join('work_dirs', 'camvid_experiment')
#: the same with ``--smoke``
DEFAULT_SMOKE_OUT = osp.join('work_dirs', 'camvid_experiment_smoke')
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


def _selection_parser(description: Optional[str],
                      methods: Sequence[str]) -> argparse.ArgumentParser:
    """A parser with the model/depth selection and ``--methods``
    (default ``methods``)."""
    parser = argparse.ArgumentParser(
        description=description,
        formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    add_selection_arguments(parser)
    parser.add_argument('--methods', nargs='+', choices=list(METHODS),
                        default=list(methods))
    return parser


def experiment_parser(description: Optional[str] = None
                      ) -> argparse.ArgumentParser:
    """The experiment driver's command line."""
    parser = _selection_parser(description, METHODS)
    parser.add_argument('--seeds', nargs='+', type=int, default=[233, 234],
                        help='seeds of the 10L runs')
    parser.add_argument('--seeds-5l', type=int, default=1,
                        help='how many of --seeds the 5L runs use')
    parser.add_argument('--pretrain-seed', type=int, default=233)
    parser.add_argument('--out', default=None,
                        help=f'output folder (relative: to the repository '
                        f'root); default {DEFAULT_OUT}, with --smoke '
                        f'{DEFAULT_SMOKE_OUT}')
    parser.add_argument('--pretrain-iters', type=int, default=None,
                        help="override the pretraining configs' iterations")
    parser.add_argument('--finetune-iters', type=int, default=None,
                        help="override the fine-tuning configs' iterations")
    parser.add_argument('--micro-batch', type=int, default=None,
                        help='fine-tune with micro-batches of this many '
                        "samples through mmengine's gradient accumulation "
                        '(the same effective batch and optimizer steps; '
                        'iterations and schedule scaled); it must divide '
                        'the configs\' batch')
    parser.add_argument('--profile-iters', type=int, default=3,
                        help='training iterations (after the first) whose '
                        'whole-step saved bytes are measured')
    parser.add_argument('--threads', type=int, default=2,
                        help='torch.set_num_threads')
    parser.add_argument('--force', action='store_true',
                        help='redo the pretraining and every run even if '
                        'their outputs exist')
    parser.add_argument('--smoke', action='store_true',
                        help=f'{SMOKE["images"]} images per split, '
                        f'{SMOKE["iters"]} iterations per run, batch '
                        f'{SMOKE["batch"]}, {SMOKE["crop"][0]}x'
                        f'{SMOKE["crop"][1]} crops: checks the machinery')
    parser.add_argument('--quiet', action='store_true',
                        help='mmengine logs to the files only')
    return parser


def parse_experiment_args(argv: Optional[Sequence[str]], repo: str,
                          parser: Optional[argparse.ArgumentParser] = None
                          ) -> argparse.Namespace:
    """Parsed and checked; repeated values dropped, ``out`` and
    ``data_root`` absolute."""
    parser = parser or experiment_parser()
    args = parser.parse_args(argv)
    args.models = list(dict.fromkeys(args.models))
    args.depths = list(dict.fromkeys(args.depths))
    args.methods = list(dict.fromkeys(args.methods))
    args.seeds = list(dict.fromkeys(args.seeds))
    if not 0 <= args.seeds_5l <= len(args.seeds):
        parser.error(f'--seeds-5l must be in [0, {len(args.seeds)}]')
    if args.micro_batch is not None and args.micro_batch < 1:
        parser.error('--micro-batch must be >= 1')
    for name, least in (('pretrain_iters', 2), ('finetune_iters', 2),
                        ('profile_iters', 1), ('threads', 1)):
        value = getattr(args, name)
        if value is not None and value < least:
            parser.error(f'--{name.replace("_", "-")} must be >= {least}')
    if args.out is None:
        args.out = DEFAULT_SMOKE_OUT if args.smoke else DEFAULT_OUT
    args.out = osp.abspath(osp.join(repo, args.out))
    args.data_root = resolve_data_root(parser, args.data_root, repo)
    return args


def grad_check_parser(description: Optional[str] = None
                      ) -> argparse.ArgumentParser:
    """The gradient check's command line."""
    parser = _selection_parser(
        description, [m for m in METHODS if m != 'vanilla'])
    parser.add_argument('--batches', type=int, default=4,
                        help='fixed target_train batches')
    parser.add_argument('--seed', type=int, default=233)
    parser.add_argument('--out', default=DEFAULT_OUT,
                        help='the experiment\'s output folder (relative: to '
                        'the repository root)')
    return parser


def parse_grad_check_args(argv: Optional[Sequence[str]], repo: str,
                          parser: Optional[argparse.ArgumentParser] = None
                          ) -> argparse.Namespace:
    """Parsed and checked; vanilla (the reference) dropped from the
    methods, ``out`` and ``data_root`` absolute."""
    parser = parser or grad_check_parser()
    args = parser.parse_args(argv)
    if args.batches < 1:
        parser.error('--batches must be >= 1')
    args.methods = [m for m in dict.fromkeys(args.methods) if m != 'vanilla']
    args.out = osp.abspath(osp.join(repo, args.out))
    args.data_root = resolve_data_root(parser, args.data_root, repo)
    return args
