"""Symmetric eigensolvers for the (PSD) Gram matrices of the decompositions.

Pure torch (layer 1): ``eigh``/``eigvalsh`` with fallbacks for the rare
LAPACK failures. The thread count is torch's (``torch.set_num_threads``):
on a CPU shared with other processes, one thread can be much faster for
these solvers (a 640 x 640 ``eigh`` / ``eigvalsh`` took a median of
70.9 / 67.3 ms on one thread and 408.6 / 840.5 ms on two, 2 cores under
load; docs/speed.md, "Threads are yours to set"), which is the user's
setting to make, never changed here.
"""
from typing import Dict, List, Tuple

import torch
from torch import Tensor


def symmetric_eigh(grams: Tensor) -> Tuple[Tensor, Tensor]:
    """``torch.linalg.eigh`` of a batch of PSD Gram matrices ``(..., n, n)``:
    eigenvalues ascending, eigenvectors as columns, in ``grams.dtype``.

    LAPACK's divide-and-conquer eigh can fail to converge on Grams with many
    repeated eigenvalues at a tiny scale (seen on MobileNetV2 activations
    with hundreds of dead channels, values ~1e-8). Such a batch is solved
    again in float64; should that fail too, by an SVD of the (small) Gram,
    whose singular vectors are its eigenvectors since it is PSD.
    """
    try:
        return torch.linalg.eigh(grams)
    except torch.linalg.LinAlgError:
        pass
    try:
        values, vectors = torch.linalg.eigh(grams.double())
    except torch.linalg.LinAlgError:
        vectors, values, _ = torch.linalg.svd(grams.double())
        values, vectors = values.flip(-1), vectors.flip(-1)
    return values.to(grams.dtype), vectors.to(grams.dtype)


def eigh_descending(
        grams: List[Tensor]) -> Tuple[List[Tensor], List[Tensor]]:
    """Eigenvalues (descending) and eigenvectors (ascending, as eigh gives).

    Gram matrices of equal size share one batched eigh call.
    """
    eigenvalues: List[Tensor] = [None] * len(grams)
    eigenvectors: List[Tensor] = [None] * len(grams)
    by_size: Dict[int, List[int]] = {}
    for index, gram in enumerate(grams):
        by_size.setdefault(gram.shape[0], []).append(index)
    for indices in by_size.values():
        values, vectors = symmetric_eigh(
            torch.stack([grams[i] for i in indices]))
        for position, index in enumerate(indices):
            eigenvalues[index] = values[position].flip(-1)
            eigenvectors[index] = vectors[position]
    return eigenvalues, eigenvectors


def symmetric_eigvalsh(gram: Tensor) -> Tensor:
    """Eigenvalues (ascending) of a PSD ``gram``, with the fallbacks of
    :func:`symmetric_eigh` (float64, then singular values)."""
    try:
        return torch.linalg.eigvalsh(gram)
    except torch.linalg.LinAlgError:
        pass
    try:
        return torch.linalg.eigvalsh(gram.double()).to(gram.dtype)
    except torch.linalg.LinAlgError:
        return torch.linalg.svdvals(gram.double()).flip(-1).to(gram.dtype)
