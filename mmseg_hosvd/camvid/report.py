"""Tables and plot of the CamVid experiment's results.

``summary`` is the dict the driver writes to ``results.json``: ``command``,
``date``, ``wall_s``, ``machine`` (cpus, threads, torch), ``args``,
``pretrain`` (records of the starting checkpoints), ``runs`` (records of
the fine-tuning runs) and ``pareto`` (the plot's path).
"""
import math
import statistics
from typing import Dict, List, Sequence

from .configs import MODELS

#: plot colours per method tag
COLOURS = {
    'vanilla': 'tab:gray',
    'gradient-filter': 'tab:orange',
    'svd-eps0.8': 'tab:green',
    'hosvd-eps0.8': 'tab:blue',
    'hosvd-eps0.9': 'tab:purple',
    'asi-eps0.8': 'tab:red',
    'hosvd-eps0.8-lean-all': 'tab:cyan',
}
MARKERS = {'5l': 'o', '10l': 's'}


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


def table(header: Sequence[str], rows: List[list]) -> str:
    """A github markdown table (``tabulate``), cells as given (text)."""
    from tabulate import tabulate
    return tabulate(rows, headers=list(header), tablefmt='github',
                    disable_numparse=True)


def mean_rows(summary: dict) -> List[list]:
    """The "mean over seeds" table's rows: per (model, depth, method), then
    one per starting checkpoint."""
    pre = summary['pretrain']
    runs = summary['runs']
    rows = []
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
        rows.append([
            rs[0]['label'], depth.upper(), tag, len(rs), spread(miou),
            ('%+.2f' % delta) if delta is not None else '-',
            spread([r['val']['mIoU'] for r in rs]), fmt_mib(mem),
            ('%.1fx' % ratio) if ratio else '-',
            fmt_mib(mean(saved)) if saved else '-',
            fmt(mean([r['step_time_s'] for r in rs]))
        ])
    for r in pre:
        rows.append([r['label'], '-', 'pretrained, not fine-tuned', '-',
                     fmt(r['target_val']['mIoU']), '-',
                     fmt(r['val']['mIoU']), '-', '-', '-', '-'])
    return rows


def markdown(summary: dict) -> str:
    """``results.md``: the starting checkpoints, every fine-tuning run and
    the means over seeds."""
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
        table(['model', 'config', 'iterations', 'seed', 'mIoU target_val',
               'mIoU val', 'step time (s)', 'checkpoint', 'sha256'],
              [[r['label'], f'`{r["config"]}`', r['iters'], r['seed'],
                fmt(r['target_val']['mIoU']), fmt(r['val']['mIoU']),
                fmt(r['step_time_s']), f'`{r["start_checkpoint"]}`',
                f'`{r["sha256"][:12]}`'] for r in pre]),
        '',
        '## Fine-tuning on target_train, every run',
        '',
        'mIoU/mAcc in %; act mem: the paper\'s count of the compressed '
        'layers\' saved inputs (fp32, MiB), peak and mean over all '
        'training iterations; whole-step saved: every tensor autograd '
        'saves for one training step (each storage once, parameters '
        'apart), mean over the profiled iterations; step time: median '
        'forward + backward + clipping and SGD step of `train_step`, data '
        'loading and preprocessing excluded.',
        '',
        table(['model', 'depth', 'method', 'eps', 'seed', 'mIoU target_val',
               'mAcc target_val', 'mIoU val', 'act mem peak (MiB)',
               'act mem mean (MiB)', 'whole-step saved (MiB)',
               'step time (s)'],
              [[r['label'], r['depth'].upper(), r['method'],
                fmt(r['eps'], 1) if r['eps'] is not None else '-',
                r['seed'], fmt(r['target_val']['mIoU']),
                fmt(r['target_val']['mAcc']), fmt(r['val']['mIoU']),
                fmt_mib(r['act_mem_peak_mib']),
                fmt_mib(r['act_mem_mean_mib']),
                fmt_mib(r['step_saved_mib']), fmt(r['step_time_s'])]
               for r in runs]),
        '',
        '## Mean over seeds',
        '',
        'mean ± half the range over the seeds (10L: '
        f'{len(summary["args"]["seeds"])} seeds); Δ: difference to vanilla '
        'at the same depth (mIoU points on target_val); act mem ratio: '
        'vanilla\'s mean activation memory / the method\'s.',
        '',
    ]
    rows = mean_rows(summary)
    lines += [
        table(['model', 'depth', 'method', 'seeds', 'mIoU target_val',
               'Δ vanilla', 'mIoU val', 'act mem mean (MiB)',
               'act mem ratio', 'whole-step saved (MiB)', 'step time (s)'],
              rows), '', f'Plot: `{summary["pareto"]}`', ''
    ]
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
    # at most 4 entries per legend row, so that narrow figures keep them all
    ncol = min(len(handles), 4)
    rows = -(-len(handles) // ncol)
    fig.legend(handles=handles, loc='lower center', ncol=ncol,
               fontsize=8, frameon=False)
    fig.tight_layout(rect=(0, 0.05 * rows + 0.03, 1, 1))
    fig.savefig(path, dpi=120, bbox_inches='tight')
    plt.close(fig)
