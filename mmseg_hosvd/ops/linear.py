"""Linear layer whose saved input activation is compressed for the weight
gradient.

Layer 2: the module :class:`CompressedLinear`, on top of the autograd
Functions of :mod:`.linear_autograd` and the gradient maths of
:mod:`.linear_gradients`; the decompositions are those of the convs
(:mod:`mmseg_hosvd.decomposition`, through :mod:`.input_factors`), the
accounting that of :mod:`.accounting`.

Methods (:data:`~.methods.LINEAR_METHODS`): ``'vanilla'`` (the full input is
kept, only its size recorded), ``'hosvd'``, ``'svd'`` and ``'asi'``, as for
:class:`~.conv.CompressedConv2d`; the Gradient Filter is defined for
convolutions only.

Mode layout. An input ``(..., C)`` with 2 to 4 dims is decomposed as the 4-D
tensor of its own memory order, channel last (a view, never a copy of the
input):

* ``(M, C)`` -> ``(M, 1, 1, C)``;
* ``(D0, D1, C)`` -> ``(D0, D1, 1, C)``: tokens ``(B, N, C)``, or
  sequence first ``(N, B, C)`` (Tucker is symmetric in its modes, so both
  give the same HOSVD);
* ``(B, H, W, C)`` (Swin/ConvNeXt) as is.

The linear is then a 1x1 conv of the channel-first view ``(D0, C, D1, D2)``
(``(M, C, 1, 1)``, ``(D0, C, D1, 1)``, ``(B, C, H, W)``); the Tucker ranks
in :attr:`~.accounting.CompressionStats.ranks` are listed in that order,
as a conv's ``(K_B, K_C, K_H, K_W)``, while
:attr:`~.accounting.CompressionStats.input_shape` is the input's own shape.
SVD's rows are the input's dim 0 (``B`` of ``(B, N, C)``, ``N`` of ``(N,
B, C)``, ``M`` of ``(M, C)``): it truncates the ``(D0, D1*D2*C)``
reshape, through the smaller of its two Gram matrices
(:func:`~mmseg_hosvd.decomposition.truncated_svd`), so its rank is at most
``min(D0, D1*D2*C)``.

A Tucker mode's rank is at most the product of the other modes' sizes (a
mode larger than that, e.g. the rows of ``(M, C)``, takes its basis from
the smaller dual Gram); where the factors would still take more elements
than the input (e.g. ``eps == 1``), the input itself is kept.

Note: ``nn.MultiheadAttention`` never calls its ``out_proj`` module (it
passes ``out_proj.weight`` to ``F.linear`` itself), so replacing that
module by a :class:`CompressedLinear` compresses nothing.

The forward output is always the exact ``F.linear``; grad_input and
grad_bias are exact; grad_weight comes from the factors. A non-finite input
follows ``non_finite`` exactly as for :class:`~.conv.CompressedConv2d`.
"""
from typing import Optional, Tuple

import torch
import torch.nn as nn
import torch.nn.functional as F
from torch import Tensor

from ..decomposition import check_eps
from .accounting import CompressionStats, factor_stats, non_finite_stats
from .context import CompressionContext
from .input_factors import Factors, autocast_arguments, kept_ranks
from .layer_base import CompressedLayerMixin, share_parameters
from .linear_autograd import (LinearLowRankSpec, _LowRankLinearFunction,
                              _NonFiniteLinearFunction)
from .linear_gradients import channel_first, check_linear_input, natural_view
from .methods import check_linear_method, check_non_finite, method_spec

#: tags the shared-input cache's configurations of linear layers: their
#: factors (of the channel-last view) are never handed to a conv
CACHE_LAYOUT = 'linear'


class CompressedLinear(CompressedLayerMixin, nn.Linear):
    """``nn.Linear`` that keeps a compressed input for its weight gradient.

    A call is compressed when ``torch.is_grad_enabled()`` and
    ``weight.requires_grad`` (whether or not the module is in training mode)
    and the input is not empty; otherwise it is the plain ``nn.Linear``
    computation, which keeps nothing (under ``torch.no_grad()``) and leaves
    :attr:`last_stats` alone. A compressed call takes an input ``(M, C)``,
    ``(D0, D1, C)`` or ``(B, H, W, C)`` (see the module docstring for its
    Tucker modes); any other number of dims raises ValueError.

    Args:
        method: one of :data:`~.methods.LINEAR_METHODS`; ``'vanilla'``
            compresses nothing (the plain linear keeps its full input) and
            only records its size in :attr:`last_stats`; ``'asi'`` keeps its
            per-layer ranks and bases in :attr:`context` under :attr:`name`.
            ``'gradient_filter'`` raises ValueError (convolutions only).
        eps: HOSVD/SVD explained-energy fraction in (0, 1] (ASI: the rank
            rule of its first step, unless the tracker has a memory budget).
        name: module path, used in error messages (and as the ASI state key).
        non_finite: ``'raise'`` or ``'skip'``, what a NaN/Inf input does (as
            for :class:`~.conv.CompressedConv2d`): HOSVD/SVD (and ASI's first
            step) raise FloatingPointError naming the layer, or with
            ``'skip'`` keep nothing and give a NaN grad_weight (grad_input
            and grad_bias stay exact).
        Other arguments: as ``nn.Linear``.

    Under autocast the arguments are cast as autocast casts ``F.linear``'s;
    decompositions run in float32 (float64 for float64 inputs), factors are
    kept in the cast dtype.

    Attributes:
        last_stats: :class:`~.accounting.CompressionStats` of the latest
            compressed call (None before).
        context: :class:`~.context.CompressionContext`, the module's own
            (``share_inputs=False``) until model surgery gives all compressed
            layers of a model one shared context (input sharing, ASI state).
    """

    _LAYER = 'CompressedLinear'
    _CACHE_TAG = (CACHE_LAYOUT, )

    def __init__(self,
                 in_features: int,
                 out_features: int,
                 bias: bool = True,
                 device=None,
                 dtype=None,
                 *,
                 method: str = 'hosvd',
                 eps: float = 0.8,
                 name: str = '',
                 non_finite: str = 'raise') -> None:
        check_linear_method(method, name)
        check_eps(eps)
        check_non_finite(non_finite)
        super().__init__(in_features, out_features, bias, device, dtype)
        self.name = name
        self.method = method
        self.eps = eps
        self.non_finite = non_finite
        self.last_stats: Optional[CompressionStats] = None
        #: a plain attribute (nothing enters ``state_dict``)
        self.context = CompressionContext(share_inputs=False)

    def _check_method(self, value: str) -> str:
        return check_linear_method(value, getattr(self, 'name', ''))

    @classmethod
    def from_linear(cls,
                    linear: nn.Linear,
                    method: str,
                    eps: float = 0.8,
                    name: str = '',
                    non_finite: str = 'raise') -> 'CompressedLinear':
        """A CompressedLinear sharing ``linear``'s Parameter objects.

        ``linear`` may be any ``nn.Linear`` subclass (e.g.
        ``NonDynamicallyQuantizableLinear``). Same features and training
        flag; no extra parameters or buffers, so ``state_dict`` keys equal
        ``nn.Linear``'s. Hooks are not copied.
        """
        if not isinstance(linear, nn.Linear):
            raise TypeError(f'expected an nn.Linear, got {type(linear)}')
        compressed = cls(linear.in_features,
                         linear.out_features,
                         bias=linear.bias is not None,
                         device='meta',
                         method=method,
                         eps=eps,
                         name=name,
                         non_finite=non_finite)
        share_parameters(linear, compressed)
        return compressed

    def to_linear(self) -> nn.Linear:
        """A plain ``nn.Linear`` sharing this module's Parameter objects."""
        linear = nn.Linear(self.in_features,
                           self.out_features,
                           bias=self.bias is not None,
                           device='meta')
        share_parameters(self, linear)
        return linear

    def forward(self, input: Tensor) -> Tensor:
        """Exact ``F.linear(input, weight, bias)``, compressed (see the
        class)."""
        if not self._compresses(input, self.weight):
            return F.linear(input, self.weight, self.bias)
        check_linear_input(input, self.name)
        if method_spec(self.method).decomposition == 'none':
            self._record_vanilla(input)
            return F.linear(input, self.weight, self.bias)
        output, stats = self._low_rank_forward(input, self.weight, self.bias)
        self._set_stats(stats)
        return output

    def _low_rank_forward(self, input: Tensor, weight: Tensor,
                          bias: Optional[Tensor]
                          ) -> Tuple[Tensor, CompressionStats]:
        """HOSVD/SVD/ASI: factors from the context's cache when another
        compressed linear already decomposed this very input with the same
        settings, else decomposed here (and cached). A non-finite input
        skipped by ``non_finite='skip'`` is cached as None."""
        cast_input, weight, bias = autocast_arguments(input, weight, bias)
        with torch.autocast(input.device.type, enabled=False):
            factors, reused = self._shared_factors(
                input, natural_view(cast_input.detach()))
            if factors is None:
                return self._non_finite_forward(cast_input, weight, bias,
                                                reused)
            return self._factored_forward(cast_input, weight, bias, factors,
                                          reused)

    def _factored_forward(self, input: Tensor, weight: Tensor,
                          bias: Optional[Tensor], factors: Factors,
                          reused: bool) -> Tuple[Tensor, CompressionStats]:
        """Exact linear saving ``factors`` of the input's natural view."""
        view_shape = tuple(natural_view(input).shape)
        if tuple(factors.shape) != view_shape:
            raise ValueError(f'factors of shape {tuple(factors.shape)} for '
                             f'an input viewed as {view_shape}')
        spec = LinearLowRankSpec(type(factors), view_shape)
        output = _LowRankLinearFunction.apply(input, weight, bias, spec,
                                              *factors.tensors())
        ranks = kept_ranks(self.method, factors)
        if len(ranks) == len(view_shape):  # Tucker or whole: channel first
            ranks = channel_first(ranks)
        return output, factor_stats(self.method, tuple(input.shape), factors,
                                    ranks, reused)

    def _non_finite_forward(self, input: Tensor, weight: Tensor,
                            bias: Optional[Tensor], reused: bool
                            ) -> Tuple[Tensor, CompressionStats]:
        """``non_finite='skip'``: nothing of the input is kept."""
        output = _NonFiniteLinearFunction.apply(input, weight, bias)
        return output, non_finite_stats(self.method, tuple(input.shape),
                                        reused)

    def extra_repr(self) -> str:
        return f'{super().extra_repr()}, {self._settings_repr()}'
