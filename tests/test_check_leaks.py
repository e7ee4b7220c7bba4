"""tools/check_leaks.py and mmseg_hosvd.diagnostics.leaks: the trend
verdict (a synthetic leak under an early peak fails it, one late spike does
not), and short real runs: on a generated tree in the CamVid layout (always)
and on CamVid itself (skipped without ``../shared/data/camvid_voc``). The
300-iteration check itself is run by hand, see the tool's docstring."""
import json
import mmap
import os
import os.path as osp
import re
import subprocess
import sys
import textwrap

import pytest

from conftest import REPO
from mmseg_hosvd.diagnostics import (RssSample, current_rss_mib,
                                     judge_trend, peak_rss_mib,
                                     relative_growth, theil_sen_slope)

#: the real CamVid tree, relative to the repository root
CAMVID = osp.normpath(osp.join(REPO, '..', 'shared', 'data', 'camvid_voc'))

SAMPLE = re.compile(r'^after iteration (\d+): peak RSS ([\d.]+) MiB, '
                    r'current RSS ([\d.]+) MiB$', re.M)
GROWTH = re.compile(r'^peak RSS growth (\d+) -> (\d+): ([+-][\d.]+)% '
                    r'\(not judged\)$', re.M)
TREND = re.compile(r'^current RSS trend over iterations (\d+)-(\d+): '
                   r'([+-][\d.]+) MiB/iteration \(limit 0\.0500\): '
                   r'(OK|LEAK\?)$', re.M)


def test_verdict_at_the_threshold():
    assert relative_growth(1000.0, 1049.0) == pytest.approx(0.049)
    with pytest.raises(ValueError, match='positive'):
        relative_growth(0.0, 1.0)
    # 1/16 MiB/iteration (exact in binary) from iteration 6 on; the first
    # half (a 512 MiB warm-up) is ignored
    samples = [RssSample(i, 2048.0, 1024.0 + (512.0 if i <= 5 else 0.0)
                         + 0.0625 * i) for i in range(1, 11)]
    verdict = judge_trend(samples, 0.0625)
    assert (verdict.first, verdict.last) == (6, 10)
    assert verdict.slope_mib == 0.0625
    assert verdict.ok and verdict.line() == (
        'current RSS trend over iterations 6-10: +0.0625 MiB/iteration '
        '(limit 0.0625): OK')
    verdict = judge_trend(samples, 0.0624)
    assert not verdict.ok and verdict.line().endswith(
        '(limit 0.0624): LEAK?')


def test_theil_sen_ignores_a_spike_and_thins_long_series():
    points = [(x, 10.0 + 0.5 * x) for x in range(10)]
    points[8] = (8, 1000.0)
    assert theil_sen_slope(points) == pytest.approx(0.5)
    long = [(x, 2.0 * x) for x in range(5000)]
    assert theil_sen_slope(long) == pytest.approx(2.0)
    with pytest.raises(ValueError, match='two points'):
        theil_sen_slope([(1, 2.0)])


#: a fresh process: 'leak' keeps 1 MiB of fresh touched anonymous pages per
#: step after a 256 MiB early peak (freed); 'spike' holds, for one late
#: step only, enough to rise 256 MiB above the peak so far. Prints the samples of steps 1..60 as JSON.
SYNTHETIC = textwrap.dedent('''
    import json, mmap, sys
    from mmseg_hosvd.diagnostics.leaks import sample_rss
    MIB = 2**20

    def touched(mib):
        block = mmap.mmap(-1, mib * MIB)
        for offset in range(0, mib * MIB, mmap.PAGESIZE):
            block[offset] = 1
        return block

    kept, samples = [], []
    for step in range(1, 61):
        if sys.argv[1] == 'leak':
            if step == 1:
                touched(256).close()  # early peak: headroom
            else:
                kept.append(touched(1))
            samples.append(sample_rss(step))
        else:
            # 256 MiB above the peak so far (imports may have set it)
            now = sample_rss(step)
            spike = (touched(int(now.peak_mib - now.current_mib) + 256)
                     if step == 55 else None)
            samples.append(sample_rss(step))
            if spike is not None:
                spike.close()
    print(json.dumps([s.__dict__ for s in samples]))
''')


def _synthetic(tmp_path, kind: str):
    script = tmp_path / 'synthetic.py'
    script.write_text(SYNTHETIC)
    result = subprocess.run([sys.executable, str(script), kind],
                            capture_output=True, text=True, timeout=300,
                            env=dict(os.environ, PYTHONPATH=REPO))
    assert result.returncode == 0, result.stderr[-3000:]
    samples = [RssSample(**s) for s in json.loads(result.stdout)]
    check_at, last = samples[9], samples[-1]  # like --check-at 10
    return samples, relative_growth(check_at.peak_mib, last.peak_mib)


def test_trend_catches_a_leak_under_an_early_peak(tmp_path):
    samples, peak_growth = _synthetic(tmp_path, 'leak')
    assert samples[-1].current_mib - samples[9].current_mib > 40
    assert peak_growth < 0.05  # the peak-only rule would pass it
    verdict = judge_trend(samples, 0.05)
    assert verdict.slope_mib == pytest.approx(1.0, abs=0.2)
    assert not verdict.ok


def test_one_late_spike_without_growth_passes(tmp_path):
    samples, peak_growth = _synthetic(tmp_path, 'spike')
    assert samples[54].current_mib - samples[53].current_mib > 200
    assert peak_growth > 0.05  # the peak-only rule would fail it
    verdict = judge_trend(samples, 0.05)
    assert verdict.ok, verdict.line()


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
    ], capture_output=True, text=True, cwd=REPO, timeout=600,
        env=dict(os.environ, PYTHONPATH=REPO))


@pytest.mark.skipif(not osp.isdir(CAMVID),
                    reason=f'CamVid (VOC layout) not found at {CAMVID}')
def test_short_run_on_camvid(tmp_path):
    result = short_run(tmp_path, CAMVID, 3, 1)
    assert result.returncode in (0, 1), result.stderr[-3000:]
    samples = SAMPLE.findall(result.stdout)
    assert [int(s[0]) for s in samples] == [1, 3], result.stdout
    assert GROWTH.search(result.stdout), result.stdout
    assert TREND.search(result.stdout), result.stdout


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
    trend = TREND.search(result.stdout)
    assert trend, result.stdout
    assert trend.group(1, 2) == ('7', '12')  # the second half
    ok = trend.group(4) == 'OK'
    assert result.returncode == (0 if ok else 1)
    assert ok == (float(trend.group(3)) <= 0.05)


@pytest.mark.parametrize('args, message', [
    (['--crop', '0'], '--crop must be a positive number of pixels, got 0'),
    (['--batch-size', '0'], '--batch-size must be positive, got 0'),
    (['--max-slope', '-1'], '--max-slope must be >= 0'),
    (['--iters', '2', '--check-at', '1'], '--iters must be at least 3'),
])
def test_bad_arguments_are_named(tmp_path, args, message):
    result = subprocess.run(
        [sys.executable, osp.join(REPO, 'tools', 'check_leaks.py'),
         '--data-root', str(tmp_path)] + args,
        capture_output=True, text=True, cwd=REPO, timeout=120,
        env=dict(os.environ, PYTHONPATH=REPO))
    assert result.returncode == 2 and message in result.stderr, \
        result.stderr[-2000:]
