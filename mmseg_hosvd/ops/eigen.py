"""Symmetric eigensolvers for the (PSD) Gram matrices of the decompositions.

Pure torch (layer 1): ``eigh``/``eigvalsh`` with fallbacks for the rare
LAPACK failures, run under :func:`single_threaded_lapack`.
"""
import contextlib
from typing import Dict, List, Tuple

import torch
from torch import Tensor

@contextlib.contextmanager
def single_threaded_lapack(device: torch.device):
    """Run the enclosed CPU LAPACK calls (eigh, eigvalsh, QR) on one thread.

    MKL's multi-threaded symmetric eigensolvers synchronise their threads
    at many fine-grained barriers; when the CPU is shared with other
    processes a descheduled thread stalls each of them: the same 640 x 640
    Gram took 27 ms or 8.6 s (``eigvalsh``, 2 threads, load ~4 on 2 cores).
    On one thread they cannot stall that way, and the matrices here are
    small enough that little parallel speed is lost (measured again for
    the README's "Speed" section: a 640 x 640 ``eigh`` took 173 ms on one
    thread vs 672 ms on two, median of 15 under load ~12). torch has no
    per-call thread setting, so the process-wide count is set around the
    LAPACK calls only (and the subspace-iteration loop that alternates
    them with small products) and restored on exit; other devices are
    left alone.
    """
    threads = torch.get_num_threads()
    if torch.device(device).type != 'cpu' or threads == 1:
        yield
        return
    torch.set_num_threads(1)
    try:
        yield
    finally:
        torch.set_num_threads(threads)


def symmetric_eigh(grams: Tensor) -> Tuple[Tensor, Tensor]:
    """``torch.linalg.eigh`` of a batch of PSD Gram matrices ``(..., n, n)``:
    eigenvalues ascending, eigenvectors as columns, in ``grams.dtype``.

    LAPACK's divide-and-conquer eigh can fail to converge on Grams with many
    repeated eigenvalues at a tiny scale (seen on MobileNetV2 activations
    with hundreds of dead channels, values ~1e-8). Such a batch is solved
    again in float64; should that fail too, by an SVD of the (small) Gram,
    whose singular vectors are its eigenvectors since it is PSD. Runs
    under :func:`single_threaded_lapack`.
    """
    with single_threaded_lapack(grams.device):
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
    :func:`symmetric_eigh` (float64, then singular values), on one thread
    (:func:`single_threaded_lapack`)."""
    with single_threaded_lapack(gram.device):
        try:
            return torch.linalg.eigvalsh(gram)
        except torch.linalg.LinAlgError:
            pass
        try:
            return torch.linalg.eigvalsh(gram.double()).to(gram.dtype)
        except torch.linalg.LinAlgError:
            return torch.linalg.svdvals(gram.double()).flip(-1).to(
                gram.dtype)
