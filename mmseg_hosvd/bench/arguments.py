"""Command lines of the benchmark tools (``tools/benchmark_memory.py``,
``tools/benchmark_speed.py``): the options they share are defined once
here, with the ``argparse`` types and the checks of their values.
"""
import argparse
import ast
import dataclasses
import os.path as osp
from typing import Any, List, Optional, Sequence, Tuple

from ..compression_config import CompressionConfig
from ..lean_backward import LEAN_BACKWARD_MODES
from .configs import MODEL_CONFIGS, SETUPS
from .rows import DEFAULT_LEAN_BACKWARD

#: ``--lean-loss`` values
ON_OFF = ('off', 'on')


def eps_value(text: str) -> float:
    """An explained-variance threshold in (0, 1]."""
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(
            f'eps must be a number in (0, 1], got {text!r}') from None
    if not 0 < value <= 1:  # also rejects NaN
        raise argparse.ArgumentTypeError(
            f'eps must be in (0, 1], got {text!r}')
    return value


def hook_option(text: str) -> Tuple[str, Any]:
    """``'key=value'`` -> ``(key, literal value)``, the key checked against
    :class:`~mmseg_hosvd.compression.CompressionConfig`'s fields."""
    key, sep, value = text.partition('=')
    names = [f.name for f in dataclasses.fields(CompressionConfig)]
    if not sep or key not in names:
        raise argparse.ArgumentTypeError(
            f'expected KEY=VALUE with KEY one of {", ".join(names)}, got '
            f'{text!r}')
    try:
        return key, ast.literal_eval(value)
    except (ValueError, SyntaxError):
        raise argparse.ArgumentTypeError(
            f'{key}: {value!r} is not a Python literal') from None


def positive_int(text: str) -> int:
    """An integer >= 1."""
    try:
        value = int(text)
    except ValueError:
        value = 0
    if value < 1:
        raise argparse.ArgumentTypeError(
            f'expected an integer >= 1, got {text!r}')
    return value


def add_selection_arguments(parser: argparse.ArgumentParser,
                            methods: Sequence[str],
                            models: Sequence[str], setups: Sequence[str],
                            chosen: Sequence[str],
                            note: str = '') -> None:
    """``--models``, ``--setups`` and ``--methods`` (any of ``methods``),
    with these defaults (``chosen``: the methods')."""
    parser.add_argument('--models', nargs='+', choices=list(MODEL_CONFIGS),
                        default=list(models), metavar='MODEL',
                        help=f'any of {", ".join(MODEL_CONFIGS)}')
    parser.add_argument('--setups', nargs='+', choices=SETUPS,
                        default=list(setups), metavar='SETUP',
                        help=f'any of {", ".join(SETUPS)}')
    parser.add_argument('--methods', nargs='+', choices=list(methods),
                        default=list(chosen), metavar='METHOD',
                        help=f'any of {", ".join(methods)}{note}')


def add_variant_arguments(parser: argparse.ArgumentParser) -> None:
    """``--lean-backward MODE [MODE ...]`` and ``--lean-loss {off,on}
    [...]``: every combination runs with each value."""
    parser.add_argument(
        '--lean-backward', nargs='+', choices=LEAN_BACKWARD_MODES,
        default=[DEFAULT_LEAN_BACKWARD], metavar='MODE',
        help='the compression hook\'s lean_backward modes to run each '
        f'combination with (any of {", ".join(LEAN_BACKWARD_MODES)})')
    parser.add_argument(
        '--lean-loss', nargs='+', choices=ON_OFF, default=['off'],
        metavar='ON_OFF',
        help='run each combination without (off) and/or with (on) the '
        'compression hook\'s lean_loss (the decode heads\' resize + '
        'cross-entropy keep only the low-resolution logits)')


def add_run_arguments(parser: argparse.ArgumentParser, crop: int,
                      iters: int, iters_help: str, seed: Optional[int],
                      seed_help: str, data_help: str) -> None:
    """``--batch-size``, ``--crop``, ``--iters``, ``--device``,
    ``--checkpoint``, ``--data-root`` and ``--seed``."""
    import torch
    parser.add_argument('--batch-size', type=positive_int, default=8)
    parser.add_argument('--crop', nargs=2, type=positive_int,
                        default=[crop, crop], metavar=('H', 'W'))
    parser.add_argument('--iters', type=positive_int, default=iters,
                        help=iters_help)
    parser.add_argument('--device',
                        default='cuda' if torch.cuda.is_available() else
                        'cpu')
    parser.add_argument('--checkpoint', default=None,
                        help='weights to start from (loaded with '
                        'weights_only=True); default: random initialisation')
    parser.add_argument('--data-root', default=None, help=data_help)
    parser.add_argument('--seed', type=int, default=seed, help=seed_help)


def check_run_arguments(parser: argparse.ArgumentParser,
                        args: argparse.Namespace) -> argparse.Namespace:
    """A parser error for a bad ``--device``/``--data-root``/
    ``--checkpoint``; repeated values dropped, ``--lean-loss`` as bools,
    ``--crop`` a tuple."""
    import torch
    try:
        device = torch.device(args.device)
    except RuntimeError:
        parser.error(f'--device: unknown device {args.device!r}')
    if device.type == 'cuda' and not torch.cuda.is_available():
        parser.error(f'--device {args.device!r}: CUDA is not available')
    if args.data_root is not None and not osp.isdir(args.data_root):
        parser.error(f'--data-root {args.data_root!r} does not exist or is '
                     'not a folder')
    if args.checkpoint is not None and not osp.isfile(args.checkpoint):
        parser.error(f'--checkpoint {args.checkpoint!r} does not exist')
    for name in ('models', 'setups', 'methods', 'lean_backward'):
        setattr(args, name, list(dict.fromkeys(getattr(args, name))))
    args.lean_loss = [value == 'on' for value in dict.fromkeys(
        args.lean_loss)]
    args.crop = tuple(args.crop)
    return args


def unique(values: Sequence) -> List:
    """``values`` without repeats, in order."""
    return list(dict.fromkeys(values))
