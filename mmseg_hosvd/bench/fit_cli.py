"""The command line of ``tools/fit_memory.py``: its options and its table
(:mod:`.fit` measures and chooses, :mod:`.fit_config` writes)."""
import argparse
from typing import Optional, Sequence

from ..ops import MIB
from .fit import Measurement


def positive(kind):
    def parse(text: str):
        value = kind(text)
        if value <= 0:
            raise argparse.ArgumentTypeError(f'expected > 0, got {text}')
        return value
    return parse


def parse_fit_args(argv: Optional[Sequence[str]] = None,
                   description: Optional[str] = None
                   ) -> argparse.Namespace:
    """The tool's options, checked (errors name the option)."""
    parser = argparse.ArgumentParser(
        description=description,
        formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    parser.add_argument('config', help='a plugin config (.py)')
    parser.add_argument('--budget-mib', type=positive(float), required=True,
                        nargs='+', metavar='N',
                        help='tensor memory available, MiB (2**20 bytes); '
                        'several budgets: one search, one config each')
    parser.add_argument('--device', default='cpu')
    parser.add_argument('--batch-size', type=positive(int), default=None,
                        help="effective batch; default: the config's "
                        'train_dataloader.batch_size')
    parser.add_argument('--crop', type=positive(int), nargs=2, default=None,
                        metavar=('H', 'W'), help="default: the config's "
                        'model.data_preprocessor.size')
    parser.add_argument('--checkpoint', default=None,
                        help='weights to start from (default: random)')
    parser.add_argument('--data-root', default=None,
                        help='a VOC-layout tree (default: synthetic data)')
    parser.add_argument('--margin', type=float, default=None,
                        help='MiB kept free of the budget (default: 5 %% '
                        'of it)')
    parser.add_argument('--out', default=None, help='the config to write '
                        '(one --budget-mib only); default: work_dirs/'
                        'fit_memory/<name>_fit<N>mib.py')
    args = parser.parse_args(argv)
    smallest = min(args.budget_mib)
    if args.margin is not None and not 0 <= args.margin < smallest:
        parser.error(f'--margin {args.margin}: expected 0 <= margin < '
                     f'--budget-mib {smallest:g}')
    if args.out is not None and len(args.budget_mib) > 1:
        parser.error('--out names one config: give one --budget-mib (with '
                     'several, each is written to its default path)')
    return args


def mib_text(value) -> str:
    return '-' if value is None else f'{value / MIB:.1f}'


def row(m: Measurement) -> str:
    """One line of the table."""
    seconds = ('-' if m.seconds_per_batch is None
               else f'{m.seconds_per_batch:.3f}')
    total = 'OOM' if m.total_bytes is None else mib_text(m.total_bytes)
    note = m.candidate.accuracy
    micro = f'{m.micro_batch:>3d} x{m.accumulative_counts:<3d}'
    exact = 'yes' if m.candidate.exact else 'no'
    return (f'{m.candidate.name:40s} {micro} {mib_text(m.peak_bytes):>7s} '
            f'{total:>7s} {seconds:>8s} {exact:5s} {note}')


def print_table(tried: Sequence[Measurement]) -> None:
    """The configurations tried and a legend."""
    print(f"{'config':40s} {'micro x k':9s} {'peak':>7s} {'total':>7s} "
          f"{'s/batch':>8s} exact accuracy note (source)")
    for measured in tried:
        print(row(measured))
    print('micro x k: micro-batch x accumulation steps; peak: the effective '
          "step's peak above what is held between steps (MiB); total: held "
          '+ peak (MiB); s/batch: one timed step (rough)')
