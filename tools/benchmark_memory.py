"""Activation memory of real fine-tuning steps, per model, setup and method.

For every combination of ``--models`` x ``--setups`` x ``--methods`` (x
``--eps`` for SVD/HOSVD) it builds the model, its plugin hooks and its optim
wrapper from the 5L/10L leaf config under ``configs/`` with
:class:`mmseg_hosvd.bench.TrainingStep` (mmengine's ``MODELS.build``,
``HOOKS.build`` + ``install``, ``build_optim_wrapper``) and runs one warm-up
and ``--iters`` measured real ``model.train_step`` calls (data preprocessor,
``mode='loss'``, backward, the config's gradient clipping and optimizer
step), measured from the outside by :class:`mmseg_hosvd.bench.StepProbe`,
recording

* the paper's activation count of the compressed/counted convs (fp32, MiB =
  2**20 bytes; mean and peak over the iterations) and the bytes those layers
  really keep;
* what autograd saves for the whole step (every saved storage once,
  parameters and buffers apart), and where it comes from: the saving op
  (conv inputs, BN inputs, ReLU outputs, compressed factors, loss, ...), see
  :mod:`mmseg_hosvd.profiling`;
* the CUDA allocator peak (on a GPU), forward/backward/optimizer/step median
  times and the ranks per layer (last and mean).

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
import copy
import csv
import itertools
import json
import math
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

import mmseg_hosvd  # noqa: E402,F401  (mmcv.ops fallback, hooks)
from mmseg_hosvd.bench import (MODEL_CONFIGS, SETUPS,  # noqa: E402
                               StepProbe, TrainingStep, dataset_batches,
                               leaf_config_path, load_leaf_config,
                               synthetic_batches)
from mmseg_hosvd.lean_backward import LEAN_BACKWARD_MODES  # noqa: E402
from mmseg_hosvd.ops import COMPRESSED_BACKWARD_NODES, MIB  # noqa: E402

CONFIGS = osp.join(REPO, 'configs')
DEFAULT_OUT = osp.join(REPO, 'work_dirs', 'benchmark_memory')

METHODS = ('vanilla', 'gradient_filter', 'svd', 'hosvd')
LOW_RANK = ('svd', 'hosvd')

#: autograd nodes of the plugin's compressed convs
COMPRESSED_NODES = tuple(COMPRESSED_BACKWARD_NODES)
#: their saved weight (the Parameter for HOSVD/SVD and for the dilated
#: Gradient Filter, else a per-step tensor: the Gradient Filter's
#: kernel-summed weight, or the BN-folded weight of ``lean_backward``)
COMPRESSED_WEIGHTS = tuple(
    f'{node}.saved_tensors[{index}]'
    for node, index in COMPRESSED_BACKWARD_NODES.items())


def _op(key: str) -> str:
    return key.split('.', 1)[0]


#: coarse groups of the whole-step breakdown, matched in order on the
#: ``'<node name>.<attribute>'`` keys of ``GraphBreakdown.by_saved``:
#: (group, column label, predicate)
OP_GROUPS = (
    ('conv', 'conv inputs', lambda k: _op(k).startswith('Convolution')),
    ('bn', 'BN inputs', lambda k: 'BatchNorm' in _op(k)),
    ('relu', 'ReLU outputs', lambda k: _op(k).startswith(
        ('Relu', 'Hardtanh', 'Threshold', 'LeakyRelu'))),
    ('relu_mask', 'ReLU 1-bit masks', lambda k: _op(k).startswith(
        '_MaskedClampBackward')),
    ('compressed', 'compressed factors', lambda k: _op(k) in COMPRESSED_NODES
     and k not in COMPRESSED_WEIGHTS),
    ('weight_sums', 'step weights', lambda k: k in COMPRESSED_WEIGHTS),
    ('loss', 'loss', lambda k: _op(k).startswith(
        ('LogSoftmax', 'NllLoss', 'CrossEntropy', 'Softmax'))),
    ('other', 'other', lambda k: True),
)


def op_group(key: str) -> str:
    """Coarse group of a ``'<node name>.<attribute>'`` key (see
    :data:`OP_GROUPS`)."""
    for group, _, matches in OP_GROUPS:
        if matches(key):
            return group
    return 'other'


# ---------------------------------------------------------------------------
# command line
# ---------------------------------------------------------------------------
def eps_value(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(
            f'eps must be a number in (0, 1], got {text!r}') from None
    if not 0 < value <= 1:  # also rejects NaN
        raise argparse.ArgumentTypeError(
            f'eps must be in (0, 1], got {text!r}')
    return value


def positive_int(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        value = 0
    if value < 1:
        raise argparse.ArgumentTypeError(
            f'expected an integer >= 1, got {text!r}')
    return value


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
    args.crop = tuple(args.crop)
    return args


# ---------------------------------------------------------------------------
# configs
# ---------------------------------------------------------------------------
def load_config(model: str, setup: str, method: str, eps: Optional[float],
                crop: Tuple[int, int], lean_backward: Optional[str] = None):
    """The leaf config of one combination, its compression hook's
    ``lean_backward`` set (None: the config's), and its path."""
    path, _ = leaf_config_path(CONFIGS, model, setup, method, eps)
    try:
        cfg = load_leaf_config(CONFIGS, model, setup, method, eps, crop)
    except (FileNotFoundError, ValueError) as error:
        raise SystemExit(str(error)) from None
    if lean_backward is not None:
        cfg.default_hooks.compression.lean_backward = lean_backward
    return cfg, path


# ---------------------------------------------------------------------------
# one combination
# ---------------------------------------------------------------------------
def _median(values: Sequence[float]) -> float:
    return statistics.median(values) if values else float('nan')


def run_combination(args, model_name: str, setup: str, method: str,
                    eps: Optional[float], progress=None,
                    lean_backward: str = 'exact',
                    peak_meter_factory=None) -> dict:
    """Build the combination's training step from its leaf config and run
    one warm-up and ``args.iters`` measured real ``train_step`` calls.

    ``peak_meter_factory``: a callable returning a fresh peak meter (an
    object with ``__enter__``/``__exit__`` and ``peak_bytes``) per step;
    its median reading goes to ``step_peak_mib``."""
    from mmengine.registry import HOOKS

    device = torch.device(args.device)
    cfg, config_path = load_config(model_name, setup, method, eps,
                                   args.crop, lean_backward)
    seed = args.seed if args.seed is not None else cfg.get(
        'randomness', {}).get('seed', 233)

    step = TrainingStep.from_config(cfg, device, checkpoint=args.checkpoint,
                                    seed=seed, init_weights=False)
    model, installed = step.model, step.installed
    trainable = step.trainable_parameters()
    state = step.state_tensors()

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
        torch.cuda.reset_peak_memory_stats(device)
    base_allocated = (torch.cuda.memory_allocated(device)
                      if device.type == 'cuda' else None)

    memory_hook = None
    times = dict(forward=[], backward=[], optimizer=[], step=[])
    saved_act, saved_param, not_in_graph, peaks = [], [], [], []
    by_op: Dict[str, float] = {}
    by_op_inclusive: Dict[str, float] = {}
    by_saved: Dict[str, float] = {}
    params_by_op: Dict[str, float] = {}
    last_total, last_stats = None, {}
    probe = StepProbe(model, step.optim_wrapper.optimizer, trainable, state,
                      device, breakdown=True)
    with probe:
        for iteration in range(args.iters + 1):
            warmup = iteration == 0
            data = next(batches)
            meter = peak_meter_factory() if peak_meter_factory else None
            measured = probe.measure(lambda: step.run(data), meter)
            del data
            breakdown = measured.breakdown

            if warmup:
                # the warm-up's stats go to a throwaway hook
                HOOKS.build(copy.deepcopy(
                    cfg.default_hooks.activation_memory)).record(model)
                memory_hook = HOOKS.build(
                    copy.deepcopy(cfg.default_hooks.activation_memory))
            else:
                stats = memory_hook.record(model)
                missing = set(installed) - set(stats)
                if missing:
                    raise RuntimeError(
                        f'{model_name} {setup} {method}: no statistics from '
                        f'{sorted(missing)} (did they run with grad '
                        'enabled?)')
                last_stats = stats
                last_total = sum(s.paper_bytes for s in stats.values()) / MIB
                times['forward'].append(measured.forward_s)
                times['backward'].append(measured.backward_s)
                times['optimizer'].append(measured.optimizer_s)
                times['step'].append(measured.step_s)
                saved_act.append(measured.saved_bytes / MIB)
                saved_param.append(measured.saved_param_bytes / MIB)
                not_in_graph.append(
                    (measured.saved_bytes - breakdown.activation_bytes) / MIB)
                if measured.peak_bytes is not None:
                    peaks.append(measured.peak_bytes / MIB)
                for target, shares in ((by_op, breakdown.by_op),
                                       (by_op_inclusive,
                                        breakdown.by_op_inclusive),
                                       (by_saved, breakdown.by_saved),
                                       (params_by_op,
                                        breakdown.parameters_by_op)):
                    for name, share in shares.items():
                        target[name] = target.get(name,
                                                  0.0) + share.bytes / MIB
            del measured, breakdown
            if progress is not None:
                progress.update(1)

    cuda_peak = (torch.cuda.max_memory_allocated(device) / MIB
                 if device.type == 'cuda' else None)
    summary = memory_hook.summary()
    iters = args.iters

    def averaged(shares: Dict[str, float]) -> Dict[str, float]:
        return dict(sorted(((k, v / iters) for k, v in shares.items()),
                           key=lambda item: -item[1]))

    by_saved_mean = averaged(by_saved)
    groups = {group: 0.0 for group, _, _ in OP_GROUPS}
    for key, mib in by_saved_mean.items():
        groups[op_group(key)] += mib

    layers, ranks = {}, {}
    for path, layer in summary['layers'].items():
        layers[path] = dict(
            method=layer['method'],
            input_shape=layer['input_shape'],
            paper_mib_mean=layer['paper_mib']['mean'],
            paper_mib_last=None,
            kept_mib_mean=layer['kept_mib']['mean'],
            radius=installed[path].radius,
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
        lean_backward=lean_backward,
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
        step_not_in_graph_mib_mean=statistics.fmean(not_in_graph),
        step_peak_mib=_median(peaks) if peaks else None,
        step_saved_groups_mib=groups,
        breakdown=dict(by_op=averaged(by_op),
                       by_saved=by_saved_mean,
                       by_op_inclusive=averaged(by_op_inclusive),
                       parameters_by_op=averaged(params_by_op)),
        cuda_peak_mib=cuda_peak,
        cuda_base_mib=(base_allocated / MIB
                       if base_allocated is not None else None),
        forward_time_s_median=_median(times['forward']),
        backward_time_s_median=_median(times['backward']),
        optimizer_time_s_median=_median(times['optimizer']),
        step_time_s_median=_median(times['step']),
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
    del model, step, trainable, state, installed, probe
    if device.type == 'cuda':
        torch.cuda.empty_cache()
    return record


# ---------------------------------------------------------------------------
# outputs
# ---------------------------------------------------------------------------
def combinations(args
                 ) -> List[Tuple[str, str, str, Optional[float], str]]:
    """(model, setup, method, eps, lean_backward) in run order: the
    lean_backward modes of one combination next to each other."""
    combos = []
    for model, setup, method in itertools.product(args.models, args.setups,
                                                  args.methods):
        epsilons = args.eps if method in LOW_RANK else [None]
        combos.extend((model, setup, method, eps, lean)
                      for eps in epsilons for lean in args.lean_backward)
    return combos


def method_label(record: dict) -> str:
    label = record['method']
    if record['eps'] is not None:
        label += f" eps={record['eps']:g}"
    lean = record.get('lean_backward', 'off')
    return label if lean == 'off' else f'{label}, lean {lean}'


def _fmt(value, digits: int = 2) -> str:
    if value is None:
        return '-'
    if isinstance(value, float):
        if math.isnan(value):
            return '-'
        if value != 0 and abs(value) < 10**-digits:
            return f'{value:.1e}'
        return f'{value:.{digits}f}'
    return str(value)


def markdown_table(records: Sequence[dict]) -> str:
    from tabulate import tabulate
    cuda = any(r['cuda_peak_mib'] is not None for r in records)
    peak = any(r.get('step_peak_mib') is not None for r in records)
    header = [
        'model', 'setup', 'method', 'paper MiB mean', 'paper MiB peak',
        'kept MiB', 'step saved MiB'
    ] + [label for group, label, _ in OP_GROUPS] + ['params saved MiB']
    if peak:
        header.append('step peak MiB')
    if cuda:
        header.append('CUDA peak MiB')
    header += ['fwd s', 'bwd s', 'step s']
    rows = []
    for r in records:
        row = [
            r['model'], r['setup'],
            method_label(r),
            _fmt(r['activation_mib_mean']),
            _fmt(r['activation_mib_peak']),
            _fmt(r['kept_mib_mean']),
            _fmt(r['step_saved_mib_mean'], 1)
        ] + [
            _fmt(r['step_saved_groups_mib'][group], 1)
            for group, _, _ in OP_GROUPS
        ] + [_fmt(r['step_saved_param_mib_mean'], 1)]
        if peak:
            row.append(_fmt(r.get('step_peak_mib'), 1))
        if cuda:
            row.append(_fmt(r['cuda_peak_mib'], 1))
        row += [
            _fmt(r['forward_time_s_median']),
            _fmt(r['backward_time_s_median']),
            _fmt(r['step_time_s_median'])
        ]
        rows.append(row)
    return tabulate(rows, headers=header, tablefmt='github',
                    disable_numparse=True,
                    colalign=['left'] * 3 + ['right'] * (len(header) - 3))


def flatten(record: dict) -> dict:
    """CSV row: scalars as they are, the groups as columns, other nested
    fields JSON-encoded."""
    row = {}
    for key, value in record.items():
        if key == 'step_saved_groups_mib':
            for group, mib in value.items():
                row[f'step_saved_mib_{group}'] = mib
        elif isinstance(value, (dict, list, tuple)):
            row[key] = json.dumps(value)
        else:
            row[key] = '' if value is None else value
    return row


def write_csv(records: Sequence[dict], path: str) -> None:
    rows = [flatten(r) for r in records]
    fields = list(dict.fromkeys(k for row in rows for k in row))
    with open(path, 'w', newline='') as f:
        writer = csv.DictWriter(f, fieldnames=fields)
        writer.writeheader()
        writer.writerows(rows)


def plot(records: Sequence[dict], path: str) -> None:
    """Grouped bars (log scale): paper count and whole-step saved bytes."""
    import matplotlib
    matplotlib.use('Agg')
    import matplotlib.pyplot as plt
    import numpy as np

    labels = [
        f"{r['model']} {r['setup']}\n{method_label(r)}" for r in records
    ]
    paper = [max(r['activation_mib_mean'], 1e-6) for r in records]
    step = [max(r['step_saved_mib_mean'], 1e-6) for r in records]
    x = np.arange(len(records))
    width = 0.4
    fig, ax = plt.subplots(figsize=(max(7.0, 0.5 * len(records) + 2), 5.5))
    ax.bar(x - width / 2, paper, width,
           label='paper count (compressed layers)')
    ax.bar(x + width / 2, step, width,
           label='whole step: saved by autograd (activations)')
    ax.set_yscale('log')
    ax.set_ylabel('MiB (2**20 bytes, log scale)')
    for index in range(1, len(records)):
        previous, current = records[index - 1], records[index]
        if (previous['model'], previous['setup']) != (current['model'],
                                                      current['setup']):
            ax.axvline(index - 0.5, color='grey', linewidth=0.6)
    first = records[0]
    init = 'random init' if first['init'] == 'random' else 'checkpoint'
    ax.set_title(
        f"Activation memory per training step: batch {first['batch']}, "
        f"crop {first['crop'][0]}x{first['crop'][1]}, {init}, "
        f"{first['data']} data",
        fontsize=10,
        pad=26)
    ax.set_xticks(x)
    ax.set_xticklabels(labels, rotation=90, fontsize=7)
    ax.set_xlim(-0.6, len(records) - 0.4)
    ax.legend(loc='lower center', bbox_to_anchor=(0.5, 1.0), ncol=2,
              fontsize=8, frameon=False)
    ax.grid(axis='y', which='both', alpha=0.3)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


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
          f'+ {args.iters} iteration(s), device {args.device}\n'
          f'  weights: {init}\n  data: {data}', flush=True)

    records = []
    start = time.time()
    with tqdm(total=len(combos) * (args.iters + 1), unit='it',
              dynamic_ncols=True) as progress:
        for model, setup, method, eps, lean in combos:
            label = f'{model} {setup} {method}' + (
                f' eps={eps:g}' if eps is not None else '') + f' lean {lean}'
            progress.set_description(label)
            records.append(
                run_combination(args, model, setup, method, eps, progress,
                                lean_backward=lean))
            # write as we go: a long run keeps what it measured
            with open(osp.join(args.out, 'results.json'), 'w') as f:
                json.dump(records, f, indent=2)

    write_csv(records, osp.join(args.out, 'results.csv'))
    plot(records, osp.join(args.out, 'memory.png'))
    print()
    print(markdown_table(records))
    print(f'\nMiB = 2**20 bytes. paper = the paper\'s count of the compressed '
          f'(vanilla: counted) layers, fp32; kept = bytes those layers really '
          f'keep; step saved = every activation storage autograd saves for '
          f'the step, each once (parameters apart), split by the op that '
          f'saved it first. Weights: {init}; data: {data}.')
    print(f'results: {args.out}/results.json, results.csv, memory.png '
          f'(wall time {time.time() - start:.0f} s)')
    return records


if __name__ == '__main__':
    main()
