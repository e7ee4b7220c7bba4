"""What a compressed layer keeps of its input: the decomposition as the
ops layer runs it.

Layer 2 over :mod:`mmseg_hosvd.decomposition`: :func:`decompose` picks the
factorisation of a method (:data:`FACTORIZERS`, read off the method's
:class:`~.methods.MethodSpec`), keeps the input itself where no
factorisation would be smaller (:class:`~mmseg_hosvd.decomposition.
WholeInput`: never more bytes than the input), stores factors in the
input's dtype (half-precision factors are computed in float32, then
rounded), and turns a NaN/Inf input into an error naming the layer (or
None with ``non_finite='skip'``). :func:`autocast_arguments` casts a
layer's arguments as autocast would.
"""
from typing import Callable, Dict, Optional, Tuple, Union

import torch
from torch import Tensor

from ..decomposition import (SVDFactors, TuckerFactors, WholeInput, hosvd,
                             truncated_svd)
from .methods import method_spec

#: what a low-rank layer saves of its input
Factors = Union[TuckerFactors, SVDFactors, WholeInput]
#: ``(activation, eps, max_elements) -> factors`` (None: larger than
#: ``max_elements``)
Factorize = Callable[[Tensor, float, Optional[int]], Optional[Factors]]
#: the stateless factorisation of each decomposition (ASI's is per layer)
FACTORIZERS: Dict[str, Factorize] = {'tucker': hosvd, 'svd': truncated_svd}


def decompose(method: str, activation: Tensor, eps: float, name: str,
              non_finite: str = 'raise', *, layer: str = 'CompressedConv2d',
              factorize: Optional[Factorize] = None) -> Optional[Factors]:
    """What ``activation`` (detached) is kept as under ``method``.

    ``factorize`` (default: :data:`FACTORIZERS` of the method's
    decomposition) gives the factors; where they would take more elements
    than ``activation`` (hence more bytes: factors are stored in its
    dtype), the activation itself is kept (:class:`WholeInput`).

    Returns:
        The factors, or None for a NaN/Inf input with
        ``non_finite='skip'``.

    Raises:
        FloatingPointError: NaN/Inf input with ``non_finite='raise'``,
            naming ``layer`` ``name``.
    """
    if factorize is None:
        factorize = FACTORIZERS[method_spec(method).decomposition]
    limit = activation.numel()
    try:
        factors = factorize(activation, eps, limit)
    except FloatingPointError as error:
        if non_finite == 'skip':
            return None
        raise FloatingPointError(
            f'{layer} {name!r} (method={method!r}): {error}') from error
    if factors is None or factors.paper_elements() > limit:
        return WholeInput(activation.detach())
    return factors.to(activation.dtype)


def kept_ranks(method: str, factors: Factors) -> Tuple[int, ...]:
    """The ranks :class:`~.accounting.CompressionStats` reports: the
    factors' own; for a whole input, its shape (Tucker methods) or the
    ``(min(rows, columns),)`` that an exact SVD of it has."""
    if isinstance(factors, WholeInput) and method_spec(
            method).decomposition == 'svd':
        rows = factors.shape[0]
        return (min(rows, factors.tensor.numel() // max(rows, 1)), )
    return factors.ranks


def autocast_arguments(
        input: Tensor, weight: Tensor, bias: Optional[Tensor]
) -> Tuple[Tensor, Tensor, Optional[Tensor]]:
    """Cast as autocast would cast ``F.conv2d``'s / ``F.linear``'s
    arguments (differentiably).

    Inside the autograd Functions autocast is then disabled, so forward and
    backward see one dtype.
    """
    device_type = input.device.type
    if not torch.is_autocast_enabled(device_type):
        return input, weight, bias
    dtype = torch.get_autocast_dtype(device_type)

    def cast(tensor: Optional[Tensor]) -> Optional[Tensor]:
        if tensor is None or tensor.dtype == torch.float64:
            return tensor  # autocast leaves float64 alone
        return tensor.to(dtype)

    return cast(input), cast(weight), cast(bias)
