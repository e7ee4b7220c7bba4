"""The memory benchmark (``tools/benchmark_memory.py``): its command line,
its rows' configs and steps, and the record each row writes.

For every :class:`~.rows.BenchmarkRow` it builds the model, its plugin
hooks and its optim wrapper from the row's leaf config under ``configs/``
(:class:`~.memory_row.MemoryRow`: one warm-up step, then one step inside a
peak meter); the rows of one model and setup then run ``--iters`` measured
real ``model.train_step`` calls round-robin, one row after the other in
each round, so that a load drifting during the run slows all rows alike.
Sizes are in MiB (2**20 bytes), times in seconds.
"""
import argparse
import dataclasses
import itertools
import json
import os
import os.path as osp
import platform
import statistics
from typing import Any, Callable, Dict, List, Optional, Sequence, Tuple

import torch

from ..ops import MIB, VANILLA
from .arguments import (add_run_arguments, add_selection_arguments,
                        add_variant_arguments, check_run_arguments,
                        eps_value, hook_option, positive_int, unique)
from .configs import MODEL_CONFIGS, SETUPS, leaf_config_path, load_leaf_config
from .data import dataset_batches, synthetic_batches
from .floor import inference_peak_bytes
from .frontier import BUDGETS_MIB, frontier_plot
from .memory_row import MemoryRow, per_round_ratios
from .report import group_shares, plot, write_csv
from .rows import (CHECKPOINT, CHECKPOINT_PLACEMENT, MEMORY_METHODS, PRESETS,
                   BenchmarkRow, config_method, is_low_rank, memory_rows)


def memory_parser(description: Optional[str] = None,
                  default_out: str = osp.join('work_dirs',
                                              'benchmark_memory')
                  ) -> argparse.ArgumentParser:
    """The memory benchmark's command line."""
    parser = argparse.ArgumentParser(
        description=description,
        formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    add_selection_arguments(parser, MEMORY_METHODS, MODEL_CONFIGS, SETUPS,
                            MEMORY_METHODS)
    parser.add_argument('--eps', nargs='+', type=eps_value,
                        default=[0.8, 0.9],
                        help='explained-variance thresholds for svd/hosvd')
    add_variant_arguments(parser)
    parser.add_argument(
        '--amp', action='store_true',
        help='give each row an amp twin: bf16 autocast on the CPU, '
        'AmpOptimWrapper (float16) on CUDA')
    parser.add_argument(
        '--preset', choices=list(PRESETS), default=None,
        help='run this named row set for every model and setup instead of '
        'the cross product of --methods, --eps, --lean-backward, '
        '--lean-loss and --amp (which-to-pick: vanilla, vanilla with '
        'lean_backward exact + lean loss, checkpoint, vanilla amp, '
        'gradient filter, hosvd 0.8 exact, hosvd 0.8 all + lean loss, asi '
        '0.8 all + lean loss, hosvd 0.8 all + lean loss amp; '
        'which-to-pick-short: its vanilla, checkpoint, vanilla amp and the '
        'two hosvd all + lean loss rows; frontier: vanilla, checkpoint, '
        'vanilla amp, hosvd 0.8 and asi 0.8 all + lean loss, to run with '
        '--micro-batch 1 2 4 8)')
    add_run_arguments(
        parser, crop=512, iters=10,
        iters_help='measured iterations, after one warm-up', seed=None,
        seed_help="default: the config's randomness.seed (233)",
        data_help='a VOC-layout tree read with the config\'s train pipeline;'
        ' default: synthetic images and labels')
    parser.add_argument(
        '--micro-batch', nargs='+', type=positive_int, default=None,
        metavar='M',
        help='run each row with micro-batches of M samples through '
        "mmengine's gradient accumulation (optim_wrapper "
        'accumulative_counts = batch-size / M; the effective batch stays '
        '--batch-size; each M must divide it); several values: a row per '
        'value. Default: the whole batch in one step')
    parser.add_argument(
        '--hook-option', nargs='+', type=hook_option, default=[],
        metavar='KEY=VALUE',
        help='more compression hook keys for every row that is not plain '
        '(a Python literal value), e.g. split_concat=True frozen_chunk=1')
    parser.add_argument(
        '--anatomy', action='store_true',
        help='one more step per row under the profiler: what is live at '
        'its peak, by group, and which phase, module and op were running '
        '(slow on a CPU)')
    parser.add_argument(
        '--budgets', nargs='+', type=float, default=list(BUDGETS_MIB),
        metavar='MIB',
        help='with several --micro-batch values: the step-peak budgets of '
        'the "fastest that fits" table')
    parser.add_argument('--out', default=default_out, help='output folder')
    return parser


def parse_memory_args(argv: Optional[Sequence[str]] = None,
                      parser: Optional[argparse.ArgumentParser] = None
                      ) -> argparse.Namespace:
    """Parsed and checked (:func:`~.arguments.check_run_arguments`)."""
    parser = parser or memory_parser()
    args = check_run_arguments(parser, parser.parse_args(argv))
    args.eps = unique(args.eps)
    micro = unique(args.micro_batch or [args.batch_size])
    bad = [m for m in micro if args.batch_size % m]
    if bad:
        parser.error(f'--micro-batch {bad}: must divide --batch-size '
                     f'{args.batch_size}')
    args.micro_batch = micro
    return args


def rows_of(args: argparse.Namespace) -> List[BenchmarkRow]:
    """The rows ``args`` ask for, in run order."""
    return memory_rows(args.models, args.setups, args.methods, args.eps,
                       args.lean_backward, args.lean_loss, args.amp,
                       args.preset, args.micro_batch,
                       tuple(args.hook_option))


def load_row_config(configs: str, model: str, setup: str, method: str,
                    eps: Optional[float], crop: Tuple[int, int],
                    lean_backward: Optional[str] = None,
                    lean_loss: bool = False,
                    options: Optional[Dict[str, Any]] = None):
    """The leaf config of one combination (``checkpoint``: the vanilla
    one), its compression hook's ``lean_backward`` set (None: the
    config's), ``lean_loss=True`` if asked for and ``options`` (more hook
    keys), and its path.

    Raises:
        SystemExit: no such leaf config, or not of that method.
    """
    method = config_method(method)
    path, _ = leaf_config_path(configs, model, setup, method, eps)
    try:
        cfg = load_leaf_config(configs, model, setup, method, eps, crop)
    except (FileNotFoundError, ValueError) as error:
        raise SystemExit(str(error)) from None
    if lean_backward is not None:
        cfg.default_hooks.compression.lean_backward = lean_backward
    if lean_loss:
        cfg.default_hooks.compression.lean_loss = True
    for key, value in (options or {}).items():
        cfg.default_hooks.compression[key] = value
    return cfg, path


def build_row(args, row: BenchmarkRow, configs: str) -> MemoryRow:
    """The row's training step (from its leaf config), batches and meters,
    warmed up (:meth:`~.memory_row.MemoryRow.warm_up`)."""
    device = torch.device(args.device)
    cfg, _ = load_row_config(configs, row.model, row.setup, row.method,
                             row.eps, args.crop, row.lean_backward,
                             row.lean_loss, row.hook_options())
    seed = args.seed if args.seed is not None else cfg.get(
        'randomness', {}).get('seed', 233)
    if args.data_root is None:
        batches = synthetic_batches(args.batch_size, args.crop,
                                    cfg.model.decode_head.num_classes, seed)
    else:
        try:
            batches = dataset_batches(cfg, args.data_root, args.crop,
                                      args.batch_size, seed)
        except ValueError as error:
            raise SystemExit(f'--data-root: {error}') from None
    if device.type == 'cuda':
        torch.cuda.empty_cache()
    run = MemoryRow(
        cfg, batches, device, checkpoint=args.checkpoint, amp=row.amp,
        seed=seed,
        activation_checkpointing=(CHECKPOINT_PLACEMENT
                                  if row.method == CHECKPOINT else None),
        micro_batch=row.micro_batch)
    run.warm_up()
    return run


def _median(values: Sequence[float]) -> Optional[float]:
    return statistics.median(values) if values else float('nan')


def _averaged(shares: Dict[str, float], iters: int) -> Dict[str, float]:
    return dict(sorted(((k, v / iters) for k, v in shares.items()),
                       key=lambda item: -item[1]))


def step_fields(measured: MemoryRow, walk: bool) -> dict:
    """The whole-step fields of a record: saved bytes (MiB), their
    breakdown by op (mean over the timed steps), times (s)."""
    steps = measured.measurements
    sums: Dict[str, Dict[str, float]] = dict(
        by_op={}, by_op_inclusive={}, by_saved={}, parameters_by_op={})
    not_in_graph = []
    for step in steps:
        if step.breakdown is None:
            continue
        not_in_graph.append(
            (step.saved_bytes - step.breakdown.activation_bytes) / MIB)
        for key, target in sums.items():
            for name, share in getattr(step.breakdown, key).items():
                target[name] = target.get(name, 0.0) + share.bytes / MIB
    breakdown = {key: _averaged(sums[key], len(steps))
                 for key in ('by_op', 'by_saved', 'by_op_inclusive',
                             'parameters_by_op')}
    saved = [m.saved_bytes / MIB for m in steps]
    # None: not walked (checkpoint rows)
    groups = group_shares(breakdown['by_saved']) if walk else dict.fromkeys(
        group_shares({}))
    times = {key: [getattr(m, f'{key}_s') for m in steps]
             for key in ('forward', 'backward', 'optimizer', 'step')}
    return dict(
        step_saved_mib_mean=statistics.fmean(saved),
        step_saved_mib_peak=max(saved),
        step_saved_param_mib_mean=statistics.fmean(
            m.saved_param_bytes / MIB for m in steps),
        step_not_in_graph_mib_mean=(statistics.fmean(not_in_graph)
                                    if not_in_graph else None),
        step_peak_mib=measured.peak_bytes / MIB,
        step_saved_groups_mib=groups,
        breakdown=breakdown,
        cuda_peak_mib=(max(measured.cuda_peaks) / MIB
                       if measured.cuda_peaks else None),
        forward_time_s_median=_median(times['forward']),
        backward_time_s_median=_median(times['backward']),
        optimizer_time_s_median=_median(times['optimizer']),
        step_time_s_median=_median(times['step']),
        step_time_s=list(times['step']))


def layer_fields(measured: MemoryRow, method: str,
                 summary: dict) -> Tuple[dict, dict]:
    """``(layers, ranks)`` of a record, by layer path."""
    installed = measured.installed
    layers, ranks = {}, {}
    for path, layer in summary['layers'].items():
        layers[path] = dict(
            method=layer['method'],
            input_shape=layer['input_shape'],
            paper_mib_mean=layer['paper_mib']['mean'],
            paper_mib_last=None,
            kept_mib_mean=layer['kept_mib']['mean'],
            radius=getattr(installed[path], 'radius', None),  # convs only
            eps=installed[path].eps if is_low_rank(method) else None)
        ranks[path] = dict(last=layer['ranks']['last'],
                           mean=layer['ranks']['mean'])
    for path, stats in measured.last_stats.items():
        layers[path]['paper_mib_last'] = stats.paper_bytes / MIB
    return layers, ranks


def row_record(args, row: BenchmarkRow, measured: MemoryRow,
               time_ratio: Optional[float], repo: str) -> dict:
    """The results.json record of a row after its timed steps (paths
    relative to ``repo``)."""
    device = torch.device(args.device)
    summary = measured.memory_summary()
    total = summary['total']
    layers, ranks = layer_fields(measured, row.method, summary)
    record = dict(
        model=row.model, setup=row.setup, method=row.method,
        eps=row.eps if is_low_rank(row.method) else None,
        lean_backward=row.lean_backward, lean_loss=row.lean_loss,
        amp=row.amp,
        micro_batch=row.micro_batch,
        options=dict(row.options),
        accumulative_counts=measured.step.accumulative_counts,
        checkpointing=(CHECKPOINT_PLACEMENT if row.method == CHECKPOINT
                       else None),
        config=osp.relpath(measured.cfg.filename, repo),
        activation_mib_mean=total['paper_mib']['mean'],
        activation_mib_peak=total['paper_mib']['peak'],
        activation_mib_std=total['paper_mib']['std'],
        activation_mib_last=sum(
            s.paper_bytes for s in measured.last_stats.values()) / MIB,
        kept_mib_mean=total['kept_mib']['mean'],
        kept_mib_peak=total['kept_mib']['peak'])
    record.update(step_fields(measured, walk=row.method != CHECKPOINT))
    record.update(
        step_time_ratio_per_round=time_ratio,
        ranks=ranks,
        layers=layers,
        num_layers=len(measured.installed),
        trainable_params=sum(
            p.numel() for p in measured.step.trainable_parameters()),
        device=str(device),
        device_name=(torch.cuda.get_device_name(device)
                     if device.type == 'cuda' else platform.processor()
                     or platform.machine()),
        init=args.checkpoint if args.checkpoint else 'random',
        data=args.data_root if args.data_root else 'synthetic',
        batch=args.batch_size,
        crop=list(args.crop),
        iters=len(measured.measurements),
        seed=measured.seed,
        torch=torch.__version__)
    return record


def measure_table(args, rows: Sequence[BenchmarkRow], configs: str,
                  repo: str, progress: Callable[[BenchmarkRow, int], None]
                  ) -> List[dict]:
    """Build and warm up every row of one model and setup, time them
    round-robin, return their records; ``progress(row, steps)`` before
    (0 steps) and after each row's build (2 steps) and timed step (1)."""
    measured: List[MemoryRow] = []
    anatomies: List[Optional[dict]] = []
    for row in rows:
        progress(row, 0)
        run = build_row(args, row, configs)
        anatomies.append(run.anatomy().as_mib() if args.anatomy else None)
        measured.append(run)
        progress(row, 2)
    for _ in range(args.iters):
        for row, run in zip(rows, measured):
            progress(row, 0)
            try:
                run.timed_step()
            except RuntimeError as error:
                raise RuntimeError(f'{row.model} {row.setup} {row.method}: '
                                   f'{error}') from None
            progress(row, 1)
    ratios = per_round_ratios(
        [[m.step_s for m in run.measurements] for run in measured])
    floors = {micro: floor_bytes(args, rows[0], configs, micro)
              for micro in unique(row.micro_batch for row in rows)}
    records = []
    for row, run, ratio, anatomy in zip(rows, measured, ratios, anatomies):
        record = row_record(args, row, run, ratio, repo)
        floor = floors[row.micro_batch]
        record.update(floor_mib=floor / MIB,
                      peak_over_floor=run.peak_bytes / floor,
                      peak_anatomy=anatomy)
        records.append(record)
        run.close()
    return records


def floor_bytes(args, row: BenchmarkRow, configs: str,
                micro_batch: Optional[int]) -> int:
    """The floor of ``row``'s model at one micro-batch
    (:func:`~.floor.inference_peak_bytes`: plain MMSegmentation's no-grad
    ``'tensor'`` forward, eval mode) on a synthetic batch of that size."""
    cfg, _ = load_row_config(configs, row.model, row.setup, VANILLA,
                             None, args.crop)
    size = micro_batch or args.batch_size
    data = next(synthetic_batches(size, args.crop,
                                  cfg.model.decode_head.num_classes, 0))
    return inference_peak_bytes(cfg, data, args.device)


def run_memory_benchmark(args, configs: str, repo: str) -> List[dict]:
    """Every row of ``args``, one model and setup at a time (a tqdm bar on
    stderr); writes ``results.json`` (after each table), ``results.csv``
    and ``memory.png`` to ``args.out`` and returns the records."""
    from mmseg.utils import register_all_modules
    from tqdm import tqdm

    from .report import method_label
    register_all_modules()
    rows = rows_of(args)
    os.makedirs(args.out, exist_ok=True)
    records: List[dict] = []
    with tqdm(total=len(rows) * (args.iters + 2), unit='it',
              dynamic_ncols=True) as bar:

        def progress(row: BenchmarkRow, steps: int) -> None:
            if steps:
                bar.update(steps)
            else:
                bar.set_description(f'{row.model} {row.setup} ' +
                                    method_label({**dataclasses.asdict(row),
                                                  'batch': args.batch_size}))

        for _, table in itertools.groupby(
                rows, key=lambda row: (row.model, row.setup)):
            records += measure_table(args, list(table), configs, repo,
                                     progress)
            # write as we go: a long run keeps what it measured
            with open(osp.join(args.out, 'results.json'), 'w') as f:
                json.dump(records, f, indent=2)
    write_csv(records, osp.join(args.out, 'results.csv'))
    plot(records, osp.join(args.out, 'memory.png'))
    if len(args.micro_batch) > 1:
        frontier_plot(records, osp.join(args.out, 'frontier.png'))
    return records
