"""The decomposition benchmark (``tools/benchmark_decomposition.py``): the
HOSVD / SVD decompositions against a conv and full SVDs, on one synthetic
input.

On a low-Tucker-rank input plus noise, the median wall time (ms) of
``hosvd(x, 0.8)`` (Gram + eigh per mode, core projection),
``truncated_svd(x, 0.8)``, a plain 3x3 conv forward (C -> C, padding 1) and
four ``torch.linalg.svd(unfolding, full_matrices=False)`` calls, one per
contiguous mode unfolding, with the ranks and the kept / input byte ratio.
"""
import argparse
import statistics
import time
from typing import Callable, List, Optional, Sequence, Tuple

import torch
import torch.nn.functional as F

from ..ops import hosvd, hosvd_paper_elements, svd_paper_elements, \
    truncated_svd
from .arguments import positive_int

SHAPE = (8, 512, 64, 64)
TRUE_RANKS = (4, 32, 16, 16)
EPS = 0.8
NOISE = 0.1


def decomposition_parser(description: Optional[str] = None
                         ) -> argparse.ArgumentParser:
    """The decomposition benchmark's command line."""
    parser = argparse.ArgumentParser(description=description)
    parser.add_argument('--repeats', type=positive_int, default=5,
                        help='timed runs per operation (median reported)')
    parser.add_argument('--seed', type=int, default=0)
    parser.add_argument('--shape', type=int, nargs=4, default=list(SHAPE),
                        metavar=('N', 'C', 'H', 'W'))
    parser.add_argument('--ranks', type=int, nargs=4,
                        default=list(TRUE_RANKS), metavar='R',
                        help='true Tucker ranks of the input')
    parser.add_argument('--threads', type=positive_int, default=2)
    return parser


def parse_decomposition_args(
        argv: Optional[Sequence[str]] = None,
        parser: Optional[argparse.ArgumentParser] = None
) -> argparse.Namespace:
    """Parsed; ``shape`` and ``ranks`` tuples, a parser error for a rank
    outside ``[1, the size of its mode]``."""
    parser = parser or decomposition_parser()
    args = parser.parse_args(argv)
    args.shape, args.ranks = tuple(args.shape), tuple(args.ranks)
    if any(r < 1 or r > n for r, n in zip(args.ranks, args.shape)):
        parser.error(f'--ranks {args.ranks}: each in [1, the size of its '
                     f'mode {args.shape}]')
    return args


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


def describe_input(shape: Sequence[int], ranks: Sequence[int]) -> str:
    """The heading line: the input, its true ranks, noise, eps, threads."""
    mib = 4 * torch.Size(shape).numel() / 2**20
    return (f'input {tuple(shape)} float32 ({mib:.0f} MiB), true ranks '
            f'{tuple(ranks)} + noise {NOISE}, eps {EPS}, threads '
            f'{torch.get_num_threads()}, torch {torch.__version__}')


def decomposition_rows(shape: Tuple[int, ...], ranks: Tuple[int, ...],
                       repeats: int, seed: int = 0) -> List[dict]:
    """``dict(operation, ms, result, vs_hosvd)`` per timed operation, on
    :func:`low_rank_plus_noise` of ``shape``/``ranks``."""
    x = low_rank_plus_noise(shape, ranks, NOISE, seed)
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
        hosvd_ms = median_ms(lambda: hosvd(x, EPS), repeats)
        svd_ms = median_ms(lambda: truncated_svd(x, EPS), repeats)
        conv_ms = median_ms(lambda: F.conv2d(x, weight, padding=1), repeats)
        full_svd_ms = median_ms(four_svds, max(1, repeats // 2))
    hosvd_ratio = 4 * hosvd_paper_elements(shape, tucker.ranks) / input_bytes
    svd_ratio = 4 * svd_paper_elements(shape, svd.rank) / input_bytes
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
    return rows


def decomposition_table(rows: List[dict]) -> str:
    """The rows as a github markdown table."""
    from tabulate import tabulate
    return tabulate([[r['operation'], f'{r["ms"]:.1f}',
                      f'{r["vs_hosvd"]:.2f}x', r['result']] for r in rows],
                    headers=['operation', 'median time (ms)', 'vs hosvd',
                             'result'], tablefmt='github',
                    disable_numparse=True,
                    colalign=('left', 'right', 'right', 'left'))
