"""The decomposition benchmark (tools/benchmark_decomposition.py, run
through :mod:`mmseg_hosvd.bench.decomposition`) on a small input: the rows
it returns and the table it prints."""
import re

import pytest
import torch

from mmseg_hosvd.bench.decomposition import (NOISE, decomposition_rows,
                                             decomposition_table,
                                             describe_input,
                                             low_rank_plus_noise,
                                             parse_decomposition_args)
from mmseg_hosvd.ops import hosvd, hosvd_paper_elements

pytestmark = pytest.mark.usefixtures('single_thread')

SHAPE = (2, 16, 8, 8)
RANKS = (2, 4, 3, 3)


def test_rows_and_table():
    args = parse_decomposition_args(
        ['--shape', *map(str, SHAPE), '--ranks', *map(str, RANKS),
         '--repeats', '1', '--threads', '1'])
    assert (args.shape, args.ranks, args.repeats) == (SHAPE, RANKS, 1)
    rows = decomposition_rows(args.shape, args.ranks, args.repeats,
                              args.seed)
    assert [r['operation'] for r in rows] == [
        'hosvd(x, 0.8)', 'truncated_svd(x, 0.8)',
        'conv2d 3x3 16->16 pad 1, forward',
        '4x torch.linalg.svd(unfolding, full_matrices=False)'
    ]
    assert all(r['ms'] > 0 for r in rows)
    assert rows[0]['vs_hosvd'] == 1
    for row in rows:
        assert row['vs_hosvd'] == pytest.approx(row['ms'] / rows[0]['ms'])
    # the ranks and byte ratio printed are those of the same input
    x = low_rank_plus_noise(SHAPE, RANKS, NOISE, 0)
    ranks = tuple(hosvd(x, 0.8).ranks)
    ratio = 4 * hosvd_paper_elements(SHAPE, ranks) / (x.numel() * 4)
    assert rows[0]['result'] == f'ranks {ranks}, kept/input {ratio:.5f}'
    assert 'unfoldings (2, 1024), (16, 128), (8, 256), (8, 256)' in rows[3][
        'result']
    assert describe_input(SHAPE, RANKS).startswith(f'input {SHAPE} float32')
    assert f'threads {torch.get_num_threads()}' in describe_input(SHAPE,
                                                                  RANKS)
    table = decomposition_table(rows).splitlines()
    assert len(table) == 2 + 4
    assert re.match(r'\| operation +\| +median time \(ms\) \| +vs hosvd \|',
                    table[0])
    assert re.search(r'\| hosvd\(x, 0\.8\) +\| +[\d.]+ \| +1\.00x \|',
                     table[2])


def test_rejects_ranks_above_the_mode_size(capsys):
    with pytest.raises(SystemExit):
        parse_decomposition_args(['--shape', '2', '4', '4', '4', '--ranks',
                                  '1', '5', '1', '1'])
    assert '--ranks (1, 5, 1, 1)' in capsys.readouterr().err
