"""Activation memory of real fine-tuning steps, per model, setup and method.

For every combination of ``--models`` x ``--setups`` x ``--methods`` (x
``--eps`` for SVD/HOSVD/ASI), or every row of a ``--preset``, it builds the
model, its plugin hooks and its optim wrapper from the 5L/10L leaf config
under ``configs/`` with :class:`mmseg_hosvd.bench.TrainingStep`
(mmengine's ``MODELS.build``, ``HOOKS.build`` + ``install``,
``build_optim_wrapper``). Each row (:class:`mmseg_hosvd.bench.MemoryRow`)
runs one warm-up step and one step inside a
:class:`mmseg_hosvd.peak_memory.PeakMemoryMeter`; then the rows of one
model and setup run ``--iters`` measured real ``model.train_step`` calls
(data preprocessor, ``mode='loss'``, backward, the config's gradient
clipping and optimizer step) round-robin, one row after the other in each
round, so that a load drifting during the run slows all rows alike. They
are measured from the outside by :class:`mmseg_hosvd.bench.StepProbe`,
recording

* ``step_peak_mib``: the peak memory of one whole step (forward, backward,
  optimizer step) above what was held before it (CPU: the profiler's
  allocation events; CUDA: ``max_memory_allocated``), untimed;
* the paper's activation count of the compressed/counted layers (fp32, MiB =
  2**20 bytes; mean and peak over the iterations) and the bytes those layers
  really keep;
* what autograd saves for the whole step (every saved storage once,
  parameters and buffers apart), and where it comes from: the saving op
  (conv inputs, BN inputs, ReLU outputs, compressed factors, loss, ...), see
  :mod:`mmseg_hosvd.profiling`;
* the CUDA allocator peak of the timed steps (on a GPU), forward/backward/
  optimizer/step median times, ``step_time_ratio_per_round`` (the median
  over rounds of the row's step time over the first row's of its model
  and setup) and the ranks per layer (last and mean).

Peers as rows of the same run: method ``checkpoint`` is the vanilla config
with its trainable modules under ``torch.utils.checkpoint``, one per block
(exact gradients); ``--amp`` adds an ``amp: true`` twin of each row (bf16
autocast on the CPU, ``AmpOptimWrapper`` float16 on CUDA); ``--lean-loss on``
sets the compression hook's ``lean_loss``.

Writes ``OUT/results.json``, ``OUT/results.csv`` and ``OUT/memory.png`` and
prints a markdown table.

Usage::

    .venv/bin/python tools/benchmark_memory.py --models fcn upernet \\
        --setups 5L --methods vanilla hosvd --eps 0.8 --iters 3

Without ``--checkpoint`` the weights are random (said in the output and in
each record); without ``--data-root`` the batches are random images and
random label maps (seeded).
"""
import argparse
import dataclasses
import itertools
import json
import os
import os.path as osp
import platform
import statistics
import sys
import time
from typing import Dict, List, Optional, Sequence, Tuple

REPO = osp.dirname(osp.dirname(osp.abspath(__file__)))
if REPO not in sys.path:
    sys.path.insert(0, REPO)

import torch  # noqa: E402

import mmseg_hosvd.engine  # noqa: E402,F401  (mmcv.ops fallback, hooks)
from mmseg_hosvd.bench.arguments import (eps_value,  # noqa: E402
                                        positive_int)
from mmseg_hosvd.bench import (MODEL_CONFIGS, SETUPS,  # noqa: E402
                               MemoryRow, dataset_batches, per_round_ratios,
                               leaf_config_path, load_leaf_config,
                               synthetic_batches)
from mmseg_hosvd.bench.presets import PRESETS  # noqa: E402
from mmseg_hosvd.bench.report import (OP_GROUPS,  # noqa: E402,F401
                                      comparison_table, group_shares,
                                      markdown_table, method_label,
                                      op_group, plot, write_csv)
from mmseg_hosvd.lean_backward import LEAN_BACKWARD_MODES  # noqa: E402
from mmseg_hosvd.ops import MIB  # noqa: E402

CONFIGS = osp.join(REPO, 'configs')
DEFAULT_OUT = osp.join(REPO, 'work_dirs', 'benchmark_memory')

METHODS = ('vanilla', 'checkpoint', 'gradient_filter', 'svd', 'hosvd',
           'asi')
LOW_RANK = ('svd', 'hosvd', 'asi')
#: methods that run another method's leaf config (plus model surgery)
CONFIG_METHODS = {'checkpoint': 'vanilla'}
#: placement of ``checkpoint``'s torch.utils.checkpoint: one per block
#: (10L, batch 2, 256x256, CPU step peak: FCN 66.8 MiB per block, 67.9 per
#: segment; DeepLabV3 62.5 both; 86.8 and 72.2 without checkpointing)
CHECKPOINT_PLACEMENT = 'block'


def config_method(method: str) -> str:
    """The leaf config a benchmark method runs (``checkpoint``: the
    vanilla one, its trainable modules then checkpointed)."""
    return CONFIG_METHODS.get(method, method)


@dataclasses.dataclass(frozen=True)
class Row:
    """One benchmark row: a combination and its variant flags."""
    model: str
    setup: str
    method: str
    eps: Optional[float]
    lean_backward: str
    lean_loss: bool = False
    amp: bool = False


# ---------------------------------------------------------------------------
# command line
# ---------------------------------------------------------------------------
def parse_args(argv: Optional[Sequence[str]] = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        description=__doc__.split('\n')[0],
        formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    parser.add_argument('--models', nargs='+', choices=list(MODEL_CONFIGS),
                        default=list(MODEL_CONFIGS), metavar='MODEL',
                        help=f'any of {", ".join(MODEL_CONFIGS)}')
    parser.add_argument('--setups', nargs='+', choices=SETUPS,
                        default=list(SETUPS), metavar='SETUP',
                        help=f'any of {", ".join(SETUPS)}')
    parser.add_argument('--methods', nargs='+', choices=METHODS,
                        default=list(METHODS), metavar='METHOD',
                        help=f'any of {", ".join(METHODS)}')
    parser.add_argument('--eps', nargs='+', type=eps_value,
                        default=[0.8, 0.9],
                        help='explained-variance thresholds for svd/hosvd')
    parser.add_argument(
        '--lean-backward', nargs='+', choices=LEAN_BACKWARD_MODES,
        default=['exact'], metavar='MODE',
        help='the compression hook\'s lean_backward modes to run each '
        f'combination with (any of {", ".join(LEAN_BACKWARD_MODES)}); '
        'modes of one combination run one after the other')
    parser.add_argument(
        '--lean-loss', nargs='+', choices=('off', 'on'), default=['off'],
        metavar='ON_OFF',
        help='run each combination without (off) and/or with (on) the '
        'compression hook\'s lean_loss (the decode heads\' resize + '
        'cross-entropy keep only the low-resolution logits)')
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
        'two hosvd all + lean loss rows)')
    parser.add_argument('--batch-size', type=positive_int, default=8)
    parser.add_argument('--crop', nargs=2, type=positive_int,
                        default=[512, 512], metavar=('H', 'W'))
    parser.add_argument('--iters', type=positive_int, default=10,
                        help='measured iterations, after one warm-up')
    parser.add_argument('--device',
                        default='cuda' if torch.cuda.is_available() else
                        'cpu')
    parser.add_argument('--checkpoint', default=None,
                        help='weights to start from (loaded with '
                        'weights_only=True); default: random initialisation')
    parser.add_argument('--data-root', default=None,
                        help='a VOC-layout tree read with the config\'s train '
                        'pipeline; default: synthetic images and labels')
    parser.add_argument('--seed', type=int, default=None,
                        help="default: the config's randomness.seed (233)")
    parser.add_argument('--out', default=DEFAULT_OUT,
                        help='output folder')
    args = parser.parse_args(argv)

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
    args.models = list(dict.fromkeys(args.models))
    args.setups = list(dict.fromkeys(args.setups))
    args.methods = list(dict.fromkeys(args.methods))
    args.eps = list(dict.fromkeys(args.eps))
    args.lean_backward = list(dict.fromkeys(args.lean_backward))
    args.lean_loss = [value == 'on' for value in dict.fromkeys(
        args.lean_loss)]
    args.crop = tuple(args.crop)
    return args


# ---------------------------------------------------------------------------
# configs
# ---------------------------------------------------------------------------
def load_config(model: str, setup: str, method: str, eps: Optional[float],
                crop: Tuple[int, int], lean_backward: Optional[str] = None,
                lean_loss: bool = False):
    """The leaf config of one combination (``checkpoint``: the vanilla
    one), its compression hook's ``lean_backward`` set (None: the
    config's) and ``lean_loss=True`` if asked for, and its path."""
    method = config_method(method)
    path, _ = leaf_config_path(CONFIGS, model, setup, method, eps)
    try:
        cfg = load_leaf_config(CONFIGS, model, setup, method, eps, crop)
    except (FileNotFoundError, ValueError) as error:
        raise SystemExit(str(error)) from None
    if lean_backward is not None:
        cfg.default_hooks.compression.lean_backward = lean_backward
    if lean_loss:
        cfg.default_hooks.compression.lean_loss = True
    return cfg, path


# ---------------------------------------------------------------------------
# one combination
# ---------------------------------------------------------------------------
def _median(values: Sequence[float]) -> float:
    return statistics.median(values) if values else float('nan')


def _accumulate(breakdown, by_op: Dict[str, float],
                by_op_inclusive: Dict[str, float], by_saved: Dict[str, float],
                params_by_op: Dict[str, float]) -> None:
    """Add a step's ``GraphBreakdown`` shares (MiB) to the running sums."""
    for target, shares in ((by_op, breakdown.by_op),
                           (by_op_inclusive, breakdown.by_op_inclusive),
                           (by_saved, breakdown.by_saved),
                           (params_by_op, breakdown.parameters_by_op)):
        for name, share in shares.items():
            target[name] = target.get(name, 0.0) + share.bytes / MIB


def build_row(args, row: Row) -> MemoryRow:
    """The row's training step (from its leaf config), batches and meters,
    warmed up: one warm-up step and the peak of one step
    (:meth:`~mmseg_hosvd.bench.MemoryRow.warm_up`)."""
    device = torch.device(args.device)
    cfg, _ = load_config(row.model, row.setup, row.method, row.eps,
                         args.crop, row.lean_backward, row.lean_loss)
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
                                  if row.method == 'checkpoint' else None))
    run.warm_up()
    return run


def row_record(args, row: Row, measured: MemoryRow,
               time_ratio: Optional[float]) -> dict:
    """The results.json record of a row after its timed steps."""
    device = torch.device(args.device)
    model_name, setup, method = row.model, row.setup, row.method
    eps = row.eps
    installed = measured.installed
    by_op: Dict[str, float] = {}
    by_op_inclusive: Dict[str, float] = {}
    by_saved: Dict[str, float] = {}
    params_by_op: Dict[str, float] = {}
    not_in_graph = []
    times = dict(forward=[], backward=[], optimizer=[], step=[])
    for step in measured.measurements:
        times['forward'].append(step.forward_s)
        times['backward'].append(step.backward_s)
        times['optimizer'].append(step.optimizer_s)
        times['step'].append(step.step_s)
        if step.breakdown is not None:
            not_in_graph.append(
                (step.saved_bytes - step.breakdown.activation_bytes) / MIB)
            _accumulate(step.breakdown, by_op, by_op_inclusive, by_saved,
                        params_by_op)
    saved_act = [m.saved_bytes / MIB for m in measured.measurements]
    saved_param = [m.saved_param_bytes / MIB for m in measured.measurements]
    last_stats = measured.last_stats
    last_total = sum(s.paper_bytes for s in last_stats.values()) / MIB
    walk = method != 'checkpoint'
    trainable = measured.step.trainable_parameters()
    seed, config_path = measured.seed, measured.cfg.filename
    peak_bytes = measured.peak_bytes
    cuda_peak = (max(measured.cuda_peaks) / MIB
                 if measured.cuda_peaks else None)
    summary = measured.memory_summary()
    iters = len(measured.measurements)

    def averaged(shares: Dict[str, float]) -> Dict[str, float]:
        return dict(sorted(((k, v / iters) for k, v in shares.items()),
                           key=lambda item: -item[1]))

    by_saved_mean = averaged(by_saved)
    # None: not walked (checkpoint rows)
    groups = group_shares(by_saved_mean) if walk else dict.fromkeys(
        group_shares({}))

    layers, ranks = {}, {}
    for path, layer in summary['layers'].items():
        layers[path] = dict(
            method=layer['method'],
            input_shape=layer['input_shape'],
            paper_mib_mean=layer['paper_mib']['mean'],
            paper_mib_last=None,
            kept_mib_mean=layer['kept_mib']['mean'],
            radius=getattr(installed[path], 'radius', None),  # convs only
            eps=installed[path].eps if method in LOW_RANK else None)
        ranks[path] = dict(last=layer['ranks']['last'],
                           mean=layer['ranks']['mean'])
    for path, stats in last_stats.items():
        layers[path]['paper_mib_last'] = stats.paper_bytes / MIB

    record = dict(
        model=model_name,
        setup=setup,
        method=method,
        eps=eps if method in LOW_RANK else None,
        lean_backward=row.lean_backward,
        lean_loss=row.lean_loss,
        amp=row.amp,
        checkpointing=(CHECKPOINT_PLACEMENT if method == 'checkpoint' else
                       None),
        config=osp.relpath(config_path, REPO),
        activation_mib_mean=summary['total']['paper_mib']['mean'],
        activation_mib_peak=summary['total']['paper_mib']['peak'],
        activation_mib_std=summary['total']['paper_mib']['std'],
        activation_mib_last=last_total,
        kept_mib_mean=summary['total']['kept_mib']['mean'],
        kept_mib_peak=summary['total']['kept_mib']['peak'],
        step_saved_mib_mean=statistics.fmean(saved_act),
        step_saved_mib_peak=max(saved_act),
        step_saved_param_mib_mean=statistics.fmean(saved_param),
        step_not_in_graph_mib_mean=(statistics.fmean(not_in_graph)
                                    if not_in_graph else None),
        step_peak_mib=peak_bytes / MIB,
        step_saved_groups_mib=groups,
        breakdown=dict(by_op=averaged(by_op),
                       by_saved=by_saved_mean,
                       by_op_inclusive=averaged(by_op_inclusive),
                       parameters_by_op=averaged(params_by_op)),
        cuda_peak_mib=cuda_peak,
        forward_time_s_median=_median(times['forward']),
        backward_time_s_median=_median(times['backward']),
        optimizer_time_s_median=_median(times['optimizer']),
        step_time_s_median=_median(times['step']),
        step_time_s=list(times['step']),
        step_time_ratio_per_round=time_ratio,
        ranks=ranks,
        layers=layers,
        num_layers=len(installed),
        trainable_params=sum(p.numel() for p in trainable),
        device=str(device),
        device_name=(torch.cuda.get_device_name(device)
                     if device.type == 'cuda' else platform.processor()
                     or platform.machine()),
        init=args.checkpoint if args.checkpoint else 'random',
        data=args.data_root if args.data_root else 'synthetic',
        batch=args.batch_size,
        crop=list(args.crop),
        iters=iters,
        seed=seed,
        torch=torch.__version__,
    )
    return record


# ---------------------------------------------------------------------------
# outputs
# ---------------------------------------------------------------------------
def combinations(args) -> List[Row]:
    """The rows in run order: the variants (lean_backward modes, lean loss
    off/on, the amp twin) of one combination next to each other."""
    combos = []
    if args.preset is not None:
        return [
            Row(model, setup, row.method, row.eps, row.lean_backward,
                row.lean_loss, row.amp)
            for model, setup in itertools.product(args.models, args.setups)
            for row in PRESETS[args.preset]
        ]
    amps = [False, True] if args.amp else [False]
    for model, setup, method in itertools.product(args.models, args.setups,
                                                  args.methods):
        epsilons = args.eps if method in LOW_RANK else [None]
        combos.extend(
            Row(model, setup, method, eps, lean, lean_loss, amp)
            for eps in epsilons for lean in args.lean_backward
            for lean_loss in args.lean_loss for amp in amps)
    return combos


def main(argv: Optional[Sequence[str]] = None) -> List[dict]:
    args = parse_args(argv)
    from mmseg.utils import register_all_modules
    from tqdm import tqdm
    register_all_modules()

    combos = combinations(args)
    os.makedirs(args.out, exist_ok=True)
    init = (f'checkpoint {args.checkpoint} (weights_only=True)'
            if args.checkpoint else 'random initialisation (no --checkpoint)')
    data = (f'{args.data_root} (config train pipeline)'
            if args.data_root else 'synthetic random images and labels')
    print(f'benchmark_memory: {len(combos)} combination(s), batch '
          f'{args.batch_size}, crop {args.crop[0]}x{args.crop[1]}, 1 warm-up '
          f'+ 1 peak step + {args.iters} timed iteration(s), device '
          f'{args.device}\n'
          f'  weights: {init}\n  data: {data}', flush=True)

    records = []
    start = time.time()
    with tqdm(total=len(combos) * (args.iters + 2), unit='it',
              dynamic_ncols=True) as progress:
        for _, group in itertools.groupby(
                combos, key=lambda row: (row.model, row.setup)):
            group = list(group)
            measured = []
            for row in group:  # build and warm up every row of the table
                progress.set_description(
                    f'{row.model} {row.setup} '
                    + method_label(dataclasses.asdict(row)))
                measured.append(build_row(args, row))
                progress.update(2)
            for _ in range(args.iters):  # then time them round-robin
                for row, run in zip(group, measured):
                    progress.set_description(
                        f'{row.model} {row.setup} '
                        + method_label(dataclasses.asdict(row)))
                    try:
                        run.timed_step()
                    except RuntimeError as error:
                        raise RuntimeError(
                            f'{row.model} {row.setup} {row.method}: '
                            f'{error}') from None
                    progress.update(1)
            ratios = per_round_ratios(
                [[m.step_s for m in run.measurements] for run in measured])
            for row, run, ratio in zip(group, measured, ratios):
                records.append(row_record(args, row, run, ratio))
                run.close()
            del measured
            # write as we go: a long run keeps what it measured
            with open(osp.join(args.out, 'results.json'), 'w') as f:
                json.dump(records, f, indent=2)

    write_csv(records, osp.join(args.out, 'results.csv'))
    plot(records, osp.join(args.out, 'memory.png'))
    print()
    print(markdown_table(records))
    print()
    print(comparison_table(records))
    print(f'\nMiB = 2**20 bytes. paper = the paper\'s count of the compressed '
          f'(vanilla: counted) layers, fp32; kept = bytes those layers really '
          f'keep; step saved = every activation storage autograd saves for '
          f'the step, each once (parameters apart), split by the op that '
          f'saved it first; step peak = the most memory one whole step '
          f'(forward, backward, optimizer) allocated above what was held '
          f'before it (CPU: profiler allocation events, an upper bound; '
          f'CUDA: max_memory_allocated), measured on a step of its own '
          f'after the warm-up. checkpoint = the vanilla config with its '
          f'trainable modules under torch.utils.checkpoint, one per '
          f'{CHECKPOINT_PLACEMENT}. Weights: {init}; data: {data}.')
    print(f'results: {args.out}/results.json, results.csv, memory.png '
          f'(wall time {time.time() - start:.0f} s)')
    return records


if __name__ == '__main__':
    main()
