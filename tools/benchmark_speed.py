"""Training-step time of vanilla vs compressed fine-tuning, side by side.

For each ``--models`` x ``--setups`` it gives every method of ``--methods``
its own :class:`mmseg_hosvd.bench.TrainingStep`, built from the setup's
vanilla leaf config under ``configs/`` with the compression hook's
``method``/``eps``/``lean_backward`` replaced (same ``--seed``, hence the
same random weights unless ``--checkpoint``): model, plugin hooks and the
config's optim wrapper (SGD, gradient clipping) by mmengine's builders. It
times real ``model.train_step`` calls on one fixed batch, split by
:class:`mmseg_hosvd.bench.StepProbe` into forward (``mode='loss'``),
backward and clipping + optimizer step (data preprocessing excluded). The
methods run **round-robin, one step each per
round** (the first method of a round rotates), so that a concurrent load
slows them alike; ``--warmup`` rounds are dropped (they include the first
step of ``asi``, which fixes its ranks), ``--iters`` rounds are measured.

Prints, as markdown:

1. per method: median forward / backward / optimizer / step time, the step
   ratio to vanilla (ratio of the medians, and the median of the per-round
   ratios), the ranks and the activation memory kept by the compressed
   layers (each storage once; MiB = 2**20 bytes);
2. per distinct input of the compressed convs (``--layers``; an input read
   by several convs, e.g. the ASPP branches, is one row): the time of the
   HOSVD of :func:`mmseg_hosvd.ops.hosvd` (Gram + eigh) and of one ASI step
   (:func:`mmseg_hosvd.ops.subspace_iteration_step`, same ranks) against
   the forward of the convs that read it and against a plain HOSVD made of
   four ``torch.linalg.svd`` calls on the contiguous mode unfoldings (plus
   the eps rule and the core), all on the input captured from the model;
3. the load average before and after, threads, torch version, device.

``--profile`` adds one profiled step per method (torch.profiler, top
entries by self time).

Usage::

    .venv/bin/python tools/benchmark_speed.py --models deeplabv3 \\
        --setups 10L --methods vanilla hosvd asi --batch-size 8 \\
        --crop 256 256 --iters 5

Without ``--checkpoint`` the weights are random; without ``--data-root`` the
images are smooth random noise and the labels random (seeded).
"""
import argparse
import gc
import json
import math
import os
import os.path as osp
import platform
import statistics
import sys
from typing import Callable, Dict, List, Optional, Sequence, Tuple

REPO = osp.dirname(osp.dirname(osp.abspath(__file__)))
if REPO not in sys.path:
    sys.path.insert(0, REPO)

import torch  # noqa: E402
import torch.nn.functional as F  # noqa: E402

import mmseg_hosvd.engine  # noqa: E402,F401  (mmcv.ops fallback, hooks)
from mmseg_hosvd.bench.arguments import (eps_value,  # noqa: E402
                                        positive_int)
from mmseg_hosvd.bench import (MODEL_CONFIGS, SETUPS,  # noqa: E402
                               StepProbe, SyncTimer, TrainingStep,
                               folder_batch, load_leaf_config, smooth_batch)
from mmseg_hosvd.lean_backward import LEAN_BACKWARD_MODES  # noqa: E402
from mmseg_hosvd.ops import (MIB, distinct_kept_bytes,  # noqa: E402
                             explained_variance_rank, hosvd,
                             subspace_iteration_step)
from mmseg_hosvd.decomposition import multi_mode_product  # noqa: E402

CONFIGS = osp.join(REPO, 'configs')
METHODS = ('vanilla', 'gradient_filter', 'svd', 'hosvd', 'asi')
EPS_METHODS = ('svd', 'hosvd', 'asi')


# ---------------------------------------------------------------------------
# command line
# ---------------------------------------------------------------------------
def parse_args(argv: Optional[Sequence[str]] = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        description=__doc__.split('\n')[0],
        formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    parser.add_argument('--models', nargs='+', choices=list(MODEL_CONFIGS),
                        default=['deeplabv3'], metavar='MODEL',
                        help=f'any of {", ".join(MODEL_CONFIGS)}')
    parser.add_argument('--setups', nargs='+', choices=SETUPS,
                        default=['10L'], metavar='SETUP')
    parser.add_argument('--methods', nargs='+', choices=METHODS,
                        default=['vanilla', 'hosvd', 'asi'],
                        metavar='METHOD', help=f'any of {", ".join(METHODS)}'
                        ' (vanilla is always added: ratios are to it)')
    parser.add_argument('--eps', type=eps_value, default=0.8,
                        help='eps of svd/hosvd/asi')
    parser.add_argument('--asi-budget-mib', type=float, default=None,
                        help='asi: allocate ranks under this total budget '
                        'instead of the eps rule')
    parser.add_argument(
        '--lean-backward', nargs='+', choices=LEAN_BACKWARD_MODES,
        default=['exact'], metavar='MODE',
        help='lean_backward modes: every method runs with each (any of '
        f'{", ".join(LEAN_BACKWARD_MODES)}), all round-robin')
    parser.add_argument(
        '--lean-loss', action='store_true',
        help="set the compression hook's lean_loss for every method (the "
        "decode heads' resize + cross-entropy keep only the low-resolution "
        'logits)')
    parser.add_argument('--batch-size', type=positive_int, default=8)
    parser.add_argument('--crop', nargs=2, type=positive_int,
                        default=[256, 256], metavar=('H', 'W'))
    parser.add_argument('--iters', type=positive_int, default=5,
                        help='measured rounds (one step per method each)')
    parser.add_argument('--warmup', type=positive_int, default=1,
                        help='rounds before the measured ones')
    parser.add_argument('--threads', type=positive_int, default=2,
                        help='torch.set_num_threads')
    parser.add_argument('--device',
                        default='cuda' if torch.cuda.is_available() else
                        'cpu')
    parser.add_argument('--checkpoint', default=None,
                        help='weights to start from (weights_only=True); '
                        'default: random initialisation')
    parser.add_argument('--data-root', default=None,
                        help='a VOC-layout tree (JPEGImages, '
                        'SegmentationClass[Aug], ImageSets/Segmentation/'
                        'train.txt): its first images, centre-cropped; '
                        'default: smooth random images')
    parser.add_argument('--seed', type=int, default=0)
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
    args = parser.parse_args(argv)
    try:
        device = torch.device(args.device)
    except RuntimeError:
        parser.error(f'--device: unknown device {args.device!r}')
    if device.type == 'cuda' and not torch.cuda.is_available():
        parser.error(f'--device {args.device!r}: CUDA is not available')
    if args.data_root is not None and not osp.isdir(args.data_root):
        parser.error(f'--data-root {args.data_root!r} is not a folder')
    if args.checkpoint is not None and not osp.isfile(args.checkpoint):
        parser.error(f'--checkpoint {args.checkpoint!r} does not exist')
    methods = list(dict.fromkeys(args.methods))
    args.methods = ['vanilla'] + [m for m in methods if m != 'vanilla']
    args.models = list(dict.fromkeys(args.models))
    args.setups = list(dict.fromkeys(args.setups))
    args.lean_backward = list(dict.fromkeys(args.lean_backward))
    args.crop = tuple(args.crop)
    return args


# ---------------------------------------------------------------------------
# data and contenders
# ---------------------------------------------------------------------------
def make_batch(args, num_classes: int) -> dict:
    """One batch as the dataloader yields it: smooth random images, or the
    first train images of ``--data-root``, centre-cropped."""
    if args.data_root is None:
        return smooth_batch(args.batch_size, args.crop, num_classes,
                            args.seed)
    try:
        return folder_batch(args.data_root, args.batch_size, args.crop,
                            num_classes, args.seed)
    except ValueError as error:
        raise SystemExit(f'--data-root: {error}') from None


class Contender:
    """One method: its own training step (model, hooks, optim wrapper) and
    timings (seconds)."""

    def __init__(self, method: str, model_name: str, setup: str, args,
                 lean_backward: str = 'exact'):
        self.method = method
        self.lean_backward = lean_backward
        cfg = load_leaf_config(CONFIGS, model_name, setup, 'vanilla',
                               crop=args.crop)
        self.config = cfg.filename
        hook_cfg = cfg.default_hooks.compression
        hook_cfg.method = method
        hook_cfg.lean_backward = lean_backward
        hook_cfg.lean_loss = args.lean_loss
        if method in EPS_METHODS:
            hook_cfg.eps = args.eps
        if method == 'asi':
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
        return f'{self.method}, lean {self.lean_backward}'

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


def median_ms(values: Sequence[float]) -> float:
    return 1e3 * statistics.median(values) if values else float('nan')


# ---------------------------------------------------------------------------
# per-layer decomposition timing
# ---------------------------------------------------------------------------
def reference_hosvd(x: torch.Tensor, eps: float):
    """Plain truncated HOSVD: four ``torch.linalg.svd`` of the contiguous
    mode unfoldings, the eps rule on their singular values, the core."""
    data = x.detach().float()
    factors = []
    for mode in range(4):
        unfolding = data.movedim(mode, 0).reshape(data.shape[mode],
                                                  -1).contiguous()
        left, values, _ = torch.linalg.svd(unfolding, full_matrices=False)
        rank = int(explained_variance_rank(values**2, eps))
        factors.append(left[:, :rank])
    return multi_mode_product(data, dict(enumerate(factors)))


def time_ms(function: Callable[[], object], repeats: int,
            device: torch.device, warmup: bool = True) -> float:
    """Median wall time (ms) of ``function()`` with a synchronised timer."""
    timer = SyncTimer(device)
    if warmup:
        function()
    times = []
    for _ in range(repeats):
        start = timer.now()
        function()
        times.append(timer.now() - start)
    return median_ms(times)


def capture_inputs(contender: Contender, batch: dict
                   ) -> List[Tuple[List[str], torch.Tensor]]:
    """The inputs of the installed convs in one forward, grouped by tensor
    identity: ``[(conv paths, input)]`` in execution order."""
    groups: Dict[int, Tuple[List[str], torch.Tensor]] = {}
    handles = []
    for path, conv in contender.installed.items():

        def grab(module, args, path=path):
            tensor = args[0]
            groups.setdefault(id(tensor), ([], tensor))[0].append(path)

        handles.append(conv.register_forward_pre_hook(grab))
    model = contender.model
    try:
        with torch.no_grad():
            data = model.data_preprocessor(batch, True)
            model(**data, mode='tensor')
    finally:
        for handle in handles:
            handle.remove()
    return [(paths, tensor.detach()) for paths, tensor in groups.values()]


def layer_rows(contender: Contender, data: dict, args,
               device: torch.device) -> List[dict]:
    rows = []
    for paths, x in capture_inputs(contender, data):
        convs = [contender.installed[p] for p in paths]
        if any(conv.padding_mode != 'zeros' for conv in convs):
            raise SystemExit(f'{paths}: padding_mode other than zeros is '
                             'not timed')
        x = x.contiguous()

        def forward_convs():
            with torch.no_grad():
                for conv in convs:
                    F.conv2d(x, conv.weight, conv.bias, conv.stride,
                             conv.padding, conv.dilation, conv.groups)

        with torch.no_grad():
            conv_ms = time_ms(forward_convs, args.layer_repeats, device)
            factors = hosvd(x, args.eps)
            hosvd_ms = time_ms(lambda: hosvd(x, args.eps),
                               args.layer_repeats, device)
            bases = list(factors.factors)
            asi_ms = time_ms(lambda: subspace_iteration_step(x, bases),
                             args.layer_repeats, device)
            svd_ms = time_ms(lambda: reference_hosvd(x, args.eps), 1, device,
                             warmup=False)
        rows.append(dict(paths=paths, shape=tuple(x.shape),
                         ranks=factors.ranks, conv_ms=conv_ms,
                         hosvd_ms=hosvd_ms, asi_ms=asi_ms, svd_ms=svd_ms))
        del x
    return rows


# ---------------------------------------------------------------------------
# output
# ---------------------------------------------------------------------------
def _short(path: str) -> str:
    return path.replace('decode_head.', 'head.').replace('backbone.', 'bb.')


def _paths_label(paths: Sequence[str]) -> str:
    if len(paths) == 1:
        return _short(paths[0])
    return f'{_short(paths[0])} (+{len(paths) - 1} more, shared)'


def _ranks_label(contender: Contender) -> str:
    ranks = [s.ranks for s in contender.last_stats.values() if s.ranks]
    if not ranks:
        return '-'
    distinct = list(dict.fromkeys(tuple(r) for r in ranks))
    text = ' '.join(str(r).replace(' ', '') for r in distinct[:3])
    return text + (' ...' if len(distinct) > 3 else '')


def step_rows(contenders: List[Contender], args) -> List[dict]:
    """Per contender: median times (ms), ratios to vanilla, kept MiB and
    ranks."""
    vanilla = contenders[0]
    base = statistics.median(vanilla.times['step'])
    rows = []
    for c in contenders:
        same = next(o for o in contenders if o.method == c.method)
        step = statistics.median(c.times['step'])
        stats = list(c.last_stats.values())
        name = c.method + (f' (eps {args.eps:g})'
                           if c.method in EPS_METHODS else '')
        if c.method == 'asi' and args.asi_budget_mib is not None:
            name = f'asi (budget {args.asi_budget_mib:g} MiB)'
        rows.append(dict(
            method=name,
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
            ranks=_ranks_label(c)))
    return rows


STEP_COLUMNS = (('method', 'method', None), ('lean_backward',
                                             'lean_backward', None),
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


def markdown(rows: List[dict], columns) -> str:
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


def layer_columns(eps: float):
    return (('input', 'input of', None), ('shape', 'shape', None),
            ('ranks', f'hosvd ranks (eps {eps:g})', None),
            ('conv_ms', 'conv fwd ms', '.1f'), ('hosvd_ms', 'hosvd ms',
                                                '.1f'),
            ('hosvd_per_conv', 'hosvd / conv', '.2f'),
            ('asi_ms', 'asi step ms', '.1f'),
            ('asi_per_conv', 'asi / conv', '.3f'),
            ('svd_ms', '4x svd HOSVD ms', '.0f'),
            ('svd_per_hosvd', '4x svd / hosvd', '.1f'))


def layer_table_rows(rows: List[dict]) -> List[dict]:
    return [
        dict(input=_paths_label(r['paths']), shape=str(tuple(r['shape'])),
             ranks=str(tuple(r['ranks'])), conv_ms=r['conv_ms'],
             hosvd_ms=r['hosvd_ms'],
             hosvd_per_conv=r['hosvd_ms'] / r['conv_ms'],
             asi_ms=r['asi_ms'], asi_per_conv=r['asi_ms'] / r['conv_ms'],
             svd_ms=r['svd_ms'], svd_per_hosvd=r['svd_ms'] / r['hosvd_ms'])
        for r in rows
    ]


def profile_step(contender: Contender, data: dict, device: torch.device,
                 rows: int) -> None:
    from torch.profiler import ProfilerActivity, profile
    activities = [ProfilerActivity.CPU]
    if device.type == 'cuda':
        activities.append(ProfilerActivity.CUDA)
    with profile(activities=activities) as prof:
        contender.step(data, record=False)
    sort = 'self_cuda_time_total' if device.type == 'cuda' else \
        'self_cpu_time_total'
    print(f'\nprofile of one {contender.method} step (top {rows} by self '
          'time):\n')
    print(prof.key_averages().table(sort_by=sort, row_limit=rows))


def load_text() -> str:
    try:
        return ' '.join(f'{v:.2f}' for v in os.getloadavg())
    except OSError:
        return 'n/a'


# ---------------------------------------------------------------------------
# main
# ---------------------------------------------------------------------------
def run(args, model_name: str, setup: str) -> dict:
    """Time every contender of one model/setup; print the tables; return
    ``dict(model, setup, steps=[step rows], layers=[layer rows])``."""
    from mmseg.utils import register_all_modules
    register_all_modules()
    device = torch.device(args.device)
    contenders = [
        Contender(m, model_name, setup, args, lean) for m in args.methods
        for lean in args.lean_backward
    ]
    data = make_batch(args, contenders[0].num_classes)
    device_name = (torch.cuda.get_device_name(device)
                   if device.type == 'cuda' else platform.processor() or
                   platform.machine())
    print(f'\n## {model_name} {setup}: batch {args.batch_size}, crop '
          f'{args.crop[0]}x{args.crop[1]}, {args.iters} measured rounds '
          f'after {args.warmup} warm-up, lean loss '
          f'{"on" if args.lean_loss else "off"}\n')
    print(f'config `{osp.relpath(contenders[0].config, REPO)}` (method/eps '
          'replaced); weights: '
          f'{args.checkpoint or "random init (seed %d)" % args.seed}'
          f'; data: {args.data_root or "smooth random images"}; device '
          f'{device.type} ({device_name}), torch {torch.__version__}, '
          f'{torch.get_num_threads()} threads; load average before: '
          f'{load_text()}\n', flush=True)
    rounds = args.warmup + args.iters
    for index in range(rounds):
        record = index >= args.warmup
        shift = index % len(contenders)
        for c in contenders[shift:] + contenders[:shift]:
            c.step(data, record)
        print(f'  round {index + 1}/{rounds} '
              f'{"measured" if record else "warm-up"}: ' + ', '.join(
                  f'{c.label} {1e3 * c.times["step"][-1]:.0f} ms'
                  if record else c.label for c in contenders) +
              f' (load {load_text()})', file=sys.stderr, flush=True)
    steps = step_rows(contenders, args)
    print(markdown(steps, STEP_COLUMNS))
    print(f'\nload average after: {load_text()}')
    layers = []
    if args.layers:
        print()
        layers = layer_table_rows(
            layer_rows(contenders[0], data, args, device))
        print(markdown(layers, layer_columns(args.eps)))
        print(f'\nload average after the layer table: {load_text()}')
    if args.profile:
        for c in contenders:
            profile_step(c, data, device, args.profile_rows)
    sys.stdout.flush()
    return dict(model=model_name, setup=setup, steps=steps, layers=layers)


def main(argv: Optional[Sequence[str]] = None) -> List[dict]:
    args = parse_args(argv)
    torch.set_num_threads(args.threads)
    results = [
        run(args, model_name, setup) for model_name in args.models
        for setup in args.setups
    ]
    if args.json is not None:
        with open(args.json, 'w') as f:
            json.dump(results, f, indent=2)
    return results


if __name__ == '__main__':
    main()
