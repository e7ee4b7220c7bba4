"""The CamVid daytime -> dusk experiment (``tools/camvid_experiment.py``):
pretraining, fine-tuning runs, their evaluation and the summary.

1. Pretrains each model from scratch on ``source_train`` (or reuses
   ``<out>/checkpoints/<pretrain config>.pth``, unless ``force``).
2. From that checkpoint, fine-tunes each (depth, method, seed) of
   :func:`plan` on ``target_train``, one work_dir per run.
3. Evaluates every checkpoint on ``target_val`` and ``val`` with a fresh
   Runner built from the config dumped in the run's work_dir (what ``mim
   test`` does).

Every path is taken relative to ``repo`` (the repository root): the
configs under ``configs/camvid``, and the paths of the records.
"""
import datetime
import os
import os.path as osp
import platform
import shutil
import time
from typing import Callable, List, Optional, Sequence

from .configs import (METHODS, MODELS, SPLITS, eval_cfg, finetune_config,
                      pretrain_config, run_cfg, stem)
from .report import markdown, pareto
from .runs import dump_json, evaluate, git_commit, load_json, rel, sha256, \
    train

Log = Callable[[str], None]


class Experiment:
    """One experiment run: its arguments, repository and log.

    Args:
        args: the parsed command line
            (:func:`~.arguments.parse_experiment_args`).
        repo: the repository root.
        log: where progress lines go.
    """

    def __init__(self, args, repo: str, log: Log) -> None:
        self.args = args
        self.repo = repo
        self.configs = osp.join(repo, 'configs', 'camvid')
        self.log = log

    def rel(self, path: Optional[str]) -> Optional[str]:
        """``path`` relative to the repository (absolute outside it)."""
        return rel(path, self.repo)

    def config(self, find, *args) -> str:
        try:
            return find(self.configs, *args)
        except FileNotFoundError as error:
            raise SystemExit(str(error)) from None

    def train(self, cfg, desc: str) -> dict:
        return train(cfg, profile_iters=self.args.profile_iters,
                     quiet=self.args.quiet, desc=desc)

    def evaluate(self, config: str, checkpoint: str, work_dir: str) -> dict:
        """Metrics per split of :data:`~.configs.SPLITS`, and
        ``eval_wall_s``."""
        start = time.perf_counter()
        record = {
            split: evaluate(eval_cfg(config, checkpoint, split,
                                     osp.join(work_dir, f'eval_{split}')),
                            quiet=self.args.quiet)
            for split in SPLITS
        }
        record['eval_wall_s'] = time.perf_counter() - start
        return record

    def start_checkpoint(self, trained: dict, config: str,
                         path: str) -> dict:
        """Save the trained weights and their provenance at ``path``;
        returns the provenance."""
        import torch
        state = torch.load(trained['checkpoint'], map_location='cpu',
                           weights_only=True)
        provenance = dict(
            config=self.rel(config),
            trained_by='tools/camvid_experiment.py',
            data='source_train',
            iters=int(trained['iters']),
            seed=int(self.args.pretrain_seed),
            init='random (no pretrained weights)',
            git_commit=git_commit(self.repo) or '',
            date=datetime.datetime.now().isoformat(timespec='seconds'))
        torch.save(dict(state_dict=state['state_dict'],
                        meta=dict(provenance=provenance)), path)
        return provenance

    def pretrain(self, model: str) -> dict:
        """Pretrain ``model`` on source_train (or reuse its checkpoint) and
        evaluate it; returns its record."""
        args = self.args
        config = self.config(pretrain_config, model)
        name = stem(config)
        os.makedirs(osp.join(args.out, 'checkpoints'), exist_ok=True)
        start_ckpt = osp.join(args.out, 'checkpoints', f'{name}.pth')
        work_dir = osp.join(args.out, 'pretrain', name)
        record_path = osp.join(work_dir, 'result.json')
        if osp.isfile(start_ckpt) and osp.isfile(record_path) and \
                not args.force:
            self.log(f'[pretrain] {model}: reusing {self.rel(start_ckpt)}')
            return load_json(record_path)
        if osp.isdir(work_dir):
            shutil.rmtree(work_dir)
        self.log(f'[pretrain] {model}: {self.rel(config)}')
        cfg = run_cfg(config, args.data_root, work_dir, args.pretrain_seed,
                      args.pretrain_iters, smoke=args.smoke)
        trained = self.train(cfg, f'pretrain {model}')
        provenance = self.start_checkpoint(trained, config, start_ckpt)
        record = dict(
            kind='pretrain', model=model, label=MODELS[model][2],
            config=self.rel(config), work_dir=self.rel(work_dir),
            start_checkpoint=self.rel(start_ckpt), sha256=sha256(start_ckpt),
            seed=args.pretrain_seed, iters=trained['iters'],
            step_time_s=trained['step_time_s'],
            step_saved_mib=trained['step_saved_mib'],
            train_wall_s=trained['train_wall_s'],
            run_checkpoint=self.rel(trained['checkpoint']),
            dumped_config=self.rel(trained['config']),
            provenance=provenance)
        record.update(self.evaluate(trained['config'], start_ckpt, work_dir))
        dump_json(record, record_path)
        self.log(f'[pretrain] {model}: mIoU target_val '
                 f'{record["target_val"]["mIoU"]:.2f}, val '
                 f'{record["val"]["mIoU"]:.2f} '
                 f'({record["train_wall_s"]:.0f} s train)')
        return record

    def finetune(self, model: str, depth: str, tag: str, seed: int,
                 start_ckpt: str) -> dict:
        """Fine-tune one run from ``start_ckpt`` (or reuse its record) and
        evaluate it; returns its record."""
        args = self.args
        config = self.config(finetune_config, model, depth, tag)
        name = f'{stem(config)}_seed{seed}'
        if args.micro_batch is not None:
            name += f'_micro{args.micro_batch}'
        work_dir = osp.join(args.out, 'runs', name)
        record_path = osp.join(work_dir, 'result.json')
        if osp.isfile(record_path) and not args.force:
            record = load_json(record_path)
            if record.get('start_checkpoint') == self.rel(start_ckpt):
                self.log(f'[finetune] {name}: reusing '
                         f'{self.rel(record_path)}')
                return record
        if osp.isdir(work_dir):
            shutil.rmtree(work_dir)
        self.log(f'[finetune] {name}')
        cfg = run_cfg(config, args.data_root, work_dir, seed,
                      args.finetune_iters, smoke=args.smoke,
                      micro_batch=args.micro_batch)
        cfg.load_from = start_ckpt
        trained = self.train(cfg, name)
        record = self.finetune_record(model, depth, tag, seed, config,
                                      work_dir, start_ckpt, trained)
        record.update(self.evaluate(trained['config'], trained['checkpoint'],
                                    work_dir))
        dump_json(record, record_path)
        self.log(
            f'[finetune] {name}: mIoU target_val '
            f'{record["target_val"]["mIoU"]:.2f}, val '
            f'{record["val"]["mIoU"]:.2f}, act mem '
            f'{record["act_mem_mean_mib"]:.3g} MiB, step '
            f'{record["step_time_s"]:.2f} s ({record["train_wall_s"]:.0f} s '
            f'train, {record["eval_wall_s"]:.0f} s eval)')
        return record

    def finetune_record(self, model: str, depth: str, tag: str, seed: int,
                        config: str, work_dir: str, start_ckpt: str,
                        trained: dict) -> dict:
        """A fine-tuning run's record before evaluation: activation memory
        (MiB) from its ``activation_memory.json``, step measurements."""
        memory = load_json(osp.join(work_dir, 'activation_memory.json'))
        total = memory['total']
        method, eps = METHODS[tag]
        return dict(
            kind='finetune', model=model, label=MODELS[model][2],
            depth=depth, tag=tag, method=method, eps=eps, seed=seed,
            micro_batch=self.args.micro_batch,
            config=self.rel(config), work_dir=self.rel(work_dir),
            checkpoint=self.rel(trained['checkpoint']),
            dumped_config=self.rel(trained['config']),
            start_checkpoint=self.rel(start_ckpt), iters=trained['iters'],
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


def plan(args) -> List[tuple]:
    """``(model, depth, tag, seed)`` of every fine-tuning run: 5L with the
    first ``seeds_5l`` seeds, 10L with all."""
    runs = []
    for model in args.models:
        for depth in args.depths:
            seeds = args.seeds[:args.seeds_5l] if depth == '5l' \
                else args.seeds
            for tag in args.methods:
                for seed in seeds:
                    runs.append((model, depth, tag, seed))
    return runs


def run_experiment(args, repo: str, log: Log,
                   argv: Sequence[str] = ()) -> dict:
    """The whole experiment; writes ``results.json``, ``results.md`` and
    ``pareto.png`` to ``args.out`` and returns the summary (``argv``: the
    command line, recorded)."""
    wall_start = time.perf_counter()
    commit = git_commit(repo)  # the code this run starts with
    import torch
    torch.set_num_threads(args.threads)
    from mmseg.utils import register_all_modules
    register_all_modules()
    os.makedirs(args.out, exist_ok=True)
    experiment = Experiment(args, repo, log)
    runs = plan(args)
    log(f'{len(args.models)} pretraining(s), {len(runs)} fine-tune(s) -> '
        f'{experiment.rel(args.out)}; methods {", ".join(args.methods)}')
    pre_records = [experiment.pretrain(model) for model in args.models]
    starts = {r['model']: osp.join(repo, r['start_checkpoint'])
              for r in pre_records}  # join keeps an absolute path
    records = []
    for model, depth, tag, seed in runs:
        records.append(
            experiment.finetune(model, depth, tag, seed, starts[model]))
        log(f'{len(args.models) + len(records)}/'
            f'{len(args.models) + len(runs)} done')
    summary = dict(
        command=' '.join(['.venv/bin/python', 'tools/camvid_experiment.py'] +
                         list(argv)),
        date=datetime.datetime.now().isoformat(timespec='seconds'),
        wall_s=time.perf_counter() - wall_start,
        machine=dict(cpus=os.cpu_count(), threads=torch.get_num_threads(),
                     torch=torch.__version__, python=platform.python_version(),
                     platform=platform.platform()),
        git_commit=commit, args=dict(vars(args)), pretrain=pre_records,
        runs=records, pareto=osp.join(args.out, 'pareto.png'))
    pareto(summary, summary['pareto'])
    summary['pareto'] = experiment.rel(summary['pareto'])
    summary['wall_s'] = time.perf_counter() - wall_start
    with open(osp.join(args.out, 'results.md'), 'w') as f:
        f.write(markdown(summary))
    dump_json(summary, osp.join(args.out, 'results.json'))
    return summary
