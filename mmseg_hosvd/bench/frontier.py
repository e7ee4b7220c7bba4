"""Memory against time: the frontier of the memory benchmark's records.

A *configuration* is a record of ``tools/benchmark_memory.py`` (a method,
its variant flags and a micro-batch); a *family* is a configuration less
its micro-batch (:func:`family`). A family is *plain* when it uses nothing
of the plugin (vanilla or activation checkpointing, with or without mixed
precision, ``lean_backward='off'``, no lean loss), else it is the
plugin's (:func:`is_plugin`). For each model, :func:`frontier_plot` draws
every configuration at (step peak MiB, time per effective batch relative
to the table's first row) and each family's Pareto front;
:func:`budget_table` gives, per memory budget, the fastest configuration
that fits, plain against the plugin.
"""
from typing import Dict, Iterable, List, Optional, Sequence, Tuple

from .report import fmt, method_label
from .rows import CHECKPOINT

#: the "Which to pick" budgets (MiB)
BUDGETS_MIB = (128, 256, 512, 1024)
PLAIN_METHODS = ('vanilla', CHECKPOINT)


def family(record: dict) -> str:
    """The record's method and variant flags, without its micro-batch."""
    return method_label({**record, 'micro_batch': None})


def is_plugin(record: dict) -> bool:
    """Whether the record uses any of the plugin's compression or lean
    modes (else it is plain MMSegmentation / PyTorch)."""
    return (record['method'] not in PLAIN_METHODS
            or record.get('lean_backward', 'off') != 'off'
            or bool(record.get('lean_loss')) or bool(record.get('options')))


def _time(record: dict) -> Optional[float]:
    return record.get('step_time_ratio_per_round')


def pareto_front(records: Iterable[dict]) -> List[dict]:
    """The records no other record beats on both step peak and time (ties
    on peak: the faster), by increasing peak."""
    ordered = sorted((r for r in records if _time(r) is not None),
                     key=lambda r: (r['step_peak_mib'], _time(r)))
    front: List[dict] = []
    for record in ordered:
        if not front or _time(record) < _time(front[-1]):
            front.append(record)
    return front


def _by_model(records: Sequence[dict]) -> Dict[Tuple[str, str], List[dict]]:
    tables: Dict[Tuple[str, str], List[dict]] = {}
    for record in records:
        tables.setdefault((record['model'], record['setup']),
                          []).append(record)
    return tables


def fastest_fitting(records: Iterable[dict],
                    budget_mib: float) -> Optional[dict]:
    """The fastest record whose step peak is at most ``budget_mib``."""
    fitting = [r for r in records
               if r['step_peak_mib'] <= budget_mib and _time(r) is not None]
    return min(fitting, key=_time, default=None)


def _cell(record: Optional[dict]) -> str:
    if record is None:
        return 'none fits'
    return (f"{method_label(record)} ({fmt(record['step_peak_mib'], 1)} "
            f"MiB, x{fmt(_time(record))})")


def budget_table(records: Sequence[dict],
                 budgets: Sequence[float] = BUDGETS_MIB) -> str:
    """GitHub markdown table: per model and budget (MiB of step peak), the
    fastest plain and the fastest plugin configuration that fit (label,
    peak, time relative to the table's first row) and which is faster."""
    from tabulate import tabulate
    rows = []
    for (model, setup), table in _by_model(records).items():
        plain = [r for r in table if not is_plugin(r)]
        plugin = [r for r in table if is_plugin(r)]
        for budget in budgets:
            best_plain = fastest_fitting(plain, budget)
            best_plugin = fastest_fitting(plugin, budget)
            if best_plugin is None:
                verdict = 'plain' if best_plain else '-'
            elif best_plain is None:
                verdict = 'plugin (only one that fits)'
            else:
                verdict = ('plugin' if _time(best_plugin) <= _time(best_plain)
                           else 'plain')
            rows.append([model, setup, f'{budget:g}', _cell(best_plain),
                         _cell(best_plugin), verdict])
    return tabulate(rows, headers=['model', 'setup', 'budget MiB',
                                   'fastest plain that fits',
                                   'fastest plugin that fits', 'faster'],
                    tablefmt='github', disable_numparse=True)


def frontier_plot(records: Sequence[dict], path: str) -> None:
    """One panel per model and setup: every configuration at (step peak
    MiB, log scale; time per effective batch / the table's first row),
    labelled with its micro-batch, each family's Pareto front as a line
    (plain families dashed), and the floor of the whole batch (plain
    no-grad inference) as a vertical line."""
    import matplotlib
    matplotlib.use('Agg')
    import matplotlib.pyplot as plt
    tables = _by_model(records)
    fig, axes = plt.subplots(1, len(tables), squeeze=False,
                             figsize=(6.5 * len(tables), 5.0))
    for ax, ((model, setup), table) in zip(axes[0], tables.items()):
        families: Dict[str, List[dict]] = {}
        for record in table:
            families.setdefault(family(record), []).append(record)
        for name, members in families.items():
            style = '-' if is_plugin(members[0]) else '--'
            points = [r for r in members if _time(r) is not None]
            line = ax.scatter([r['step_peak_mib'] for r in points],
                              [_time(r) for r in points], s=18, label=name)
            front = pareto_front(points)
            ax.plot([r['step_peak_mib'] for r in front],
                    [_time(r) for r in front], style,
                    color=line.get_facecolor()[0], linewidth=1)
            for r in points:
                ax.annotate(str(r.get('micro_batch') or r['batch']),
                            (r['step_peak_mib'], _time(r)), fontsize=6,
                            xytext=(2, 2), textcoords='offset points')
        whole = [r for r in table
                 if (r.get('micro_batch') or r['batch']) == r['batch']]
        if whole and whole[0].get('floor_mib'):
            ax.axvline(whole[0]['floor_mib'], color='grey', linewidth=0.8,
                       linestyle=':', label='floor: no-grad inference of '
                       'the batch')
        first = table[0]
        ax.set_xscale('log')
        ax.set_xlabel('step peak MiB (log scale)')
        ax.set_ylabel(f'time per effective batch / {family(first)}, '
                      f"micro-batch {first.get('micro_batch')}")
        ax.set_title(f"{model} {setup}: effective batch {first['batch']}, "
                     f"{first['crop'][0]}x{first['crop'][1]}, "
                     f"{first['init']} weights, {first['data']} data "
                     '(labels: micro-batch)', fontsize=8)
        ax.grid(alpha=0.3, which='both')
        ax.legend(fontsize=6)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)
