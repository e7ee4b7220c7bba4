"""Reports of the memory benchmark: breakdown groups, markdown table, CSV
rows and the bar plot of ``tools/benchmark_memory.py`` records.

A record is the dict one benchmark row writes to ``results.json``; sizes
are in MiB (2**20 bytes), times in seconds.
"""
import csv
import json
import math
from typing import Dict, Optional, Sequence

from ..ops import COMPRESSED_BACKWARD_NODES, LINEAR_BACKWARD_NODES
from .rows import DEFAULT_LEAN_BACKWARD

#: autograd nodes of the plugin's compressed convs and linears
COMPRESSED_NODES = tuple(COMPRESSED_BACKWARD_NODES)
#: those of the compressed linears
COMPRESSED_LINEAR_NODES = tuple(LINEAR_BACKWARD_NODES)
#: their saved weight (the Parameter for HOSVD/SVD and for the dilated
#: Gradient Filter, else a per-step tensor: the Gradient Filter's
#: kernel-summed weight, or the BN-folded weight of ``lean_backward``)
COMPRESSED_WEIGHTS = tuple(
    f'{node}.saved_tensors[{index}]'
    for node, index in COMPRESSED_BACKWARD_NODES.items())


def _op(key: str) -> str:
    return key.split('.', 1)[0]


def _compressed_factor(key: str, nodes: tuple) -> bool:
    return _op(key) in nodes and key not in COMPRESSED_WEIGHTS


#: coarse groups of the whole-step breakdown, matched in order on the
#: ``'<node name>.<attribute>'`` keys of ``GraphBreakdown.by_saved``:
#: (group, column label, predicate). Transformer ops: ``attention`` is what
#: the attention keeps (softmax probabilities, and q, k, v saved by the
#: products ``q @ k^T`` and ``attn @ v`` or by fused attention kernels; a
#: loss built on a plain softmax would count there too), ``linear`` the
#: inputs kept by plain (uncompressed) linears, ``layer_norm`` and
#: ``gelu`` the inputs of those ops, ``dropout_mask`` dropout masks
#: (``nn.Dropout``'s own on CUDA, the 1-bit masks of ``lean_backward``; on
#: the CPU ``F.dropout`` keeps a float mask as a ``MulBackward0``: other).
OP_GROUPS = (
    ('conv', 'conv inputs', lambda k: _op(k).startswith('Convolution')),
    ('bn', 'BN inputs', lambda k: 'BatchNorm' in _op(k)),
    ('layer_norm', 'LayerNorm inputs', lambda k: 'LayerNorm' in _op(k)),
    ('gelu', 'GELU inputs', lambda k: _op(k).startswith('Gelu')),
    ('relu', 'ReLU outputs', lambda k: _op(k).startswith(
        ('Relu', 'Hardtanh', 'Threshold', 'LeakyRelu'))),
    ('relu_mask', 'ReLU 1-bit masks', lambda k: _op(k).startswith(
        '_MaskedClampBackward')),
    ('dropout_mask', 'dropout masks', lambda k: _op(k).startswith(
        ('NativeDropout', '_MaskedDropoutBackward'))),
    ('attention', 'attention (softmax, q/k/v)', lambda k: _op(k).startswith(
        ('Softmax', 'Bmm', 'Baddbmm', 'ScaledDotProduct'))),
    ('linear', 'linear inputs', lambda k: _op(k).startswith(
        ('Addmm', 'MmBackward', 'LinearBackward'))),
    ('compressed', 'compressed conv factors',
     lambda k: _compressed_factor(k, tuple(
         n for n in COMPRESSED_NODES if n not in COMPRESSED_LINEAR_NODES))),
    ('compressed_linear', 'compressed linear factors',
     lambda k: _compressed_factor(k, COMPRESSED_LINEAR_NODES)),
    ('weight_sums', 'step weights', lambda k: k in COMPRESSED_WEIGHTS),
    ('loss', 'loss', lambda k: _op(k).startswith(
        ('LogSoftmax', 'NllLoss', 'CrossEntropy', 'ResizeCrossEntropy'))),
    ('other', 'other', lambda k: True),
)


def op_group(key: str) -> str:
    """Coarse group of a ``'<node name>.<attribute>'`` key (see
    :data:`OP_GROUPS`)."""
    for group, _, matches in OP_GROUPS:
        if matches(key):
            return group
    return 'other'


def group_shares(by_saved: Dict[str, float]) -> Dict[str, float]:
    """Sum ``by_saved`` (MiB by saved key) into the :data:`OP_GROUPS`."""
    groups = {group: 0.0 for group, _, _ in OP_GROUPS}
    for key, mib in by_saved.items():
        groups[op_group(key)] += mib
    return groups


def method_label(record: dict) -> str:
    """``'hosvd eps=0.8, lean all, lean loss, amp'``: the method and the
    variant flags a record ran with (``lean_backward='off'``, no lean loss
    and no amp left out; a record without ``lean_backward`` ran with the
    hook's default, :data:`~.rows.DEFAULT_LEAN_BACKWARD`)."""
    label = record['method']
    if record.get('eps') is not None:
        label += f" eps={record['eps']:g}"
    lean = record.get('lean_backward', DEFAULT_LEAN_BACKWARD)
    if lean != 'off':
        label += f', lean {lean}'
    if record.get('lean_loss'):
        label += ', lean loss'
    if record.get('amp'):
        label += ', amp'
    for key, value in dict(record.get('options') or {}).items():
        label += f', {key}' if value is True else f', {key}={value}'
    micro = record.get('micro_batch')
    if micro is not None and micro != record.get('batch'):
        label += f', micro-batch {micro}'
    return label


def fmt(value, digits: int = 2) -> str:
    """A table cell: ``'-'`` for None/NaN, ``digits`` decimals for floats
    (scientific notation below ``10**-digits``)."""
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
    """GitHub markdown table of ``records``, one row each; ``step peak
    MiB`` (the whole step's measured peak) beside ``step saved MiB``;
    ``time / first row``: the median over rounds of the row's step time
    over that of its table's first row in the same round."""
    from tabulate import tabulate
    cuda = any(r.get('cuda_peak_mib') is not None for r in records)
    header = [
        'model', 'setup', 'method', 'paper MiB mean', 'paper MiB peak',
        'kept MiB', 'step saved MiB', 'step peak MiB'
    ] + [label for group, label, _ in OP_GROUPS] + ['params saved MiB']
    if cuda:
        header.append('CUDA peak MiB')
    header += ['fwd s', 'bwd s', 'step s', 'time / first row']
    rows = []
    for r in records:
        row = [
            r['model'], r['setup'],
            method_label(r),
            fmt(r['activation_mib_mean']),
            fmt(r['activation_mib_peak']),
            fmt(r['kept_mib_mean']),
            fmt(r['step_saved_mib_mean'], 1),
            fmt(r.get('step_peak_mib'), 1)
        ] + [
            fmt(r['step_saved_groups_mib'][group], 1)
            for group, _, _ in OP_GROUPS
        ] + [fmt(r['step_saved_param_mib_mean'], 1)]
        if cuda:
            row.append(fmt(r.get('cuda_peak_mib'), 1))
        row += [
            fmt(r['forward_time_s_median']),
            fmt(r['backward_time_s_median']),
            fmt(r['step_time_s_median']),
            fmt(r.get('step_time_ratio_per_round'))
        ]
        rows.append(row)
    return tabulate(rows, headers=header, tablefmt='github',
                    disable_numparse=True,
                    colalign=['left'] * 3 + ['right'] * (len(header) - 3))


def comparison_table(records: Sequence[dict]) -> str:
    """GitHub markdown table comparing each record with the first record
    of its model and setup (a preset's first row, vanilla): step peak and
    whole-step saved MiB, their ratios, the floor (plain no-grad inference
    of one micro-batch) and the peak over it, and the per-round time
    ratio."""
    from tabulate import tabulate
    header = ['model', 'setup', 'row', 'step peak MiB', 'peak / first',
              'step saved MiB', 'saved / first', 'floor MiB',
              'peak / floor', 'time / first']
    firsts: dict = {}
    rows = []
    for r in records:
        first = firsts.setdefault((r['model'], r['setup']), r)
        rows.append([
            r['model'], r['setup'], method_label(r),
            fmt(r.get('step_peak_mib'), 1),
            fmt(r['step_peak_mib'] / first['step_peak_mib'], 3),
            fmt(r['step_saved_mib_mean'], 1),
            fmt(r['step_saved_mib_mean'] / first['step_saved_mib_mean'], 3),
            fmt(r.get('floor_mib'), 1),
            fmt(r.get('peak_over_floor'), 2),
            fmt(r.get('step_time_ratio_per_round'))
        ])
    return tabulate(rows, headers=header, tablefmt='github',
                    disable_numparse=True,
                    colalign=['left'] * 3 + ['right'] * (len(header) - 3))


def anatomy_table(records: Sequence[dict]) -> str:
    """GitHub markdown table of the records' ``peak_anatomy`` (those
    that have one): the peak's phase, module and op, and MiB live at it by
    group."""
    from tabulate import tabulate
    rows = [r for r in records if r.get('peak_anatomy')]
    groups = list(dict.fromkeys(
        g for r in rows for g in r['peak_anatomy']['groups_mib']))
    header = ['model', 'setup', 'row', 'peak MiB', 'phase', 'module',
              'op'] + groups
    table = []
    for r in rows:
        anatomy = r['peak_anatomy']
        table.append([
            r['model'], r['setup'], method_label(r),
            fmt(anatomy['peak_mib'], 1), anatomy['phase'],
            fmt(anatomy['module']), fmt(anatomy['op'])
        ] + [fmt(anatomy['groups_mib'].get(g), 1) for g in groups])
    return tabulate(table, headers=header, tablefmt='github',
                    disable_numparse=True)


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
    """``records`` as CSV rows (:func:`flatten`) at ``path``."""
    rows = [flatten(r) for r in records]
    fields = list(dict.fromkeys(k for row in rows for k in row))
    with open(path, 'w', newline='') as f:
        writer = csv.DictWriter(f, fieldnames=fields)
        writer.writeheader()
        writer.writerows(rows)


def _positive(values: Sequence[Optional[float]]) -> list:
    return [max(v, 1e-6) if v is not None else 0.0 for v in values]


def plot(records: Sequence[dict], path: str) -> None:
    """Grouped bars (log scale) per record: the paper count, the whole
    step's saved bytes and its measured peak."""
    import matplotlib
    matplotlib.use('Agg')
    import matplotlib.pyplot as plt
    import numpy as np

    labels = [
        f"{r['model']} {r['setup']}\n{method_label(r)}" for r in records
    ]
    bars = (
        ('paper count (compressed layers)',
         [r['activation_mib_mean'] for r in records]),
        ('whole step: saved by autograd (activations)',
         [r['step_saved_mib_mean'] for r in records]),
        ('whole step: peak allocated (forward, backward, optimizer)',
         [r.get('step_peak_mib') for r in records]),
    )
    x = np.arange(len(records))
    width = 0.8 / len(bars)
    fig, ax = plt.subplots(figsize=(max(7.0, 0.6 * len(records) + 2), 5.5))
    for index, (label, values) in enumerate(bars):
        ax.bar(x + (index - (len(bars) - 1) / 2) * width,
               _positive(values), width, label=label)
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
        f"Memory per training step: batch {first['batch']}, "
        f"crop {first['crop'][0]}x{first['crop'][1]}, {init}, "
        f"{first['data']} data",
        fontsize=10,
        pad=40)
    ax.set_xticks(x)
    ax.set_xticklabels(labels, rotation=90, fontsize=7)
    ax.set_xlim(-0.6, len(records) - 0.4)
    ax.legend(loc='lower center', bbox_to_anchor=(0.5, 1.0), ncol=2,
              fontsize=8, frameon=False)
    ax.grid(axis='y', which='both', alpha=0.3)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)
