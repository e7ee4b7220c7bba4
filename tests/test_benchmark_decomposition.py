"""tools/benchmark_decomposition.py on a small input: the rows it returns
and the table it prints."""
import re

import pytest

import benchmark_decomposition as bd  # tools/ is on sys.path (conftest)
from mmseg_hosvd.ops import hosvd, hosvd_paper_elements

pytestmark = pytest.mark.usefixtures('single_thread')

SHAPE = (2, 16, 8, 8)
RANKS = (2, 4, 3, 3)


def test_rows_and_table(capsys):
    rows = bd.main(['--shape', *map(str, SHAPE), '--ranks', *map(str, RANKS),
                    '--repeats', '1', '--threads', '1'])
    out = capsys.readouterr().out
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
    x = bd.low_rank_plus_noise(SHAPE, RANKS, bd.NOISE, 0)
    ranks = tuple(hosvd(x, 0.8).ranks)
    ratio = 4 * hosvd_paper_elements(SHAPE, ranks) / (x.numel() * 4)
    assert rows[0]['result'] == f'ranks {ranks}, kept/input {ratio:.5f}'
    assert 'unfoldings (2, 1024), (16, 128), (8, 256), (8, 256)' in rows[3][
        'result']
    assert out.startswith(f'input {SHAPE} float32')
    table = [line for line in out.splitlines() if line.startswith('|')]
    assert len(table) == 2 + 4
    assert re.match(r'\| operation +\| +median time \(ms\) \| +vs hosvd \|',
                    table[0])
    assert re.search(r'\| hosvd\(x, 0\.8\) +\| +[\d.]+ \| +1\.00x \|',
                     table[2])


def test_rejects_ranks_above_the_mode_size(capsys):
    with pytest.raises(SystemExit):
        bd.main(['--shape', '2', '4', '4', '4', '--ranks', '1', '5', '1',
                 '1'])
    assert '--ranks (1, 5, 1, 1)' in capsys.readouterr().err
