"""Time the HOSVD / SVD decompositions against a conv and full SVDs.

Usage: .venv/bin/python tools/benchmark_decomposition.py [--repeats N]

On a (8, 512, 64, 64) float32 input (low Tucker rank plus noise), with
``torch.set_num_threads(2)``, prints the median wall time (ms) of

* ``hosvd(x, 0.8)`` (Gram + eigh per mode, core projection),
* ``truncated_svd(x, 0.8)``,
* a plain 3x3 conv forward (512 -> 512, padding 1) on the same input,
* four ``torch.linalg.svd(unfolding, full_matrices=False)`` calls, one per
  mode unfolding (the unfoldings are made contiguous before timing),

as a markdown table, with the ranks and the kept / input byte ratio.
"""
import argparse
import statistics
import time
from typing import Callable, List, Tuple

import torch
import torch.nn.functional as F

from mmseg_hosvd.ops import (hosvd, hosvd_paper_elements, svd_paper_elements,
                             truncated_svd)

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


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument('--repeats', type=int, default=5,
                        help='timed runs per operation (median reported)')
    parser.add_argument('--seed', type=int, default=0)
    args = parser.parse_args()

    torch.set_num_threads(2)
    x = low_rank_plus_noise(SHAPE, TRUE_RANKS, NOISE, args.seed)
    input_bytes = x.numel() * x.element_size()
    weight = torch.randn(512, 512, 3, 3) * 0.01
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

    hosvd_ratio = 4 * hosvd_paper_elements(SHAPE, tucker.ranks) / input_bytes
    svd_ratio = 4 * svd_paper_elements(SHAPE, svd.rank) / input_bytes
    print(f'input {SHAPE} float32 ({input_bytes / 2**20:.0f} MiB), true '
          f'ranks {TRUE_RANKS} + noise {NOISE}, eps {EPS}, '
          f'threads {torch.get_num_threads()}, torch {torch.__version__}')
    print()
    print('| operation | median time (ms) | vs hosvd | result |')
    print('|---|---:|---:|---|')
    rows = [
        ('hosvd(x, 0.8)', hosvd_ms, f'ranks {tucker.ranks}, kept/input '
         f'{hosvd_ratio:.5f}'),
        ('truncated_svd(x, 0.8)', svd_ms, f'rank {svd.rank}, kept/input '
         f'{svd_ratio:.4f}'),
        ('conv2d 3x3 512->512 pad 1, forward', conv_ms, ''),
        ('4x torch.linalg.svd(unfolding, full_matrices=False)', full_svd_ms,
         'unfoldings ' + ', '.join(str(tuple(u.shape)) for u in unfoldings)),
    ]
    for name, milliseconds, result in rows:
        print(f'| {name} | {milliseconds:.1f} | '
              f'{milliseconds / hosvd_ms:.2f}x | {result} |')


if __name__ == '__main__':
    main()
