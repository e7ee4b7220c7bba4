"""tools/check_leaks.py: its verdict, and short real runs: on a generated
tree in the CamVid layout (always) and on CamVid itself (skipped without
``../shared/data/camvid_voc``). The 300-iteration check itself is run by
hand, see the tool's docstring."""
import mmap
import os.path as osp
import re
import subprocess
import sys

import pytest

from check_leaks import (RssSample, current_rss_mib, peak_rss_mib,
                         relative_growth, verdict)
from conftest import REPO

#: the real CamVid tree, relative to the repository root
CAMVID = osp.normpath(osp.join(REPO, '..', 'shared', 'data', 'camvid_voc'))

SAMPLE = re.compile(r'^after iteration (\d+): peak RSS ([\d.]+) MiB, '
                    r'current RSS ([\d.]+) MiB$', re.M)
GROWTH = re.compile(r'^peak RSS growth (\d+) -> (\d+): ([+-][\d.]+)% '
                    r'\(limit 5\.00%\): (OK|LEAK\?)$', re.M)


def test_verdict_at_the_threshold():
    first = RssSample(50, 1000.0, 900.0)
    assert relative_growth(1000.0, 1049.0) == pytest.approx(0.049)
    line, ok = verdict(first, RssSample(300, 1049.0, 950.0), 0.05)
    assert ok and line == ('peak RSS growth 50 -> 300: +4.90% '
                           '(limit 5.00%): OK')
    line, ok = verdict(first, RssSample(300, 1050.0, 950.0), 0.05)
    assert not ok and line.endswith('+5.00% (limit 5.00%): LEAK?')
    with pytest.raises(ValueError, match='positive'):
        relative_growth(0.0, 1.0)


def test_rss_readings_are_plausible():
    peak, current = peak_rss_mib(), current_rss_mib()
    assert 0 < current <= peak * 1.01  # both MiB; the peak bounds the rest
    # fresh anonymous pages, written, hence resident (a bytes object could
    # reuse heap pages that earlier tests left resident)
    size = 64 * 2**20
    ballast = mmap.mmap(-1, size)
    for offset in range(0, size, mmap.PAGESIZE):
        ballast[offset] = 1
    grown = current_rss_mib()
    assert grown > current + 48
    assert peak_rss_mib() >= grown - 1  # the peak bounds the current RSS
    ballast.close()


def short_run(tmp_path, data_root: str, iters: int, check_at: int):
    return subprocess.run([
        sys.executable,
        osp.join(REPO, 'tools', 'check_leaks.py'), '--iters',
        str(iters), '--check-at',
        str(check_at), '--crop', '48', '--batch-size', '2', '--work-dir',
        str(tmp_path), '--data-root', data_root
    ], capture_output=True, text=True, cwd=REPO, timeout=600)


@pytest.mark.skipif(not osp.isdir(CAMVID),
                    reason=f'CamVid (VOC layout) not found at {CAMVID}')
def test_short_run_on_camvid(tmp_path):
    result = short_run(tmp_path, CAMVID, 3, 1)
    assert result.returncode in (0, 1), result.stderr[-3000:]
    samples = SAMPLE.findall(result.stdout)
    assert [int(s[0]) for s in samples] == [1, 3], result.stdout
    assert GROWTH.search(result.stdout), result.stdout


def test_short_run_prints_both_figures(tmp_path, tiny_camvid):
    result = short_run(tmp_path, tiny_camvid, 12, 4)
    assert result.returncode in (0, 1), result.stderr[-3000:]
    samples = SAMPLE.findall(result.stdout)
    assert [int(s[0]) for s in samples] == [4, 12], result.stdout
    (_, peak4, current4), (_, peak12, current12) = samples
    assert all(float(v) > 0 for v in (peak4, current4, peak12, current12))
    assert float(peak12) >= float(peak4)  # a peak never decreases
    growth = GROWTH.search(result.stdout)
    assert growth, result.stdout
    assert growth.group(1, 2) == ('4', '12')
    expected = 100 * (float(peak12) - float(peak4)) / float(peak4)
    assert float(growth.group(3)) == pytest.approx(expected, abs=0.05)
    ok = growth.group(4) == 'OK'
    assert result.returncode == (0 if ok else 1)
    assert ok == (float(growth.group(3)) < 5.0)
