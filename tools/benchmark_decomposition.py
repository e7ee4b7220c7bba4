"""Time the HOSVD / SVD decompositions against a conv and full SVDs.

Usage: .venv/bin/python tools/benchmark_decomposition.py [--repeats N]
[--shape N C H W] [--ranks R1 R2 R3 R4]

On a (8, 512, 64, 64) float32 input (low Tucker rank (4, 32, 16, 16) plus
noise; ``--shape``/``--ranks`` change both), with
``torch.set_num_threads(--threads)`` (2), prints the median wall time (ms)
of

* ``hosvd(x, 0.8)`` (Gram + eigh per mode, core projection),
* ``truncated_svd(x, 0.8)``,
* a plain 3x3 conv forward (C -> C, padding 1) on the same input,
* four ``torch.linalg.svd(unfolding, full_matrices=False)`` calls, one per
  mode unfolding (the unfoldings are made contiguous before timing),

as a markdown table, with the ranks and the kept / input byte ratio.
"""
import argparse
import os.path as osp
import statistics
import sys
import time
from typing import Callable, List, Optional, Sequence, Tuple

REPO = osp.dirname(osp.dirname(osp.abspath(__file__)))
if REPO not in sys.path:
    sys.path.insert(0, REPO)

import torch  # noqa: E402
import torch.nn.functional as F  # noqa: E402

from mmseg_hosvd.ops import (hosvd, hosvd_paper_elements,  # noqa: E402
                             svd_paper_elements, truncated_svd)

SHAPE = (8, 512, 64, 64)
TRUE_RANKS = (4, 32, 16, 16)
EPS = 0.8
NOISE = 0.1


def low_rank_plus_noise(shape: Tuple[int, ...], ranks: Tuple[int, ...],
                        noise: float, seed: int) -> torch.Tensor:
    """Unit-variance Tucker tensor of multilinear ``ranks`` plus Gaussian
    noise of standard deviation ``noise``, float32."""
    generator = torch.Generator().manual_seed(seed)
    x = torch.randn(ranks, generator=generator)
    for mode, (size, rank) in enumerate(zip(shape, ranks)):
        factor = torch.randn(size, rank, generator=generator)
        x = torch.tensordot(x, factor, dims=([mode], [1])).movedim(-1, mode)
    x = x.contiguous() / x.std()
    return x + noise * torch.randn(shape, generator=generator)


def median_ms(function: Callable[[], object], repeats: int) -> float:
    """Median wall time in milliseconds after one warm-up call."""
    function()
    times: List[float] = []
    for _ in range(repeats):
        start = time.perf_counter()
        function()
        times.append((time.perf_counter() - start) * 1e3)
    return statistics.median(times)


def mode_unfoldings(x: torch.Tensor) -> List[torch.Tensor]:
    """The four contiguous mode unfoldings ``(n_i, numel / n_i)``."""
    return [
        x.movedim(mode, 0).reshape(x.shape[mode], -1).contiguous()
        for mode in range(x.dim())
    ]


def main(argv: Optional[Sequence[str]] = None) -> List[dict]:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument('--repeats', type=int, default=5,
                        help='timed runs per operation (median reported)')
    parser.add_argument('--seed', type=int, default=0)
    parser.add_argument('--shape', type=int, nargs=4, default=list(SHAPE),
                        metavar=('N', 'C', 'H', 'W'))
    parser.add_argument('--ranks', type=int, nargs=4,
                        default=list(TRUE_RANKS), metavar='R',
                        help='true Tucker ranks of the input')
    parser.add_argument('--threads', type=int, default=2)
    args = parser.parse_args(argv)
    shape, ranks = tuple(args.shape), tuple(args.ranks)
    if args.repeats < 1 or args.threads < 1:
        parser.error('--repeats and --threads must be >= 1')
    if any(r < 1 or r > n for r, n in zip(ranks, shape)):
        parser.error(f'--ranks {ranks}: each in [1, the size of its mode '
                     f'{shape}]')

    from tabulate import tabulate
    torch.set_num_threads(args.threads)
    x = low_rank_plus_noise(shape, ranks, NOISE, args.seed)
    input_bytes = x.numel() * x.element_size()
    channels = shape[1]
    weight = torch.randn(channels, channels, 3, 3) * 0.01
    unfoldings = mode_unfoldings(x)

    def four_svds() -> None:
        for unfolding in unfoldings:
            torch.linalg.svd(unfolding, full_matrices=False)

    with torch.no_grad():
        tucker = hosvd(x, EPS)
        svd = truncated_svd(x, EPS)
        hosvd_ms = median_ms(lambda: hosvd(x, EPS), args.repeats)
        svd_ms = median_ms(lambda: truncated_svd(x, EPS), args.repeats)
        conv_ms = median_ms(lambda: F.conv2d(x, weight, padding=1),
                            args.repeats)
        full_svd_ms = median_ms(four_svds, max(1, args.repeats // 2))

    hosvd_ratio = 4 * hosvd_paper_elements(shape, tucker.ranks) / input_bytes
    svd_ratio = 4 * svd_paper_elements(shape, svd.rank) / input_bytes
    print(f'input {shape} float32 ({input_bytes / 2**20:.0f} MiB), true '
          f'ranks {ranks} + noise {NOISE}, eps {EPS}, '
          f'threads {torch.get_num_threads()}, torch {torch.__version__}')
    print()
    rows = [
        dict(operation=f'hosvd(x, {EPS:g})', ms=hosvd_ms,
             result=f'ranks {tuple(tucker.ranks)}, kept/input '
             f'{hosvd_ratio:.5f}'),
        dict(operation=f'truncated_svd(x, {EPS:g})', ms=svd_ms,
             result=f'rank {svd.rank}, kept/input {svd_ratio:.4f}'),
        dict(operation=f'conv2d 3x3 {channels}->{channels} pad 1, forward',
             ms=conv_ms, result=''),
        dict(operation='4x torch.linalg.svd(unfolding, full_matrices=False)',
             ms=full_svd_ms, result='unfoldings ' + ', '.join(
                 str(tuple(u.shape)) for u in unfoldings)),
    ]
    for row in rows:
        row['vs_hosvd'] = row['ms'] / hosvd_ms
    print(tabulate([[r['operation'], f'{r["ms"]:.1f}',
                     f'{r["vs_hosvd"]:.2f}x', r['result']] for r in rows],
                   headers=['operation', 'median time (ms)', 'vs hosvd',
                            'result'], tablefmt='github',
                   disable_numparse=True,
                   colalign=('left', 'right', 'right', 'left')))
    return rows


if __name__ == '__main__':
    main()
