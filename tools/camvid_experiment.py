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
   (forward + backward + optimizer step of ``model.train_step``, measured
   by :class:`mmseg_hosvd.bench.StepProbeHook`; data loading and
   preprocessing excluded).

Writes ``<out>/results.json``, ``<out>/results.md`` (markdown tables) and
``<out>/pareto.png`` (activation memory, log scale, against target_val mIoU;
one marker per depth, one colour per method), and prints its wall time.
Finished runs (``<work_dir>/result.json``) are reused unless ``--force``.

Usage (from the repository root)::

    .venv/bin/python tools/camvid_experiment.py            # the full run
    .venv/bin/python tools/camvid_experiment.py --smoke    # seconds

The full run trains in-process, one run after the other, with
``torch.set_num_threads(--threads)``; every run shows a progress bar with
its iterations and ETA on stderr, also with ``--quiet``. The pieces (config
editing, runs, evaluation, provenance, tables, plot) are in
:mod:`mmseg_hosvd.camvid`; the gradient check is
``tools/camvid_grad_check.py``.
"""
import argparse
import datetime
import os
import os.path as osp
import platform
import shutil
import sys
import time
from typing import List, Optional, Sequence

REPO = osp.dirname(osp.dirname(osp.abspath(__file__)))
if REPO not in sys.path:
    sys.path.insert(0, REPO)

from mmseg_hosvd.camvid import (DEFAULT_OUT, METHODS, MODELS, SMOKE,  # noqa: E402
                                add_selection_arguments, resolve_data_root,
                                SPLITS, dump_json, eval_cfg, evaluate,
                                finetune_config, git_commit, load_json,
                                markdown, pareto, pretrain_config, rel,
                                run_cfg, sha256, stem, train)

CONFIGS = osp.join(REPO, 'configs', 'camvid')
DEFAULT_SMOKE_OUT = osp.join('work_dirs', 'camvid_experiment_smoke')


# ---------------------------------------------------------------------------
# command line
# ---------------------------------------------------------------------------
def parse_args(argv: Optional[Sequence[str]] = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        description=__doc__.split('\n')[0],
        formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    add_selection_arguments(parser)
    parser.add_argument('--methods', nargs='+', choices=list(METHODS),
                        default=list(METHODS))
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
    args = parser.parse_args(argv)

    args.models = list(dict.fromkeys(args.models))
    args.depths = list(dict.fromkeys(args.depths))
    args.methods = list(dict.fromkeys(args.methods))
    args.seeds = list(dict.fromkeys(args.seeds))
    if not 0 <= args.seeds_5l <= len(args.seeds):
        parser.error(f'--seeds-5l must be in [0, {len(args.seeds)}]')
    for name, least in (('pretrain_iters', 2), ('finetune_iters', 2),
                        ('profile_iters', 1), ('threads', 1)):
        value = getattr(args, name)
        if value is not None and value < least:
            parser.error(f'--{name.replace("_", "-")} must be >= {least}')
    if args.out is None:
        args.out = DEFAULT_SMOKE_OUT if args.smoke else DEFAULT_OUT
    args.out = osp.abspath(osp.join(REPO, args.out))
    args.data_root = resolve_data_root(parser, args.data_root, REPO)
    return args


# ---------------------------------------------------------------------------
# the experiment
# ---------------------------------------------------------------------------
def _rel(path: Optional[str]) -> Optional[str]:
    return rel(path, REPO)


def _config(find, *args) -> str:
    try:
        return find(CONFIGS, *args)
    except FileNotFoundError as error:
        raise SystemExit(str(error)) from None


def _train(cfg, args, desc: str) -> dict:
    return train(cfg, profile_iters=args.profile_iters, quiet=args.quiet,
                 desc=desc)


def _evaluate(config: str, checkpoint: str, split: str, work_dir: str,
              args) -> dict:
    return evaluate(eval_cfg(config, checkpoint, split, work_dir),
                    quiet=args.quiet)


def pretrain(model: str, args, log) -> dict:
    """Pretrain ``model`` on source_train (or reuse its checkpoint) and
    evaluate it; returns its record."""
    config = _config(pretrain_config, model)
    name = stem(config)
    ckpt_dir = osp.join(args.out, 'checkpoints')
    os.makedirs(ckpt_dir, exist_ok=True)
    start_ckpt = osp.join(ckpt_dir, f'{name}.pth')
    work_dir = osp.join(args.out, 'pretrain', name)
    record_path = osp.join(work_dir, 'result.json')
    if osp.isfile(start_ckpt) and osp.isfile(record_path) and \
            not args.force:
        record = load_json(record_path)
        log(f'[pretrain] {model}: reusing {_rel(start_ckpt)}')
        return record
    if osp.isdir(work_dir):
        shutil.rmtree(work_dir)
    log(f'[pretrain] {model}: {_rel(config)}')
    import torch
    cfg = run_cfg(config, args.data_root, work_dir, args.pretrain_seed,
                  args.pretrain_iters, smoke=args.smoke)
    trained = _train(cfg, args, f'pretrain {model}')
    # the starting checkpoint: weights and provenance only
    state = torch.load(trained['checkpoint'], map_location='cpu',
                       weights_only=True)
    provenance = dict(
        config=_rel(config),
        trained_by='tools/camvid_experiment.py',
        data='source_train',
        iters=int(trained['iters']),
        seed=int(args.pretrain_seed),
        init='random (no pretrained weights)',
        git_commit=git_commit(REPO) or '',
        date=datetime.datetime.now().isoformat(timespec='seconds'))
    torch.save(dict(state_dict=state['state_dict'],
                    meta=dict(provenance=provenance)), start_ckpt)
    record = dict(kind='pretrain', model=model, label=MODELS[model][2],
                  config=_rel(config), work_dir=_rel(work_dir),
                  start_checkpoint=_rel(start_ckpt),
                  sha256=sha256(start_ckpt), seed=args.pretrain_seed,
                  iters=trained['iters'], step_time_s=trained['step_time_s'],
                  step_saved_mib=trained['step_saved_mib'],
                  train_wall_s=trained['train_wall_s'],
                  run_checkpoint=_rel(trained['checkpoint']),
                  dumped_config=_rel(trained['config']),
                  provenance=provenance)
    start = time.perf_counter()
    for split in SPLITS:
        metrics = _evaluate(trained['config'], start_ckpt, split,
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
    config = _config(finetune_config, model, depth, tag)
    name = f'{stem(config)}_seed{seed}'
    work_dir = osp.join(args.out, 'runs', name)
    record_path = osp.join(work_dir, 'result.json')
    if osp.isfile(record_path) and not args.force:
        record = load_json(record_path)
        if record.get('start_checkpoint') == _rel(start_ckpt):
            log(f'[finetune] {name}: reusing {_rel(record_path)}')
            return record
    if osp.isdir(work_dir):
        shutil.rmtree(work_dir)
    log(f'[finetune] {name}')
    cfg = run_cfg(config, args.data_root, work_dir, seed,
                  args.finetune_iters, smoke=args.smoke)
    cfg.load_from = start_ckpt
    trained = _train(cfg, args, name)
    memory = load_json(osp.join(work_dir, 'activation_memory.json'))
    total = memory['total']
    method, eps = METHODS[tag]
    record = dict(
        kind='finetune', model=model, label=MODELS[model][2], depth=depth,
        tag=tag, method=method, eps=eps, seed=seed, config=_rel(config),
        work_dir=_rel(work_dir), checkpoint=_rel(trained['checkpoint']),
        dumped_config=_rel(trained['config']),
        start_checkpoint=_rel(start_ckpt), iters=trained['iters'],
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
        record[split] = _evaluate(trained['config'], trained['checkpoint'],
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


def main(argv: Optional[Sequence[str]] = None) -> dict:
    wall_start = time.perf_counter()
    commit = git_commit(REPO)  # the code this run starts with
    args = parse_args(argv)
    import torch
    torch.set_num_threads(args.threads)
    import mmseg_hosvd.engine  # noqa: F401  (mmcv.ops fallback, hooks)
    from mmseg.utils import register_all_modules
    register_all_modules()
    os.makedirs(args.out, exist_ok=True)
    runs = plan(args)
    total = len(args.models) + len(runs)

    def log(message: str) -> None:
        elapsed = time.perf_counter() - wall_start
        print(f'[camvid {elapsed / 60:6.1f} min] {message}', flush=True)

    log(f'{len(args.models)} pretraining(s), {len(runs)} fine-tune(s) -> '
        f'{_rel(args.out)}; methods {", ".join(args.methods)}')
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
    summary['pareto'] = _rel(summary['pareto'])
    summary['wall_s'] = time.perf_counter() - wall_start
    with open(osp.join(args.out, 'results.md'), 'w') as f:
        f.write(markdown(summary))
    dump_json(summary, osp.join(args.out, 'results.json'))
    log(f'results: {_rel(osp.join(args.out, "results.md"))}, '
        f'{_rel(osp.join(args.out, "results.json"))}, {summary["pareto"]}')
    log(f'wall time {summary["wall_s"]:.0f} s '
        f'({summary["wall_s"] / 60:.1f} min)')
    return summary


if __name__ == '__main__':
    main()
