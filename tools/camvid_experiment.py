"""A CPU-scale transfer experiment on real images: CamVid daytime -> dusk.

1. Pretrains each model from scratch on ``source_train`` (daytime) with plain
   full training (``configs/camvid/<folder>/<model>_pretrain_*.py``); skipped
   when ``<out>/checkpoints/<pretrain config>.pth`` exists, unless
   ``--force``.
2. From that checkpoint, fine-tunes the paper's 5L and 10L layer sets on
   ``target_train`` (dusk) with each method (``configs/camvid/<folder>/
   <model>_{5l,10l}-<method>_*.py``), one work_dir per run, seeded: 5L with
   the first ``--seeds-5l`` seeds, 10L with every seed of ``--seeds``.
3. Evaluates every checkpoint (the pretrained ones too) on ``target_val`` and
   on ``val`` (daytime: what is forgotten) with a fresh mmengine Runner built
   from the config dumped in the run's work_dir, i.e. exactly what
   ``mim test mmsegmentation <work_dir>/<config>.py --checkpoint
   <work_dir>/iter_<N>.pth`` does.
4. Records per run: mIoU/mAcc on target_val and val, the paper-count
   activation memory of the compressed layers (peak and mean over all
   training iterations, from ``activation_memory.json``), the bytes autograd
   saves for a whole training step (``mmseg_hosvd.profiling.
   SavedTensorMeter``, between forward and backward, parameters apart; mean
   over ``--profile-iters`` iterations) and the median step time
   (``model.train_step``, data loading excluded).

Writes ``<out>/results.json``, ``<out>/results.md`` (markdown tables) and
``<out>/pareto.png`` (activation memory, log scale, against target_val mIoU;
one marker per depth, one colour per method), and prints its wall time.
Finished runs (``<work_dir>/result.json``) are reused unless ``--force``.

Usage (from the repository root)::

    .venv/bin/python tools/camvid_experiment.py            # the full run
    .venv/bin/python tools/camvid_experiment.py --smoke    # seconds

The full run trains in-process, one run after the other, with
``torch.set_num_threads(--threads)``.
"""
import argparse
import contextlib
import copy
import datetime
import gc
import glob
import hashlib
import json
import math
import os
import os.path as osp
import platform
import shutil
import statistics
import subprocess
import sys
import time
from typing import Dict, List, Optional, Sequence

REPO = osp.dirname(osp.dirname(osp.abspath(__file__)))
if REPO not in sys.path:
    sys.path.insert(0, REPO)

CONFIGS = osp.join(REPO, 'configs', 'camvid')
DEFAULT_OUT = osp.join('work_dirs', 'camvid_experiment')
DEFAULT_SMOKE_OUT = osp.join('work_dirs', 'camvid_experiment_smoke')
DEFAULT_DATA = osp.join('data', 'camvid_voc')  # tools/convert_camvid.py
MIB = 2**20

#: --models choice -> (config folder, config prefix, label in tables)
MODELS = {
    'deeplabv3-m': ('mobilenet_v2', 'mobilenet-v2-d8_deeplabv3', 'DLV3-M'),
    'fcn': ('fcn', 'fcn_r18-d8', 'FCN'),
}
DEPTHS = ('5l', '10l')
#: --methods choice (leaf tag) -> (hook method, eps)
METHODS = {
    'vanilla': ('vanilla', None),
    'gradient-filter': ('gradient_filter', None),
    'svd-eps0.8': ('svd', 0.8),
    'hosvd-eps0.8': ('hosvd', 0.8),
    'hosvd-eps0.9': ('hosvd', 0.9),
    'asi-eps0.8': ('asi', 0.8),
}
#: plot colours per method tag
COLOURS = {
    'vanilla': 'tab:gray',
    'gradient-filter': 'tab:orange',
    'svd-eps0.8': 'tab:green',
    'hosvd-eps0.8': 'tab:blue',
    'hosvd-eps0.9': 'tab:purple',
    'asi-eps0.8': 'tab:red',
}
MARKERS = {'5l': 'o', '10l': 's'}
SPLITS = ('target_val', 'val')

#: --smoke sizes: a handful of images, 2 iterations per run
SMOKE = dict(images=4, iters=2, batch=2, crop=(64, 64), scale=(96, 72))


# ---------------------------------------------------------------------------
# command line
# ---------------------------------------------------------------------------
def asi_available() -> bool:
    from mmseg_hosvd.ops import MODULE_METHODS
    return 'asi' in MODULE_METHODS


def parse_args(argv: Optional[Sequence[str]] = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        description=__doc__.split('\n')[0],
        formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    parser.add_argument('--models', nargs='+', choices=list(MODELS),
                        default=list(MODELS))
    parser.add_argument('--depths', nargs='+', choices=DEPTHS,
                        default=list(DEPTHS))
    parser.add_argument(
        '--methods', nargs='+', choices=list(METHODS), default=None,
        help='default: all (asi-eps0.8 only where mmseg_hosvd has the asi '
        'method)')
    parser.add_argument('--seeds', nargs='+', type=int, default=[233, 234],
                        help='seeds of the 10L runs')
    parser.add_argument('--seeds-5l', type=int, default=1,
                        help='how many of --seeds the 5L runs use')
    parser.add_argument('--pretrain-seed', type=int, default=233)
    parser.add_argument('--data-root', default=DEFAULT_DATA,
                        help='the camvid_voc tree (relative: to the '
                        'repository root)')
    parser.add_argument('--out', default=None,
                        help=f'output folder (relative: to the repository '
                        f'root); default {DEFAULT_OUT}, with --smoke '
                        f'{DEFAULT_SMOKE_OUT}')
    parser.add_argument('--pretrain-iters', type=int, default=None,
                        help="override the pretraining configs' iterations")
    parser.add_argument('--finetune-iters', type=int, default=None,
                        help="override the fine-tuning configs' iterations")
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
    parser.add_argument(
        '--grad-check', type=int, default=0, metavar='BATCHES',
        help='instead of the experiment: on the starting checkpoints (which '
        'must exist), compare each method\'s gradients with the exact ones '
        'on BATCHES target_train batches; writes <out>/grad_check.{json,md}')
    args = parser.parse_args(argv)

    if args.methods is None:
        args.methods = [
            m for m in METHODS
            if METHODS[m][0] != 'asi' or asi_available()
        ]
    elif any(METHODS[m][0] == 'asi' for m in args.methods) and \
            not asi_available():
        parser.error('--methods asi-eps0.8: this mmseg_hosvd has no asi '
                     'method')
    args.models = list(dict.fromkeys(args.models))
    args.depths = list(dict.fromkeys(args.depths))
    args.methods = list(dict.fromkeys(args.methods))
    args.seeds = list(dict.fromkeys(args.seeds))
    if not 0 <= args.seeds_5l <= len(args.seeds):
        parser.error(f'--seeds-5l must be in [0, {len(args.seeds)}]')
    if args.grad_check < 0:
        parser.error('--grad-check must be >= 0')
    for name, least in (('pretrain_iters', 2), ('finetune_iters', 2),
                        ('profile_iters', 1), ('threads', 1)):
        value = getattr(args, name)
        if value is not None and value < least:
            parser.error(f'--{name.replace("_", "-")} must be >= {least}')
    if args.out is None:
        args.out = DEFAULT_SMOKE_OUT if args.smoke else DEFAULT_OUT
    args.out = osp.abspath(osp.join(REPO, args.out))
    args.data_root = osp.abspath(osp.join(REPO, args.data_root))
    if not osp.isdir(osp.join(args.data_root, 'ImageSets', 'Segmentation')):
        parser.error(f'--data-root {args.data_root!r}: not a camvid_voc '
                     'tree (no ImageSets/Segmentation)')
    return args


# ---------------------------------------------------------------------------
# configs
# ---------------------------------------------------------------------------
def find_config(folder: str, pattern: str) -> str:
    found = sorted(glob.glob(osp.join(CONFIGS, folder, pattern)))
    if len(found) != 1:
        raise SystemExit(f'expected one config {folder}/{pattern} under '
                         f'{CONFIGS}, found {len(found)}: {found}')
    return found[0]


def pretrain_config(model: str) -> str:
    folder, prefix, _ = MODELS[model]
    return find_config(folder, f'{prefix}_pretrain_*.py')


def finetune_config(model: str, depth: str, tag: str) -> str:
    folder, prefix, _ = MODELS[model]
    return find_config(folder, f'{prefix}_{depth}-{tag}_*.py')


def stem(path: str) -> str:
    return osp.splitext(osp.basename(path))[0]


def set_schedule(cfg, iters: int) -> None:
    """Set the iterations of a config (``[warm-up LinearLR, cosine]``),
    scaling the warm-up proportionally, and its checkpoint interval."""
    old = cfg.train_cfg.max_iters
    warmup, cosine = cfg.param_scheduler
    warm = round(warmup.end * iters / old)
    # mmengine's LinearLR over a single iteration never leaves its start
    # factor: 2 iterations at least, and the cosine needs one
    warm = max(1, min(max(warm, 2), iters - 1))
    warmup.begin, warmup.end = 0, warm
    cosine.begin, cosine.end = warm, iters
    cfg.train_cfg.max_iters = iters
    cfg.train_cfg.val_interval = iters
    cfg.default_hooks.checkpoint.interval = iters


def set_data(cfg, args, ann_file: Optional[str] = None) -> None:
    """Point every dataloader at ``args.data_root`` (absolute, so that the
    config dumped to the work_dir runs from anywhere); shrink for
    ``--smoke``."""
    for key in ('train_dataloader', 'val_dataloader', 'test_dataloader'):
        loader = cfg.get(key)
        if not loader:
            continue
        loader.dataset.data_root = args.data_root
        if args.smoke:
            loader.dataset.indices = SMOKE['images']
            loader.batch_size = SMOKE['batch']
            for transform in loader.dataset.pipeline:
                if transform.type in ('RandomResize', 'Resize'):
                    transform.scale = SMOKE['scale']
                elif transform.type == 'RandomCrop':
                    transform.crop_size = SMOKE['crop']
    if ann_file is not None:
        cfg.test_dataloader.dataset.ann_file = ann_file
    if args.smoke:
        cfg.model.data_preprocessor.size = SMOKE['crop']


def run_cfg(path: str, args, work_dir: str, seed: int,
            iters: Optional[int]):
    """The training config of one run."""
    from mmengine.config import Config
    cfg = Config.fromfile(path)
    set_data(cfg, args)
    if args.smoke:
        iters = SMOKE['iters']
    if iters is not None:
        set_schedule(cfg, iters)
    cfg.work_dir = work_dir
    cfg.randomness = dict(seed=seed)
    cfg.resume = False
    # validation happens after training, from the saved checkpoint
    cfg.train_cfg.val_interval = cfg.train_cfg.max_iters + 1
    if args.smoke:
        cfg.default_hooks.logger.interval = 1
    compression = cfg.default_hooks.get('compression')
    if compression is not None and compression.method == 'asi':
        compression.seed = seed  # the random starting bases
    isolate(cfg, work_dir)
    return cfg


def isolate(cfg, work_dir: str) -> None:
    """Per-run names for mmengine's process-wide instances (logger, message
    hub, visualizer): several runners live in this process."""
    cfg.experiment_name = (f'{osp.basename(work_dir)}_'
                           f'{time.strftime("%Y%m%d_%H%M%S")}_'
                           f'{time.monotonic_ns()}')
    cfg.visualizer.name = f'visualizer:{cfg.experiment_name}'
    cfg.env_cfg = dict(cudnn_benchmark=False,
                       mp_cfg=dict(mp_start_method='fork',
                                   opencv_num_threads=0),
                       dist_cfg=dict(backend='gloo'))


# ---------------------------------------------------------------------------
# training with step profiling
# ---------------------------------------------------------------------------
class StepProfiler:
    """Wraps ``model.train_step``: times every call (data loading is outside
    it) and, on ``profile`` calls, measures the bytes autograd saves for the
    whole step between forward and backward, with
    :class:`mmseg_hosvd.profiling.SavedTensorMeter` (each storage once;
    parameters and buffers apart) read in a wrapper of the optimizer
    wrapper's ``backward``."""

    def __init__(self, model, profile: Sequence[int]) -> None:
        self.model = model
        self.profile = set(profile)
        self.times: List[float] = []
        self.saved: List[float] = []
        self.saved_params: List[float] = []
        self.calls = 0
        self._train_step = model.train_step
        model.train_step = self.train_step

    def train_step(self, data, optim_wrapper):
        from mmseg_hosvd.profiling import SavedTensorMeter
        index = self.calls
        self.calls += 1
        if index not in self.profile:
            start = time.perf_counter()
            out = self._train_step(data, optim_wrapper=optim_wrapper)
            self.times.append(time.perf_counter() - start)
            return out
        state = list(self.model.parameters()) + list(self.model.buffers())
        meter = SavedTensorMeter(state)
        backward = optim_wrapper.backward

        def measured_backward(loss, **kwargs):
            if meter._hooks is not None:
                meter.__exit__(None, None, None)
                self.saved.append(meter.activation_bytes() / MIB)
                self.saved_params.append(meter.parameter_bytes() / MIB)
            return backward(loss, **kwargs)

        optim_wrapper.backward = measured_backward
        meter.__enter__()
        try:
            return self._train_step(data, optim_wrapper=optim_wrapper)
        finally:
            if meter._hooks is not None:
                meter.__exit__(None, None, None)
            del optim_wrapper.backward  # the class's method again

    def step_time(self) -> float:
        times = self.times[1:] or self.times  # the first call warms up
        return statistics.median(times) if times else float('nan')


def train(cfg, args, profile: bool) -> dict:
    start = time.perf_counter()
    runner = build_runner(cfg, args)
    iters = cfg.train_cfg.max_iters
    # profile iterations 1..N (not the first), as many as the run has
    wanted = range(1, 1 + args.profile_iters) if profile else ()
    profiler = StepProfiler(runner.model,
                            [i for i in wanted if i < iters] or
                            ([0] if profile else []))
    runner.train()
    checkpoint = osp.join(cfg.work_dir, f'iter_{iters}.pth')
    if not osp.isfile(checkpoint):
        raise RuntimeError(f'no checkpoint {checkpoint} after training')
    result = dict(
        iters=iters,
        checkpoint=checkpoint,
        config=osp.join(cfg.work_dir, osp.basename(cfg.filename)),
        step_time_s=profiler.step_time(),
        step_saved_mib=(statistics.fmean(profiler.saved)
                        if profiler.saved else None),
        step_saved_param_mib=(statistics.fmean(profiler.saved_params)
                              if profiler.saved_params else None),
        train_wall_s=time.perf_counter() - start)
    del runner, profiler
    gc.collect()
    return result


def build_runner(cfg, args):
    """``Runner.from_cfg``; with ``--quiet`` the console handler of the
    run's logger (created now, bound to the current ``sys.stdout``) writes
    to ``os.devnull``: mmengine's messages go to the run's log file only."""
    from mmengine.runner import Runner
    if not args.quiet:
        return Runner.from_cfg(cfg)
    global _DEVNULL
    if _DEVNULL is None:
        _DEVNULL = open(os.devnull, 'w')
    with contextlib.redirect_stdout(_DEVNULL):
        return Runner.from_cfg(cfg)


_DEVNULL = None


def evaluate(config: str, checkpoint: str, split: str, work_dir: str,
             args) -> Dict[str, float]:
    """``mim test``'s evaluation: a Runner from the dumped config with
    ``load_from=checkpoint``, on ``split``."""
    from mmengine.config import Config
    cfg = Config.fromfile(config)
    cfg.load_from = checkpoint
    cfg.work_dir = work_dir
    cfg.test_dataloader.dataset.ann_file = (
        f'ImageSets/Segmentation/{split}.txt')
    isolate(cfg, work_dir)
    runner = build_runner(cfg, args)
    metrics = runner.test()
    del runner
    gc.collect()
    return {k: float(v) for k, v in metrics.items()}


# ---------------------------------------------------------------------------
# the experiment
# ---------------------------------------------------------------------------
def sha256(path: str) -> str:
    digest = hashlib.sha256()
    with open(path, 'rb') as f:
        for block in iter(lambda: f.read(1 << 20), b''):
            digest.update(block)
    return digest.hexdigest()


def git_commit() -> Optional[str]:
    """HEAD, with ``+dirty`` when tracked files differ from it."""
    try:
        head = subprocess.run(['git', 'rev-parse', 'HEAD'], cwd=REPO,
                              capture_output=True, text=True,
                              check=True).stdout.strip()
        dirty = subprocess.run(['git', 'status', '--porcelain',
                                '--untracked-files=no'], cwd=REPO,
                               capture_output=True, text=True,
                               check=True).stdout.strip()
    except (OSError, subprocess.CalledProcessError):
        return None
    return f'{head}+dirty' if dirty else head


def rel(path: Optional[str]) -> Optional[str]:
    if path is None:
        return None
    path = osp.abspath(path)
    return osp.relpath(path, REPO) if path.startswith(REPO + os.sep) \
        else path


def load_json(path: str):
    with open(path) as f:
        return json.load(f)


def dump_json(obj, path: str) -> None:
    tmp = path + '.tmp'
    with open(tmp, 'w') as f:
        json.dump(obj, f, indent=2)
    os.replace(tmp, path)


def pretrain(model: str, args, log) -> dict:
    """Pretrain ``model`` on source_train (or reuse its checkpoint) and
    evaluate it; returns its record."""
    config = pretrain_config(model)
    name = stem(config)
    ckpt_dir = osp.join(args.out, 'checkpoints')
    os.makedirs(ckpt_dir, exist_ok=True)
    start_ckpt = osp.join(ckpt_dir, f'{name}.pth')
    work_dir = osp.join(args.out, 'pretrain', name)
    record_path = osp.join(work_dir, 'result.json')
    if osp.isfile(start_ckpt) and osp.isfile(record_path) and \
            not args.force:
        record = load_json(record_path)
        log(f'[pretrain] {model}: reusing {rel(start_ckpt)}')
        return record
    if osp.isdir(work_dir):
        shutil.rmtree(work_dir)
    log(f'[pretrain] {model}: {rel(config)}')
    import torch
    cfg = run_cfg(config, args, work_dir, args.pretrain_seed,
                  args.pretrain_iters)
    trained = train(cfg, args, profile=True)
    # the starting checkpoint: weights and provenance only
    state = torch.load(trained['checkpoint'], map_location='cpu',
                       weights_only=True)
    provenance = dict(
        config=rel(config),
        trained_by='tools/camvid_experiment.py',
        data='source_train',
        iters=int(trained['iters']),
        seed=int(args.pretrain_seed),
        init='random (no pretrained weights)',
        git_commit=git_commit() or '',
        date=datetime.datetime.now().isoformat(timespec='seconds'))
    torch.save(dict(state_dict=state['state_dict'],
                    meta=dict(provenance=provenance)), start_ckpt)
    record = dict(kind='pretrain', model=model, label=MODELS[model][2],
                  config=rel(config), work_dir=rel(work_dir),
                  start_checkpoint=rel(start_ckpt),
                  sha256=sha256(start_ckpt), seed=args.pretrain_seed,
                  iters=trained['iters'], step_time_s=trained['step_time_s'],
                  step_saved_mib=trained['step_saved_mib'],
                  train_wall_s=trained['train_wall_s'],
                  run_checkpoint=rel(trained['checkpoint']),
                  dumped_config=rel(trained['config']),
                  provenance=provenance)
    start = time.perf_counter()
    for split in SPLITS:
        metrics = evaluate(trained['config'], start_ckpt, split,
                           osp.join(work_dir, f'eval_{split}'), args)
        record[split] = metrics
    record['eval_wall_s'] = time.perf_counter() - start
    dump_json(record, record_path)
    log(f'[pretrain] {model}: mIoU target_val '
        f'{record["target_val"]["mIoU"]:.2f}, val '
        f'{record["val"]["mIoU"]:.2f} '
        f'({record["train_wall_s"]:.0f} s train)')
    return record


def finetune(model: str, depth: str, tag: str, seed: int, start_ckpt: str,
             args, log) -> dict:
    config = finetune_config(model, depth, tag)
    name = f'{stem(config)}_seed{seed}'
    work_dir = osp.join(args.out, 'runs', name)
    record_path = osp.join(work_dir, 'result.json')
    if osp.isfile(record_path) and not args.force:
        record = load_json(record_path)
        if record.get('start_checkpoint') == rel(start_ckpt):
            log(f'[finetune] {name}: reusing {rel(record_path)}')
            return record
    if osp.isdir(work_dir):
        shutil.rmtree(work_dir)
    log(f'[finetune] {name}')
    cfg = run_cfg(config, args, work_dir, seed, args.finetune_iters)
    cfg.load_from = start_ckpt
    trained = train(cfg, args, profile=True)
    memory = load_json(osp.join(work_dir, 'activation_memory.json'))
    total = memory['total']
    method, eps = METHODS[tag]
    record = dict(
        kind='finetune', model=model, label=MODELS[model][2], depth=depth,
        tag=tag, method=method, eps=eps, seed=seed, config=rel(config),
        work_dir=rel(work_dir), checkpoint=rel(trained['checkpoint']),
        dumped_config=rel(trained['config']),
        start_checkpoint=rel(start_ckpt), iters=trained['iters'],
        act_mem_peak_mib=total['paper_mib']['peak'],
        act_mem_mean_mib=total['paper_mib']['mean'],
        act_kept_peak_mib=total['kept_mib']['peak'],
        act_kept_mean_mib=total['kept_mib']['mean'],
        compressed_layers=len(memory['layers']),
        ranks={p: layer['ranks']['mean']
               for p, layer in memory['layers'].items()},
        step_saved_mib=trained['step_saved_mib'],
        step_saved_param_mib=trained['step_saved_param_mib'],
        step_time_s=trained['step_time_s'],
        train_wall_s=trained['train_wall_s'])
    start = time.perf_counter()
    for split in SPLITS:
        record[split] = evaluate(trained['config'], trained['checkpoint'],
                                 split, osp.join(work_dir, f'eval_{split}'),
                                 args)
    record['eval_wall_s'] = time.perf_counter() - start
    dump_json(record, record_path)
    log(f'[finetune] {name}: mIoU target_val '
        f'{record["target_val"]["mIoU"]:.2f}, val {record["val"]["mIoU"]:.2f}'
        f', act mem {record["act_mem_mean_mib"]:.3g} MiB, step '
        f'{record["step_time_s"]:.2f} s ({record["train_wall_s"]:.0f} s '
        f'train, {record["eval_wall_s"]:.0f} s eval)')
    return record


def plan(args) -> List[tuple]:
    runs = []
    for model in args.models:
        for depth in args.depths:
            seeds = args.seeds[:args.seeds_5l] if depth == '5l' \
                else args.seeds
            for tag in args.methods:
                for seed in seeds:
                    runs.append((model, depth, tag, seed))
    return runs


# ---------------------------------------------------------------------------
# reports
# ---------------------------------------------------------------------------
def fmt(value, digits=2) -> str:
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return '-'
    return f'{value:.{digits}f}'


def fmt_mib(value) -> str:
    if value is None:
        return '-'
    if value >= 10:
        return f'{value:.1f}'
    if value >= 0.1:
        return f'{value:.2f}'
    return f'{value:.3f}'


def group(records: List[dict]) -> Dict[tuple, List[dict]]:
    groups: Dict[tuple, List[dict]] = {}
    for r in records:
        groups.setdefault((r['model'], r['depth'], r['tag']), []).append(r)
    return groups


def mean(values: Sequence[float]) -> float:
    return statistics.fmean(values)


def spread(values: Sequence[float]) -> str:
    """``mean ± half range`` over seeds (just the value for one seed)."""
    if len(values) == 1:
        return fmt(values[0])
    return f'{mean(values):.2f} ± {(max(values) - min(values)) / 2:.2f}'


def markdown(summary: dict) -> str:
    pre = summary['pretrain']
    runs = summary['runs']
    lines = [
        '# CamVid daytime -> dusk, CPU scale',
        '',
        f'Command: `{summary["command"]}`  ',
        f'Wall time: {summary["wall_s"] / 60:.1f} min on '
        f'{summary["machine"]["cpus"]} CPU core(s), torch threads '
        f'{summary["machine"]["threads"]} (torch '
        f'{summary["machine"]["torch"]}); {summary["date"]}',
        '',
        '## Starting checkpoints (pretrained here from scratch on '
        'source_train)',
        '',
        '| model | config | iterations | seed | mIoU target_val | '
        'mIoU val | step time (s) | checkpoint | sha256 |',
        '|---|---|---|---|---|---|---|---|---|',
    ]
    for r in pre:
        lines.append(
            f'| {r["label"]} | `{r["config"]}` | {r["iters"]} | '
            f'{r["seed"]} | {fmt(r["target_val"]["mIoU"])} | '
            f'{fmt(r["val"]["mIoU"])} | {fmt(r["step_time_s"])} | '
            f'`{r["start_checkpoint"]}` | `{r["sha256"][:12]}` |')
    lines += [
        '',
        '## Fine-tuning on target_train, every run',
        '',
        'mIoU/mAcc in %; act mem: the paper\'s count of the compressed '
        'layers\' saved inputs (fp32, MiB), peak and mean over all '
        'training iterations; whole-step saved: every tensor autograd '
        'saves for one training step (each storage once, parameters '
        'apart), mean over the profiled iterations; step time: median '
        '`train_step` (forward, backward, clip, SGD), data loading '
        'excluded.',
        '',
        '| model | depth | method | eps | seed | mIoU target_val | '
        'mAcc target_val | mIoU val | act mem peak (MiB) | '
        'act mem mean (MiB) | whole-step saved (MiB) | step time (s) |',
        '|---|---|---|---|---|---|---|---|---|---|---|---|',
    ]
    by_model = {r['model']: r for r in pre}
    for r in runs:
        lines.append(
            f'| {r["label"]} | {r["depth"].upper()} | {r["method"]} | '
            f'{fmt(r["eps"], 1) if r["eps"] is not None else "-"} | '
            f'{r["seed"]} | {fmt(r["target_val"]["mIoU"])} | '
            f'{fmt(r["target_val"]["mAcc"])} | {fmt(r["val"]["mIoU"])} | '
            f'{fmt_mib(r["act_mem_peak_mib"])} | '
            f'{fmt_mib(r["act_mem_mean_mib"])} | '
            f'{fmt_mib(r["step_saved_mib"])} | {fmt(r["step_time_s"])} |')
    lines += [
        '',
        '## Mean over seeds',
        '',
        'mean ± half the range over the seeds (10L: '
        f'{len(summary["args"]["seeds"])} seeds); Δ: difference to vanilla '
        'at the same depth (mIoU points on target_val); act mem ratio: '
        'vanilla\'s mean activation memory / the method\'s.',
        '',
        '| model | depth | method | seeds | mIoU target_val | Δ vanilla | '
        'mIoU val | act mem mean (MiB) | act mem ratio | '
        'whole-step saved (MiB) | step time (s) |',
        '|---|---|---|---|---|---|---|---|---|---|---|',
    ]
    groups = group(runs)
    for (model, depth, tag), rs in groups.items():
        vanilla = groups.get((model, depth, 'vanilla'))
        miou = [r['target_val']['mIoU'] for r in rs]
        delta = (mean(miou) - mean([r['target_val']['mIoU']
                                    for r in vanilla])) if vanilla else None
        mem = mean([r['act_mem_mean_mib'] for r in rs])
        ratio = (mean([r['act_mem_mean_mib'] for r in vanilla]) / mem
                 if vanilla and mem > 0 else None)
        saved = [r['step_saved_mib'] for r in rs
                 if r['step_saved_mib'] is not None]
        lines.append(
            f'| {rs[0]["label"]} | {depth.upper()} | {tag} | {len(rs)} | '
            f'{spread(miou)} | '
            f'{("%+.2f" % delta) if delta is not None else "-"} | '
            f'{spread([r["val"]["mIoU"] for r in rs])} | {fmt_mib(mem)} | '
            f'{("%.1fx" % ratio) if ratio else "-"} | '
            f'{fmt_mib(mean(saved)) if saved else "-"} | '
            f'{fmt(mean([r["step_time_s"] for r in rs]))} |')
    for model, r in by_model.items():
        lines.append(
            f'| {r["label"]} | - | pretrained, not fine-tuned | - | '
            f'{fmt(r["target_val"]["mIoU"])} | - | {fmt(r["val"]["mIoU"])} '
            '| - | - | - | - |')
    lines += ['', f'Plot: `{summary["pareto"]}`', '']
    return '\n'.join(lines)


def pareto(summary: dict, path: str) -> None:
    import matplotlib
    matplotlib.use('Agg')
    import matplotlib.pyplot as plt
    from matplotlib.lines import Line2D

    runs = summary['runs']
    models = list(dict.fromkeys(r['model'] for r in runs))
    if not models:
        return
    fig, axes = plt.subplots(1, len(models), figsize=(6 * len(models), 4.6),
                             squeeze=False)
    groups = group(runs)
    pre = {r['model']: r for r in summary['pretrain']}
    for ax, model in zip(axes[0], models):
        for (m, depth, tag), rs in groups.items():
            if m != model:
                continue
            x = mean([max(r['act_mem_mean_mib'], 1e-6) for r in rs])
            ys = [r['target_val']['mIoU'] for r in rs]
            y = mean(ys)
            err = [[y - min(ys)], [max(ys) - y]]
            ax.errorbar([x], [y], yerr=err if len(ys) > 1 else None,
                        marker=MARKERS[depth], color=COLOURS[tag],
                        markersize=8, capsize=3, linestyle='none',
                        markeredgecolor='black')
        if model in pre:
            ax.axhline(pre[model]['target_val']['mIoU'], color='black',
                       linestyle='--', linewidth=1,
                       label='pretrained, not fine-tuned')
        ax.set_xscale('log')
        ax.set_xlabel('activation memory, paper count (MiB, mean; log)')
        ax.set_ylabel('mIoU on target_val (%)')
        ax.set_title(f'{MODELS[model][2]}: CamVid daytime -> dusk')
        ax.grid(True, which='both', alpha=0.3)
    handles = [
        Line2D([], [], color=COLOURS[t], marker='o', linestyle='none',
               label=t) for t in dict.fromkeys(r['tag'] for r in runs)
    ] + [
        Line2D([], [], color='white', marker=MARKERS[d],
               markeredgecolor='black', linestyle='none',
               label=d.upper()) for d in dict.fromkeys(r['depth']
                                                       for r in runs)
    ] + [Line2D([], [], color='black', linestyle='--',
                label='pretrained, not fine-tuned')]
    fig.legend(handles=handles, loc='lower center', ncol=len(handles),
               fontsize=8, frameon=False)
    fig.tight_layout(rect=(0, 0.08, 1, 1))
    fig.savefig(path, dpi=120)
    plt.close(fig)


# ---------------------------------------------------------------------------
# gradient fidelity (an investigation aid, --grad-check)
# ---------------------------------------------------------------------------
def fixed_batches(cfg, count: int, seed: int) -> List[dict]:
    """``count`` batches of the config's train pipeline (augmentation
    included), drawn once with ``seed``: every method sees the same ones."""
    import numpy as np
    import random
    import torch
    from mmengine.dataset import pseudo_collate
    from mmseg.registry import DATASETS
    dataset = DATASETS.build(copy.deepcopy(cfg.train_dataloader.dataset))
    random.seed(seed)
    np.random.seed(seed)
    generator = torch.Generator().manual_seed(seed)
    order = torch.randperm(len(dataset), generator=generator).tolist()
    size = cfg.train_dataloader.batch_size
    batches = []
    for index in range(count):
        items = [order[(index * size + k) % len(order)] for k in range(size)]
        batches.append(pseudo_collate([dataset[i] for i in items]))
    return batches


def method_gradients(cfg, start_ckpt: str, tag: str, batches: List[dict],
                     seed: int):
    """Per batch, the gradients of every trainable parameter (by name) and
    the names of the compressed/counted convs' weights."""
    import torch
    from mmengine.registry import HOOKS
    from mmengine.runner import load_checkpoint
    from mmseg.registry import MODELS
    torch.manual_seed(seed)
    model = MODELS.build(copy.deepcopy(cfg.model))
    load_checkpoint(model, start_ckpt, map_location='cpu', strict=True,
                    logger='silent')
    hook_cfg = copy.deepcopy(cfg.default_hooks.compression)
    method, eps = METHODS[tag]
    hook_cfg.method = method
    if eps is not None:
        hook_cfg.eps = eps
    if method == 'asi':
        hook_cfg.seed = seed
    hook = HOOKS.build(hook_cfg.to_dict())
    installed = hook.install(model)
    weights = [f'{path}.weight' for path in installed]
    grads = []
    for batch in batches:
        model.train()
        hook.set_norm_eval()
        model.zero_grad(set_to_none=True)
        data = model.data_preprocessor(copy.deepcopy(batch), training=True)
        loss, _ = model.parse_losses(model(**data, mode='loss'))
        loss.backward()
        grads.append({
            name: p.grad.detach().clone()
            for name, p in model.named_parameters()
            if p.requires_grad and p.grad is not None
        })
    return grads, weights


def grad_check(args, log) -> dict:
    """Cosine similarity and relative error of each method's gradients to
    the exact (vanilla) ones, on the starting checkpoint and fixed batches:
    over the compressed convs' weights, and over all trainable parameters
    (Gradient Filter also approximates grad_input, which reaches the layers
    below)."""
    import torch
    from mmengine.config import Config
    rows = []
    for model in args.models:
        start_ckpt = osp.join(args.out, 'checkpoints',
                              f'{stem(pretrain_config(model))}.pth')
        if not osp.isfile(start_ckpt):
            raise SystemExit(f'--grad-check: no starting checkpoint '
                             f'{start_ckpt}; run the experiment first')
        for depth in args.depths:
            cfg = Config.fromfile(finetune_config(model, depth, 'vanilla'))
            set_data(cfg, args)
            batches = fixed_batches(cfg, args.grad_check, args.seeds[0])
            exact, weights = method_gradients(cfg, start_ckpt, 'vanilla',
                                              batches, args.seeds[0])
            for tag in args.methods:
                if tag == 'vanilla':
                    continue
                approx, _ = method_gradients(cfg, start_ckpt, tag, batches,
                                             args.seeds[0])
                stats = {}
                for scope in ('compressed', 'all'):
                    cos, err = [], []
                    for g_exact, g_approx in zip(exact, approx):
                        names = weights if scope == 'compressed' else sorted(
                            g_exact)
                        a = torch.cat([g_approx[n].flatten() for n in names])
                        b = torch.cat([g_exact[n].flatten() for n in names])
                        cos.append(float(torch.nn.functional.cosine_similarity(
                            a, b, dim=0)))
                        err.append(float((a - b).norm() / b.norm()))
                    stats[scope] = dict(cos=mean(cos), rel_err=mean(err))
                rows.append(dict(model=model, label=MODELS[model][2],
                                 depth=depth, tag=tag, batches=len(batches),
                                 **stats))
                log(f'[grad-check] {MODELS[model][2]} {depth} {tag}: cos '
                    f'{stats["compressed"]["cos"]:.3f} (compressed), '
                    f'{stats["all"]["cos"]:.3f} (all)')
    lines = [
        '# Gradient fidelity on the starting checkpoints',
        '',
        f'{args.grad_check} fixed target_train batches (seed '
        f'{args.seeds[0]}); cosine similarity and relative error '
        '(||g - g_exact|| / ||g_exact||, mean over batches) of the '
        'gradients of the compressed convs\' weights, and of all trainable '
        'parameters, against the exact gradients of plain fine-tuning.',
        '',
        '| model | depth | method | cos (compressed) | rel. err '
        '(compressed) | cos (all trainable) | rel. err (all trainable) |',
        '|---|---|---|---|---|---|---|',
    ]
    for r in rows:
        lines.append(
            f'| {r["label"]} | {r["depth"].upper()} | {r["tag"]} | '
            f'{r["compressed"]["cos"]:.3f} | '
            f'{r["compressed"]["rel_err"]:.3f} | {r["all"]["cos"]:.3f} | '
            f'{r["all"]["rel_err"]:.3f} |')
    with open(osp.join(args.out, 'grad_check.md'), 'w') as f:
        f.write('\n'.join(lines) + '\n')
    dump_json(rows, osp.join(args.out, 'grad_check.json'))
    return dict(grad_check=rows)


# ---------------------------------------------------------------------------
def main(argv: Optional[Sequence[str]] = None) -> dict:
    wall_start = time.perf_counter()
    commit = git_commit()  # the code this run starts with
    args = parse_args(argv)
    import torch
    torch.set_num_threads(args.threads)
    import mmseg_hosvd  # noqa: F401  (mmcv.ops fallback, hooks)
    from mmseg.utils import register_all_modules
    register_all_modules()
    os.makedirs(args.out, exist_ok=True)
    runs = plan(args)
    total = len(args.models) + len(runs)

    def log(message: str) -> None:
        elapsed = time.perf_counter() - wall_start
        print(f'[camvid {elapsed / 60:6.1f} min] {message}', flush=True)

    if args.grad_check:
        result = grad_check(args, log)
        log(f'{rel(osp.join(args.out, "grad_check.md"))}; wall time '
            f'{time.perf_counter() - wall_start:.0f} s')
        return result

    log(f'{len(args.models)} pretraining(s), {len(runs)} fine-tune(s) -> '
        f'{rel(args.out)}; methods {", ".join(args.methods)}')
    pre_records, records = [], []
    done = 0
    for model in args.models:
        pre_records.append(pretrain(model, args, log))
        done += 1
    starts = {r['model']: osp.join(REPO, r['start_checkpoint'])
              if not osp.isabs(r['start_checkpoint'])
              else r['start_checkpoint'] for r in pre_records}
    for model, depth, tag, seed in runs:
        records.append(
            finetune(model, depth, tag, seed, starts[model], args, log))
        done += 1
        log(f'{done}/{total} done')

    summary = dict(
        command=' '.join(['.venv/bin/python', 'tools/camvid_experiment.py'] +
                         list(sys.argv[1:] if argv is None else argv)),
        date=datetime.datetime.now().isoformat(timespec='seconds'),
        wall_s=time.perf_counter() - wall_start,
        machine=dict(cpus=os.cpu_count(), threads=torch.get_num_threads(),
                     torch=torch.__version__, python=platform.python_version(),
                     platform=platform.platform()),
        git_commit=commit,
        args=dict(vars(args)),
        pretrain=pre_records,
        runs=records,
        pareto=osp.join(args.out, 'pareto.png'))
    pareto(summary, summary['pareto'])
    summary['pareto'] = rel(summary['pareto'])
    summary['wall_s'] = time.perf_counter() - wall_start
    with open(osp.join(args.out, 'results.md'), 'w') as f:
        f.write(markdown(summary))
    dump_json(summary, osp.join(args.out, 'results.json'))
    log(f'results: {rel(osp.join(args.out, "results.md"))}, '
        f'{rel(osp.join(args.out, "results.json"))}, {summary["pareto"]}')
    log(f'wall time {summary["wall_s"]:.0f} s '
        f'({summary["wall_s"] / 60:.1f} min)')
    return summary


if __name__ == '__main__':
    main()
