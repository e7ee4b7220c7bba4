"""Names of the compression methods and the checks of their settings.

Layer 2 (no torch autograd here): constants shared by the functional API
(:mod:`.functional`), the module (:mod:`.conv`) and the hooks.
"""
from typing import Sequence

#: stateless methods of :func:`~.functional.compressed_conv2d`.
METHODS = ('hosvd', 'svd', 'gradient_filter')
#: the uncompressed baseline: the full input is kept (as by ``nn.Conv2d``);
#: :class:`~.conv.CompressedConv2d` only records its size.
VANILLA = 'vanilla'
#: Activation Subspace Iteration: stateful, :class:`~.conv.CompressedConv2d`
#: only (or :func:`~.functional.compressed_conv2d` with precomputed
#: ``factors``).
ASI = 'asi'
#: methods that keep low-rank factors (Tucker or SVD) of the input.
LOW_RANK_METHODS = ('hosvd', 'svd', ASI)
#: what :class:`~.conv.CompressedConv2d` accepts.
MODULE_METHODS = (VANILLA, ) + METHODS + (ASI, )
#: what :class:`~.linear.CompressedLinear` accepts (the Gradient Filter
#: sums patches of a conv's input: it is defined for convolutions only).
LINEAR_METHODS = (VANILLA, 'hosvd', 'svd', ASI)
#: how HOSVD's grad_weight is computed: chosen by FLOPs, or forced.
WEIGHT_GRAD_PATHS = ('auto', 'factored', 'rebuilt')
#: what a compressed conv does with a NaN/Inf input: ``'raise'`` (HOSVD/SVD
#: raise FloatingPointError) or ``'skip'`` (keep nothing, NaN grad_weight).
NON_FINITE_MODES = ('raise', 'skip')


def check_method(method: str, allowed: Sequence[str] = METHODS) -> str:
    """Return ``method``; ValueError unless it is one of ``allowed``."""
    if method not in allowed:
        raise ValueError(f'method must be one of {tuple(allowed)}, got '
                         f'method={method!r}')
    return method


def check_linear_method(method: str, name: str = '') -> str:
    """Return ``method``; ValueError unless it is in :data:`LINEAR_METHODS`
    (the message for ``'gradient_filter'`` says why, naming layer ``name``)."""
    if method == 'gradient_filter':
        layer = f'CompressedLinear {name!r}: ' if name else ''
        raise ValueError(
            f"{layer}method='gradient_filter' is not available for linear "
            'layers: the Gradient Filter is defined for convolutions only '
            f'(CompressedConv2d); use one of {LINEAR_METHODS}')
    return check_method(method, LINEAR_METHODS)


def check_non_finite(mode: str) -> str:
    """Return ``mode``; ValueError unless it is in :data:`NON_FINITE_MODES`."""
    if mode not in NON_FINITE_MODES:
        raise ValueError(f'non_finite must be one of {NON_FINITE_MODES}, got '
                         f'non_finite={mode!r}')
    return mode


def check_weight_grad_path(path: str) -> str:
    """Return ``path``; ValueError unless in :data:`WEIGHT_GRAD_PATHS`."""
    if path not in WEIGHT_GRAD_PATHS:
        raise ValueError(f'path must be one of {WEIGHT_GRAD_PATHS}, got '
                         f'path={path!r}')
    return path


# TEMPORARY: replaced by the ops branch (the method registry). A minimal
# version of the names the tools branch codes against.
import enum  # noqa: E402
from dataclasses import dataclass  # noqa: E402
from typing import Dict, Union  # noqa: E402


class Method(str, enum.Enum):
    """The compression methods (a str enum: ``Method.HOSVD == 'hosvd'``)."""
    VANILLA = 'vanilla'
    GRADIENT_FILTER = 'gradient_filter'
    SVD = 'svd'
    HOSVD = 'hosvd'
    ASI = 'asi'


@dataclass(frozen=True)
class MethodSpec:
    """What a method is: ``config_tag`` names its leaf configs."""
    name: Method
    low_rank: bool
    takes_linear: bool
    stateful: bool
    config_tag: str


METHOD_SPECS: Dict[Method, MethodSpec] = {
    Method.VANILLA: MethodSpec(Method.VANILLA, False, True, False,
                               'vanilla'),
    Method.GRADIENT_FILTER: MethodSpec(Method.GRADIENT_FILTER, False, False,
                                       False, 'gradient-filter'),
    Method.SVD: MethodSpec(Method.SVD, True, True, False, 'svd'),
    Method.HOSVD: MethodSpec(Method.HOSVD, True, True, False, 'hosvd'),
    Method.ASI: MethodSpec(Method.ASI, True, True, True, 'asi'),
}


def method_spec(name: Union[str, Method]) -> MethodSpec:
    """The :class:`MethodSpec` of ``name``; ValueError naming the allowed
    values."""
    try:
        return METHOD_SPECS[Method(name)]
    except ValueError:
        raise ValueError(f'method must be one of '
                         f'{tuple(m.value for m in Method)}, got '
                         f'{name!r}') from None
