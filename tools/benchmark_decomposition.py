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

as a markdown table, with the ranks and the kept / input byte ratio. What
it runs is :mod:`mmseg_hosvd.bench.decomposition`.
"""
import torch

from mmseg_hosvd.bench.decomposition import (decomposition_parser,
                                             decomposition_rows,
                                             decomposition_table,
                                             describe_input,
                                             parse_decomposition_args)


def main() -> None:
    args = parse_decomposition_args(
        parser=decomposition_parser(__doc__.splitlines()[0]))
    torch.set_num_threads(args.threads)
    print(describe_input(args.shape, args.ranks))
    print()
    rows = decomposition_rows(args.shape, args.ranks, args.repeats,
                              args.seed)
    print(decomposition_table(rows))


if __name__ == '__main__':
    main()
