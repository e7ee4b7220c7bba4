"""The method registry: what each compression method is, in one table.

Layer 2 (no autograd here). :data:`METHOD_SPECS` maps each :class:`Method`
to its :class:`MethodSpec`; :func:`method_spec` is the one place a method
name is checked. The tuples :data:`MODULE_METHODS`, :data:`LINEAR_METHODS`,
:data:`LOW_RANK_METHODS` and :data:`METHODS` are views derived from the
table. The compressed layers choose their autograd Function from a spec's
``decomposition`` (see :mod:`.conv_functional` and :mod:`.linear`).
"""
import enum
from dataclasses import dataclass, field
from types import MappingProxyType
from typing import Any, Dict, Mapping, Optional, Sequence, Tuple


class Method(str, enum.Enum):
    """A compression method's name (a str: ``Method.HOSVD == 'hosvd'``)."""
    VANILLA = 'vanilla'
    GRADIENT_FILTER = 'gradient_filter'
    SVD = 'svd'
    HOSVD = 'hosvd'
    ASI = 'asi'

    def __str__(self) -> str:
        return self.value


#: what a method keeps of the input for grad_weight
DECOMPOSITIONS = ('tucker', 'svd', 'patch_sum', 'none')


@dataclass(frozen=True)
class MethodSpec:
    """What one compression method is.

    Attributes:
        name: the method.
        decomposition: what it keeps of the input: ``'tucker'`` (HOSVD/ASI
            core and bases), ``'svd'`` (left and right factors),
            ``'patch_sum'`` (the Gradient Filter's patch-summed input) or
            ``'none'`` (vanilla: the input itself, as ``nn.Conv2d``).
        low_rank: keeps low-rank factors (Tucker or SVD) of the input.
        takes_linear: :class:`~.linear.CompressedLinear` accepts it.
        stateful: keeps per-layer state across steps (ASI: ranks, bases),
            so only the layer modules run it (not :func:`compressed_conv2d`
            without precomputed factors).
        config_tag: the method's tag in config file names
            (``..._5l-<tag>-eps0.8_...``).
        defaults: its settings' defaults (``eps``, ``radius``).
    """
    name: Method
    decomposition: str
    low_rank: bool
    takes_linear: bool
    stateful: bool
    config_tag: str
    defaults: Mapping[str, Any] = field(
        default_factory=lambda: MappingProxyType({}))


def _spec(name: Method, decomposition: str, *, takes_linear: bool = True,
          stateful: bool = False, config_tag: Optional[str] = None,
          **defaults: Any) -> MethodSpec:
    return MethodSpec(name=name, decomposition=decomposition,
                      low_rank=decomposition in ('tucker', 'svd'),
                      takes_linear=takes_linear, stateful=stateful,
                      config_tag=config_tag or name.value,
                      defaults=MappingProxyType(defaults))


#: every method (the order of :data:`MODULE_METHODS`)
METHOD_SPECS: Dict[Method, MethodSpec] = {
    spec.name: spec for spec in (
        _spec(Method.VANILLA, 'none'),
        _spec(Method.HOSVD, 'tucker', eps=0.8),
        _spec(Method.SVD, 'svd', eps=0.8),
        _spec(Method.GRADIENT_FILTER, 'patch_sum', takes_linear=False,
              config_tag='gradient-filter', radius=2),
        _spec(Method.ASI, 'tucker', stateful=True, eps=0.8),
    )
}


def method_spec(name: str, allowed: Optional[Sequence[str]] = None
                ) -> MethodSpec:
    """The :class:`MethodSpec` of ``name``; ValueError naming the allowed
    values unless it is one of ``allowed`` (default: every method)."""
    allowed = tuple(METHOD_SPECS) if allowed is None else tuple(allowed)
    try:
        method = Method(name)
    except ValueError:
        method = None
    if method is None or method not in allowed:
        values = tuple(str(m) for m in allowed)
        raise ValueError(f'method must be one of {values}, got '
                         f'method={name!r}')
    return METHOD_SPECS[method]


def _names(predicate) -> Tuple[str, ...]:
    return tuple(m.value for m, s in METHOD_SPECS.items() if predicate(s))


#: the uncompressed baseline (the full input is kept, as by ``nn.Conv2d``)
VANILLA = Method.VANILLA.value
#: Activation Subspace Iteration (stateful)
ASI = Method.ASI.value
#: what :class:`~.conv.CompressedConv2d` accepts
MODULE_METHODS = _names(lambda spec: True)
#: what :class:`~.linear.CompressedLinear` accepts (the Gradient Filter
#: sums patches of a conv's input: it is defined for convolutions only)
LINEAR_METHODS = _names(lambda spec: spec.takes_linear)
#: methods that keep low-rank factors (Tucker or SVD) of the input
LOW_RANK_METHODS = _names(lambda spec: spec.low_rank)
#: methods that keep something other than the input itself
COMPRESSING_METHODS = _names(lambda spec: spec.decomposition != 'none')
#: stateless compressing methods: what
#: :func:`~.conv_functional.compressed_conv2d` runs without precomputed
#: factors
METHODS = _names(lambda spec: spec.decomposition != 'none' and
                 not spec.stateful)
#: how HOSVD's grad_weight is computed: chosen by FLOPs, or forced
WEIGHT_GRAD_PATHS = ('auto', 'factored', 'rebuilt')
#: what a compressed layer does with a NaN/Inf input: ``'raise'``
#: (HOSVD/SVD raise FloatingPointError) or ``'skip'`` (keep nothing, NaN
#: grad_weight)
NON_FINITE_MODES = ('raise', 'skip')


def check_method(method: str, allowed: Sequence[str] = METHODS) -> str:
    """Return ``method`` (a plain str); ValueError unless it is one of
    ``allowed`` (see :func:`method_spec`)."""
    return method_spec(method, allowed).name.value


def check_linear_method(method: str, name: str = '') -> str:
    """Return ``method``; ValueError unless it is in :data:`LINEAR_METHODS`
    (the message for a conv-only method says why, naming layer ``name``)."""
    spec = method_spec(method)
    if not spec.takes_linear:
        layer = f'CompressedLinear {name!r}: ' if name else ''
        raise ValueError(
            f'{layer}method={method!r} is not available for linear '
            'layers: the Gradient Filter is defined for convolutions only '
            f'(CompressedConv2d); use one of {LINEAR_METHODS}')
    return spec.name.value


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
