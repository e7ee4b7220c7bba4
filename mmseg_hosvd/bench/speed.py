"""The speed benchmark (``tools/benchmark_speed.py``): its command line, its
contenders and their step rows.

Every method of ``--methods`` (x ``--lean-backward`` x ``--lean-loss``) is
a :class:`Contender` with its own :class:`~.step.TrainingStep`, built from
the setup's vanilla leaf config with the compression hook's settings
replaced (same seed, hence the same random weights unless a checkpoint).
:class:`SpeedBenchmark` times real ``model.train_step`` calls on one fixed
batch, split by :class:`~.probe.StepProbe` into forward, backward and
clipping + optimizer step, **round-robin, one step each per round** (the
first contender of a round rotates), so that a concurrent load slows them
alike. Times in ms, memory in MiB (2**20 bytes).
"""
import argparse
import gc
import math
import os
import statistics
from typing import Callable, Dict, List, Optional, Sequence

import torch

from ..ops import MIB, Method, distinct_kept_bytes
from .arguments import (add_run_arguments, add_selection_arguments,
                        add_variant_arguments, check_run_arguments,
                        eps_value, positive_int)
from .configs import load_leaf_config
from .data import folder_batch, smooth_batch
from .layer_timing import layer_rows, layer_table_rows, median_ms
from .probe import StepProbe
from .rows import DEFAULT_LEAN_BACKWARD, METHODS, is_low_rank
from .step import TrainingStep

VANILLA = Method.VANILLA.value


def speed_parser(description: Optional[str] = None
                 ) -> argparse.ArgumentParser:
    """The speed benchmark's command line."""
    parser = argparse.ArgumentParser(
        description=description,
        formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    add_selection_arguments(parser, METHODS, ['deeplabv3'], ['10L'],
                            [VANILLA, Method.HOSVD.value, Method.ASI.value],
                            ' (vanilla is always added: ratios are to it)')
    parser.add_argument('--eps', type=eps_value, default=0.8,
                        help='eps of svd/hosvd/asi')
    parser.add_argument('--asi-budget-mib', type=float, default=None,
                        help='asi: allocate ranks under this total budget '
                        'instead of the eps rule')
    add_variant_arguments(parser)
    add_run_arguments(
        parser, crop=256, iters=5,
        iters_help='measured rounds (one step per method each)', seed=0,
        seed_help='initialisation and data seed',
        data_help='a VOC-layout tree (JPEGImages, SegmentationClass[Aug], '
        'ImageSets/Segmentation/train.txt): its first images, '
        'centre-cropped; default: smooth random images')
    parser.add_argument('--warmup', type=positive_int, default=1,
                        help='rounds before the measured ones')
    parser.add_argument('--threads', type=positive_int, default=2,
                        help='torch.set_num_threads')
    parser.add_argument('--no-layers', dest='layers', action='store_false',
                        help='skip the per-layer decomposition table')
    parser.add_argument('--layer-repeats', type=positive_int, default=3,
                        help='timed runs per per-layer operation (median); '
                        'the four SVDs run once')
    parser.add_argument('--profile', action='store_true',
                        help='one extra profiled step per method')
    parser.add_argument('--profile-rows', type=positive_int, default=15)
    parser.add_argument('--json', default=None, metavar='PATH',
                        help='also write the tables\' rows as JSON')
    return parser


def parse_speed_args(argv: Optional[Sequence[str]] = None,
                     parser: Optional[argparse.ArgumentParser] = None
                     ) -> argparse.Namespace:
    """Parsed and checked; ``vanilla`` first among the methods."""
    parser = parser or speed_parser()
    args = check_run_arguments(parser, parser.parse_args(argv))
    args.methods = [VANILLA] + [m for m in args.methods if m != VANILLA]
    return args


class Contender:
    """One method: its own training step (model, hooks, optim wrapper) and
    timings (seconds).

    Args:
        method: a compression method.
        model_name: a key of :data:`~.configs.MODEL_CONFIGS`.
        setup: one of :data:`~.configs.SETUPS`.
        args: the parsed command line (eps, seed, crop, device, ...).
        configs: the repository's ``configs`` folder.
        lean_backward: the compression hook's ``lean_backward``.
        lean_loss: the compression hook's ``lean_loss``.
    """

    def __init__(self, method: str, model_name: str, setup: str, args,
                 configs: str, lean_backward: str = DEFAULT_LEAN_BACKWARD,
                 lean_loss: bool = False):
        self.method = method
        self.lean_backward = lean_backward
        self.lean_loss = lean_loss
        cfg = load_leaf_config(configs, model_name, setup, VANILLA,
                               crop=args.crop)
        self.config = cfg.filename
        hook_cfg = cfg.default_hooks.compression
        hook_cfg.method = method
        hook_cfg.lean_backward = lean_backward
        hook_cfg.lean_loss = lean_loss
        if is_low_rank(method):
            hook_cfg.eps = args.eps
        if method == Method.ASI:
            hook_cfg.seed = args.seed
            if args.asi_budget_mib is not None:
                hook_cfg.budget_mib = args.asi_budget_mib
        self.num_classes = cfg.model.decode_head.num_classes
        self.training = TrainingStep.from_config(
            cfg, args.device, checkpoint=args.checkpoint, seed=args.seed)
        self.installed = self.training.installed
        self.model = self.training.model
        self.probe = StepProbe(self.model,
                               self.training.optim_wrapper.optimizer,
                               self.training.trainable_parameters(),
                               self.training.state_tensors(),
                               torch.device(args.device))
        self.times: Dict[str, List[float]] = dict(forward=[], backward=[],
                                                  optimizer=[], step=[])
        self.last_stats = {}

    @property
    def label(self) -> str:
        """``'hosvd, lean exact'`` (``', lean loss'`` added if on)."""
        return f'{self.method}, lean {self.lean_backward}' + (
            ', lean loss' if self.lean_loss else '')

    def step(self, data: dict, record: bool) -> float:
        """One real ``train_step``; returns its forward + backward +
        optimizer time (s)."""
        gc.collect()
        with self.probe:
            measured = self.probe.measure(lambda: self.training.run(data))
        self.last_stats = self.training.last_stats()
        if record:
            self.times['forward'].append(measured.forward_s)
            self.times['backward'].append(measured.backward_s)
            self.times['optimizer'].append(measured.optimizer_s)
            self.times['step'].append(measured.step_s)
        return measured.step_s

    def ranks_label(self) -> str:
        """The first three distinct rank tuples of the last step."""
        ranks = [s.ranks for s in self.last_stats.values() if s.ranks]
        if not ranks:
            return '-'
        distinct = list(dict.fromkeys(tuple(r) for r in ranks))
        text = ' '.join(str(r).replace(' ', '') for r in distinct[:3])
        return text + (' ...' if len(distinct) > 3 else '')


def method_name(contender: Contender, args) -> str:
    """The step table's method cell: ``'hosvd (eps 0.8)'``; ``', lean
    loss'`` added when ``--lean-loss`` runs both off and on."""
    name = contender.method + (f' (eps {args.eps:g})'
                               if is_low_rank(contender.method) else '')
    if contender.method == Method.ASI and args.asi_budget_mib is not None:
        name = f'asi (budget {args.asi_budget_mib:g} MiB)'
    if contender.lean_loss and len(args.lean_loss) > 1:
        name += ', lean loss'
    return name


def step_rows(contenders: List[Contender], args) -> List[dict]:
    """Per contender: median times (ms), ratios to vanilla (the first
    contender) and to the same method's first lean mode, kept MiB and
    ranks."""
    vanilla = contenders[0]
    base = statistics.median(vanilla.times['step'])
    rows = []
    for c in contenders:
        same = next(o for o in contenders
                    if o.method == c.method and o.lean_loss == c.lean_loss)
        step = statistics.median(c.times['step'])
        stats = list(c.last_stats.values())
        rows.append(dict(
            method=method_name(c, args),
            lean_backward=c.lean_backward,
            forward_ms=median_ms(c.times['forward']),
            backward_ms=median_ms(c.times['backward']),
            optimizer_ms=median_ms(c.times['optimizer']),
            step_ms=1e3 * step,
            step_ratio=step / base,
            paired_ratio=statistics.median(
                s / v for s, v in zip(c.times['step'],
                                      vanilla.times['step'])),
            lean_ratio=statistics.median(
                s / o for s, o in zip(c.times['step'], same.times['step'])),
            kept_mib=(distinct_kept_bytes(stats) / MIB
                      if stats else float('nan')),
            ranks=c.ranks_label()))
    return rows


#: ``(key, header, format)`` of the step table
STEP_COLUMNS = (('method', 'method', None),
                ('lean_backward', 'lean_backward', None),
                ('forward_ms', 'forward ms', '.0f'),
                ('backward_ms', 'backward ms', '.0f'),
                ('optimizer_ms', 'optim ms', '.0f'),
                ('step_ms', 'step ms', '.0f'),
                ('step_ratio', 'step / vanilla', '.3f'),
                ('paired_ratio', 'per-round ratio (median)', '.3f'),
                ('lean_ratio', 'step / same method, first lean mode', '.3f'),
                ('kept_mib', 'kept MiB', '.2f'), ('ranks', 'ranks', None))


def _cell(value, spec: Optional[str]) -> str:
    if spec is None:
        return str(value)
    if isinstance(value, float) and math.isnan(value):
        return '-'
    return format(value, spec)


def column_table(rows: List[dict], columns) -> str:
    """A github markdown table of ``rows`` (dicts) with ``columns``:
    ``(key, header, format spec or None for text)``."""
    from tabulate import tabulate
    return tabulate(
        [[_cell(row[key], spec) for key, _, spec in columns]
         for row in rows],
        headers=[header for _, header, _ in columns], tablefmt='github',
        disable_numparse=True,
        colalign=['left' if spec is None else 'right'
                  for _, _, spec in columns])


def load_text() -> str:
    """The load average, ``'1.00 0.90 0.80'`` (``'n/a'`` if unknown)."""
    try:
        return ' '.join(f'{v:.2f}' for v in os.getloadavg())
    except OSError:
        return 'n/a'


class SpeedBenchmark:
    """The contenders of one model and setup and their fixed batch.

    Args:
        args: the parsed command line (:func:`parse_speed_args`).
        model_name: a key of :data:`~.configs.MODEL_CONFIGS`.
        setup: one of :data:`~.configs.SETUPS`.
        configs: the repository's ``configs`` folder.
    """

    def __init__(self, args, model_name: str, setup: str, configs: str):
        self.args = args
        self.device = torch.device(args.device)
        self.contenders = [
            Contender(m, model_name, setup, args, configs, lean, loss)
            for m in args.methods for lean in args.lean_backward
            for loss in args.lean_loss
        ]
        self.data = self._batch(self.contenders[0].num_classes)

    def _batch(self, num_classes: int) -> dict:
        args = self.args
        if args.data_root is None:
            return smooth_batch(args.batch_size, args.crop, num_classes,
                                args.seed)
        try:
            return folder_batch(args.data_root, args.batch_size, args.crop,
                                num_classes, args.seed)
        except ValueError as error:
            raise SystemExit(f'--data-root: {error}') from None

    def run_rounds(self, report: Callable[[str], None]) -> None:
        """``--warmup`` then ``--iters`` rounds, one step per contender
        each (the first of a round rotates); ``report`` gets a line per
        round."""
        contenders = self.contenders
        rounds = self.args.warmup + self.args.iters
        for index in range(rounds):
            record = index >= self.args.warmup
            shift = index % len(contenders)
            for c in contenders[shift:] + contenders[:shift]:
                c.step(self.data, record)
            report(f'  round {index + 1}/{rounds} '
                   f'{"measured" if record else "warm-up"}: ' + ', '.join(
                       f'{c.label} {1e3 * c.times["step"][-1]:.0f} ms'
                       if record else c.label for c in contenders) +
                   f' (load {load_text()})')

    def step_rows(self) -> List[dict]:
        """:func:`step_rows` of the measured rounds."""
        return step_rows(self.contenders, self.args)

    def layer_rows(self) -> List[dict]:
        """The layer table's rows, on the vanilla contender's model."""
        vanilla = self.contenders[0]
        return layer_table_rows(
            layer_rows(vanilla.model, vanilla.installed, self.data,
                       self.args.eps, self.args.layer_repeats, self.device))

    def profile(self, contender: Contender, rows: int) -> str:
        """torch.profiler's table (top ``rows`` by self time) of one step."""
        from torch.profiler import ProfilerActivity, profile
        activities = [ProfilerActivity.CPU]
        if self.device.type == 'cuda':
            activities.append(ProfilerActivity.CUDA)
        with profile(activities=activities) as prof:
            contender.step(self.data, record=False)
        sort = 'self_cuda_time_total' if self.device.type == 'cuda' else \
            'self_cpu_time_total'
        return prof.key_averages().table(sort_by=sort, row_limit=rows)
