"""Training-step time of vanilla vs compressed fine-tuning, side by side.

For each ``--models`` x ``--setups`` it builds the model of the setup's leaf
config under ``configs/`` once (``MODELS.build``, random initialisation with
``--seed`` unless ``--checkpoint``), gives every method of ``--methods`` its
own copy with the compression hook of the config
(``HOOKS.build(cfg.default_hooks.compression)`` with ``method``/``eps``
replaced, ``hook.install(model)``) and an optimizer with the config's
settings (SGD, gradient clipping) on the trainable parameters, and times full
training steps on one fixed batch: forward (``mode='loss'``), backward,
clipping + optimizer step. The methods run **round-robin, one step each per
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
import copy
import gc
import os
import os.path as osp
import platform
import statistics
import sys
import time
from typing import Callable, Dict, List, Optional, Sequence, Tuple

REPO = osp.dirname(osp.dirname(osp.abspath(__file__)))
if REPO not in sys.path:
    sys.path.insert(0, REPO)

import torch  # noqa: E402
import torch.nn.functional as F  # noqa: E402

import mmseg_hosvd  # noqa: E402,F401  (mmcv.ops fallback, hooks)
from benchmark_memory import eps_value, positive_int, quiet_logger  # noqa: E402,E501
from mmseg_hosvd.lean_backward import LEAN_BACKWARD_MODES  # noqa: E402
from mmseg_hosvd.ops import (distinct_kept_bytes, hosvd,  # noqa: E402
                             subspace_iteration_step)
from mmseg_hosvd.ops.decomposition import (  # noqa: E402
    explained_variance_rank, multi_mode_product)

CONFIGS = osp.join(REPO, 'configs')
MIB = 2**20
#: --models choice -> (config folder, config model name)
MODEL_CONFIGS = {
    'pspnet': ('pspnet', 'pspnet_r18-d8'),
    'pspnet-m': ('mobilenet_v2', 'mobilenet-v2-d8_pspnet'),
    'deeplabv3': ('deeplabv3', 'deeplabv3_r18-d8'),
    'deeplabv3-m': ('mobilenet_v2', 'mobilenet-v2-d8_deeplabv3'),
    'fcn': ('fcn', 'fcn_r18-d8'),
    'upernet': ('upernet', 'upernet_r18'),
}
SETUPS = ('5L', '10L')
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
# config, model, data
# ---------------------------------------------------------------------------
def load_config(model: str, setup: str, crop: Tuple[int, int]):
    from mmengine.config import Config
    folder, name = MODEL_CONFIGS[model]
    path = osp.join(CONFIGS, folder, f'{name}_{setup.lower()}-vanilla_'
                    '1xb8-20k_voc12aug-512x512.py')
    cfg = Config.fromfile(path)
    cfg.model.data_preprocessor.size = tuple(crop)
    return cfg, path


def build_model(cfg, checkpoint: Optional[str], seed: int,
                device: torch.device) -> torch.nn.Module:
    from mmengine.runner import set_random_seed
    from mmseg.registry import MODELS
    set_random_seed(seed)
    model = MODELS.build(cfg.model)
    with quiet_logger():
        model.init_weights()
        if checkpoint is not None:
            from mmengine.runner.checkpoint import load_state_dict
            state = torch.load(checkpoint, map_location='cpu',
                               weights_only=True)
            state = state.get('state_dict', state)
            state = {k[7:] if k.startswith('module.') else k: v
                     for k, v in state.items()}
            load_state_dict(model, state, strict=False, logger='current')
    return model.to(device)


def smooth_images(batch: int, crop: Tuple[int, int],
                  generator: torch.Generator) -> List[torch.Tensor]:
    """uint8 images: coarse random colour fields, upsampled, plus noise."""
    height, width = crop
    coarse = torch.rand(batch, 3, max(2, height // 32), max(2, width // 32),
                        generator=generator)
    images = F.interpolate(coarse, size=crop, mode='bilinear',
                           align_corners=False)
    images = images + 0.05 * torch.randn(images.shape, generator=generator)
    return list((images.clamp(0, 1) * 255).to(torch.uint8))


def folder_images(root: str, batch: int,
                  crop: Tuple[int, int]) -> Tuple[List[torch.Tensor], List]:
    """The first ``batch`` train images of a VOC tree, centre crops, and
    their labels (None where no label file is found)."""
    import mmcv
    names_file = osp.join(root, 'ImageSets', 'Segmentation', 'train.txt')
    with open(names_file) as f:
        names = [line.split()[0] for line in f if line.strip()][:batch]
    if len(names) < batch:
        raise SystemExit(f'{names_file}: fewer than {batch} images')
    images, labels = [], []
    for name in names:
        image = mmcv.imread(osp.join(root, 'JPEGImages', name + '.jpg'),
                            channel_order='rgb')
        label = None
        for folder in ('SegmentationClass', 'SegmentationClassAug'):
            path = osp.join(root, folder, name + '.png')
            if osp.isfile(path):
                label = mmcv.imread(path, flag='unchanged')
                break
        height, width = crop
        scale = max(height / image.shape[0], width / image.shape[1])
        if scale > 1:
            image = mmcv.imrescale(image, scale)
            if label is not None:
                label = mmcv.imrescale(label, scale, interpolation='nearest')
        top = (image.shape[0] - height) // 2
        left = (image.shape[1] - width) // 2
        image = image[top:top + height, left:left + width]
        images.append(torch.from_numpy(image.copy()).permute(2, 0, 1))
        if label is not None:
            label = label[top:top + height, left:left + width]
            labels.append(torch.from_numpy(label.copy()).long()[None])
        else:
            labels.append(None)
    return images, labels


def make_batch(model: torch.nn.Module, args, num_classes: int) -> dict:
    """One preprocessed batch (the data preprocessor runs once)."""
    from mmengine.structures import PixelData
    from mmseg.structures import SegDataSample
    generator = torch.Generator().manual_seed(args.seed)
    height, width = args.crop
    if args.data_root is None:
        images = smooth_images(args.batch_size, args.crop, generator)
        labels = [None] * args.batch_size
    else:
        images, labels = folder_images(args.data_root, args.batch_size,
                                       args.crop)
    samples = []
    for label in labels:
        if label is None:
            label = torch.randint(0, num_classes, (1, height, width),
                                  generator=generator)
        sample = SegDataSample(metainfo=dict(img_shape=(height, width),
                                             ori_shape=(height, width)))
        sample.gt_sem_seg = PixelData(data=label)
        samples.append(sample)
    with torch.no_grad():
        return model.data_preprocessor(
            dict(inputs=images, data_samples=samples), training=True)


class Contender:
    """One method: its own model copy, hook, optimizer and timings."""

    def __init__(self, method: str, base: torch.nn.Module, cfg, args,
                 lean_backward: str = 'exact'):
        from mmengine.registry import HOOKS, OPTIMIZERS
        self.method = method
        self.lean_backward = lean_backward
        self.model = copy.deepcopy(base)
        hook_cfg = copy.deepcopy(cfg.default_hooks.compression)
        hook_cfg['method'] = method
        hook_cfg['lean_backward'] = lean_backward
        if method in EPS_METHODS:
            hook_cfg['eps'] = args.eps
        if method == 'asi':
            hook_cfg['seed'] = args.seed
            if args.asi_budget_mib is not None:
                hook_cfg['budget_mib'] = args.asi_budget_mib
        self.hook = HOOKS.build(hook_cfg)
        self.installed = self.hook.install(self.model)
        self.params = [p for p in self.model.parameters() if p.requires_grad]
        optimizer_cfg = copy.deepcopy(cfg.optim_wrapper.optimizer)
        self.optimizer = OPTIMIZERS.build(dict(optimizer_cfg,
                                               params=self.params))
        self.clip = cfg.optim_wrapper.get('clip_grad')
        self.times: Dict[str, List[float]] = dict(forward=[], backward=[],
                                                  optimizer=[], step=[])
        self.last_stats = {}

    @property
    def label(self) -> str:
        return f'{self.method}, lean {self.lean_backward}'

    def step(self, data: dict, device: torch.device,
             record: bool) -> float:
        model = self.model
        model.train()
        self.hook.set_norm_eval()
        self.optimizer.zero_grad(set_to_none=True)
        gc.collect()
        _sync(device)
        start = time.perf_counter()
        losses = model(**data, mode='loss')
        loss, _ = model.parse_losses(losses)
        _sync(device)
        forward_done = time.perf_counter()
        loss.backward()
        _sync(device)
        backward_done = time.perf_counter()
        if self.clip is not None:
            torch.nn.utils.clip_grad_norm_(self.params, **self.clip)
        self.optimizer.step()
        _sync(device)
        done = time.perf_counter()
        del losses, loss
        self.last_stats = {
            path: conv.last_stats
            for path, conv in self.installed.items()
            if conv.last_stats is not None
        }
        if record:
            self.times['forward'].append(forward_done - start)
            self.times['backward'].append(backward_done - forward_done)
            self.times['optimizer'].append(done - backward_done)
            self.times['step'].append(done - start)
        return done - start


def _sync(device: torch.device) -> None:
    if device.type == 'cuda':
        torch.cuda.synchronize(device)


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
    if warmup:
        function()
    times = []
    for _ in range(repeats):
        _sync(device)
        start = time.perf_counter()
        function()
        _sync(device)
        times.append(time.perf_counter() - start)
    return median_ms(times)


def capture_inputs(contender: Contender, data: dict
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
    try:
        with torch.no_grad():
            contender.model(**data, mode='tensor')
    finally:
        for handle in handles:
            handle.remove()
    return [(paths, tensor.detach()) for paths, tensor in groups.values()]


def layer_rows(contender: Contender, data: dict, args,
               device: torch.device) -> List[dict]:
    rows = []
    for paths, x in capture_inputs(contender, data):
        convs = [contender.installed[p] for p in paths]
        x = x.contiguous()

        def forward_convs():
            with torch.no_grad():
                for conv in convs:
                    conv._conv_forward(x, conv.weight, conv.bias)

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


def print_step_table(contenders: List[Contender], args) -> None:
    vanilla = contenders[0]
    base = statistics.median(vanilla.times['step'])
    print('| method | lean_backward | forward ms | backward ms | optim ms | '
          'step ms | step / vanilla | per-round ratio (median) | step / '
          'same method, first lean mode | kept MiB | ranks |')
    print('|---|---|---:|---:|---:|---:|---:|---:|---:|---:|---|')
    for c in contenders:
        same = next(o for o in contenders if o.method == c.method)
        lean_ratio = statistics.median(
            s / o for s, o in zip(c.times['step'], same.times['step']))
        step = statistics.median(c.times['step'])
        paired = statistics.median(
            s / v for s, v in zip(c.times['step'], vanilla.times['step']))
        stats = list(c.last_stats.values())
        kept = distinct_kept_bytes(stats) / MIB if stats else float('nan')
        name = c.method + (f' (eps {args.eps:g})'
                           if c.method in EPS_METHODS else '')
        if c.method == 'asi' and args.asi_budget_mib is not None:
            name = f'asi (budget {args.asi_budget_mib:g} MiB)'
        print(f'| {name} | {c.lean_backward} | '
              f'{median_ms(c.times["forward"]):.0f} | '
              f'{median_ms(c.times["backward"]):.0f} | '
              f'{median_ms(c.times["optimizer"]):.0f} | '
              f'{1e3 * step:.0f} | {step / base:.3f} | {paired:.3f} | '
              f'{lean_ratio:.3f} | {kept:.2f} | {_ranks_label(c)} |')


def print_layer_table(rows: List[dict], args) -> None:
    print(f'| input of | shape | hosvd ranks (eps {args.eps:g}) | conv fwd '
          'ms | hosvd ms | hosvd / conv | asi step ms | asi / conv | '
          '4x svd HOSVD ms | 4x svd / hosvd |')
    print('|---|---|---|---:|---:|---:|---:|---:|---:|---:|')
    for r in rows:
        print(f'| {_paths_label(r["paths"])} | '
              f'{tuple(r["shape"])} | {tuple(r["ranks"])} | '
              f'{r["conv_ms"]:.1f} | {r["hosvd_ms"]:.1f} | '
              f'{r["hosvd_ms"] / r["conv_ms"]:.2f} | {r["asi_ms"]:.1f} | '
              f'{r["asi_ms"] / r["conv_ms"]:.3f} | {r["svd_ms"]:.0f} | '
              f'{r["svd_ms"] / r["hosvd_ms"]:.1f}x |')


def profile_step(contender: Contender, data: dict, device: torch.device,
                 rows: int) -> None:
    from torch.profiler import ProfilerActivity, profile
    activities = [ProfilerActivity.CPU]
    if device.type == 'cuda':
        activities.append(ProfilerActivity.CUDA)
    with profile(activities=activities) as prof:
        contender.step(data, device, record=False)
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
def run(args, model_name: str, setup: str) -> None:
    from mmseg.utils import register_all_modules
    register_all_modules()
    device = torch.device(args.device)
    cfg, path = load_config(model_name, setup, args.crop)
    base = build_model(cfg, args.checkpoint, args.seed, device)
    data = make_batch(base, args, cfg.model.decode_head.num_classes)
    contenders = [
        Contender(m, base, cfg, args, lean) for m in args.methods
        for lean in args.lean_backward
    ]
    del base
    device_name = (torch.cuda.get_device_name(device)
                   if device.type == 'cuda' else platform.processor() or
                   platform.machine())
    print(f'\n## {model_name} {setup}: batch {args.batch_size}, crop '
          f'{args.crop[0]}x{args.crop[1]}, {args.iters} measured rounds '
          f'after {args.warmup} warm-up\n')
    print(f'config `{osp.relpath(path, REPO)}` (method/eps replaced); '
          f'weights: {args.checkpoint or "random init (seed %d)" % args.seed}'
          f'; data: {args.data_root or "smooth random images"}; device '
          f'{device.type} ({device_name}), torch {torch.__version__}, '
          f'{torch.get_num_threads()} threads; load average before: '
          f'{load_text()}\n', flush=True)
    rounds = args.warmup + args.iters
    for index in range(rounds):
        record = index >= args.warmup
        shift = index % len(contenders)
        for c in contenders[shift:] + contenders[:shift]:
            c.step(data, device, record)
        print(f'  round {index + 1}/{rounds} '
              f'{"measured" if record else "warm-up"}: ' + ', '.join(
                  f'{c.label} {1e3 * c.times["step"][-1]:.0f} ms'
                  if record else c.label for c in contenders) +
              f' (load {load_text()})', file=sys.stderr, flush=True)
    print_step_table(contenders, args)
    print(f'\nload average after: {load_text()}')
    if args.layers:
        print()
        rows = layer_rows(contenders[0], data, args, device)
        print_layer_table(rows, args)
        print(f'\nload average after the layer table: {load_text()}')
    if args.profile:
        for c in contenders:
            profile_step(c, data, device, args.profile_rows)
    sys.stdout.flush()


def main(argv: Optional[Sequence[str]] = None) -> None:
    args = parse_args(argv)
    torch.set_num_threads(args.threads)
    for model_name in args.models:
        for setup in args.setups:
            run(args, model_name, setup)


if __name__ == '__main__':
    main()
