"""Conv2d whose saved input activation is compressed for the weight gradient.

Layer 2: the module :class:`CompressedConv2d`, on top of the functional
:func:`~.conv_functional.compressed_conv2d` and the autograd Functions of
:mod:`.conv_autograd`; method registry in :mod:`.methods`, accounting in
:mod:`.accounting`, gradient maths in :mod:`.conv_gradients`.

Methods (:data:`~.methods.MODULE_METHODS`):

* ``'hosvd'``: truncated Tucker factors of the input are kept; grad_weight is
  computed from them, grad_input and grad_bias are exact.
* ``'svd'``: truncated SVD of the ``(B, C*H*W)`` reshape is kept; grad_weight
  from the factors, grad_input and grad_bias exact.
* ``'gradient_filter'``: the patch-summed input and kernel-summed weight are
  kept; grad_weight and grad_input are the Gradient Filter approximations,
  grad_bias is exact.
* ``'asi'`` (module only, it has per-layer state): Tucker factors from one
  warm-started subspace-iteration step with fixed ranks
  (:mod:`mmseg_hosvd.decomposition.subspace_iteration`); backward as
  ``'hosvd'``.

Where the factors at ``eps`` would take more elements than the input (e.g.
``eps == 1``), the input itself is kept: never more bytes than the input.
Factors are kept in the input's dtype (half-precision inputs: computed in
float32, stored in the half type; their gradients are computed in float32).

Inside a model, the :class:`CompressedConv2d` s share one
:class:`~.context.CompressionContext`: an input read by several of them is
decomposed once and the same factor tensors are saved by each.

The forward output is always the exact ``F.conv2d``. A non-finite input
(NaN/Inf) depends on ``non_finite`` (:data:`NON_FINITE_MODES`): with
``'raise'`` HOSVD/SVD (and ASI's first step) raise
:class:`FloatingPointError` naming the layer (detected with the
decomposition's single host synchronisation), while the Gradient Filter, ASI
and vanilla, which need no synchronisation, let NaN propagate as
``nn.Conv2d`` does; with ``'skip'`` nothing raises: HOSVD/SVD keep nothing
and their grad_weight is NaN (grad_input and grad_bias stay exact), so that
an optimizer guard can skip the step. Every call flags a non-finite input in
:attr:`~.accounting.CompressionStats.non_finite`.
"""
from typing import Optional, Tuple, Union

import torch
import torch.nn as nn
import torch.nn.functional as F
from torch import Tensor
from torch.nn.modules.utils import _pair

from ..decomposition import check_eps
from .accounting import CompressionStats
from .context import CompressionContext
from .conv_autograd import _ShapeOnlyPad
from .conv_functional import (compressed_conv2d, low_rank_conv2d,
                              non_finite_conv2d)
from .conv_gradients import ConvGeometry, Pair
from .folding import LeanBatchNorm2d, NormFolding
from .gradient_filter import check_radius
from .input_factors import autocast_arguments
from .layer_base import CompressedLayerMixin, share_parameters
from .methods import (MODULE_METHODS, check_method, check_non_finite,
                      method_spec)


class CompressedConv2d(CompressedLayerMixin, nn.Conv2d):
    """``nn.Conv2d`` that keeps a compressed input for its weight gradient.

    Its :class:`~.folding.NormFolding` (:attr:`norm_folding`): after
    :meth:`fold_norm`, the conv applies the following eval-mode BatchNorm
    itself, folded into the weight and bias passed to :meth:`_conv_forward`
    where that pays (the compressed input is the same).

    All work happens in :meth:`_conv_forward`, so code that calls
    ``conv._conv_forward(x, folded_weight, folded_bias)`` (conv-BN folding)
    composes with it. A call is compressed when ``torch.is_grad_enabled()``
    and ``weight.requires_grad`` (whether or not the module is in training
    mode) and the input is not empty; otherwise it is the plain
    ``nn.Conv2d`` computation, which under ``torch.no_grad()`` keeps nothing
    and leaves :attr:`last_stats` alone.

    Padding: symmetric zero padding is passed to the convolution. Any other
    padding (``padding_mode`` other than ``'zeros'``, or the asymmetric
    padding of ``padding='same'`` with an even effective kernel) is applied
    explicitly first, exactly as ``nn.Conv2d`` does, and the *padded* input
    is compressed (its shape is the one reported in :attr:`last_stats`).

    Args:
        method: one of :data:`MODULE_METHODS`; ``'vanilla'`` compresses
            nothing (the plain conv keeps its full input) and only records
            its size in :attr:`last_stats`; ``'asi'`` keeps its per-layer
            ranks and bases in :attr:`context` under :attr:`name`.
        eps: HOSVD/SVD explained-energy fraction in (0, 1] (ASI: the rank
            rule of the first step, unless the context's tracker has a
            memory budget).
        radius: Gradient Filter patch radius, int >= 1.
        name: module path, used in error messages (and as the ASI state key).
        non_finite: one of :data:`NON_FINITE_MODES`, what a NaN/Inf input
            does: ``'raise'`` (HOSVD/SVD and ASI's first step raise, the
            other methods let NaN propagate, as ``nn.Conv2d``) or
            ``'skip'`` (nothing raises; HOSVD/SVD/ASI-first-step keep
            nothing of the input and give a NaN grad_weight, grad_input and
            grad_bias stay exact). Either way
            :attr:`CompressionStats.non_finite` flags the call.
        Other arguments: as ``nn.Conv2d``.

    Under autocast the arguments are cast as autocast casts ``F.conv2d``'s;
    decompositions run in float32, factors are kept in the cast dtype.

    Attributes:
        last_stats: :class:`CompressionStats` of the latest compressed call
            (None before); inside :meth:`summing_stats`, of the block's
            calls together.
        context: :class:`~.context.CompressionContext`: the module's own
            until :func:`~mmseg_hosvd.surgery.install_compression` gives all
            convs of a model one shared context (input sharing, ASI state).

    Raises:
        FloatingPointError: in forward, for HOSVD/SVD (ASI: on its first
            step), when the input contains NaN/Inf and ``non_finite`` is
            ``'raise'``; the message names :attr:`name`.
    """

    _LAYER = 'CompressedConv2d'

    def __init__(self,
                 in_channels: int,
                 out_channels: int,
                 kernel_size: Union[int, Pair],
                 stride: Union[int, Pair] = 1,
                 padding: Union[str, int, Pair] = 0,
                 dilation: Union[int, Pair] = 1,
                 groups: int = 1,
                 bias: bool = True,
                 padding_mode: str = 'zeros',
                 device=None,
                 dtype=None,
                 *,
                 method: str = 'hosvd',
                 eps: float = 0.8,
                 radius: int = 2,
                 name: str = '',
                 non_finite: str = 'raise') -> None:
        check_method(method, MODULE_METHODS)
        check_eps(eps)
        check_radius(radius)
        check_non_finite(non_finite)
        super().__init__(in_channels, out_channels, kernel_size, stride,
                         padding, dilation, groups, bias, padding_mode,
                         device, dtype)
        self.method = method
        self.eps = eps
        self.radius = radius
        self.name = name
        self.non_finite = non_finite
        self.last_stats: Optional[CompressionStats] = None
        #: shared with the other compressed convs of a model by
        #: :func:`~mmseg_hosvd.surgery.install_compression`; a plain
        #: attribute (nothing enters ``state_dict``).
        self.context = CompressionContext(share_inputs=False)
        #: the eval-mode BatchNorm this conv may apply itself (plain
        #: attribute, see :meth:`fold_norm`)
        self.norm_folding = NormFolding(self.out_channels)

    def _check_method(self, value: str) -> str:
        return check_method(value, MODULE_METHODS)

    @property
    def radius(self) -> int:
        return self._radius

    @radius.setter
    def radius(self, value: int) -> None:
        self._radius = check_radius(value)

    @classmethod
    def from_conv(cls,
                  conv: nn.Conv2d,
                  method: str,
                  eps: float = 0.8,
                  radius: int = 2,
                  name: str = '',
                  non_finite: str = 'raise') -> 'CompressedConv2d':
        """A CompressedConv2d sharing ``conv``'s Parameter objects.

        Same hyper-parameters and training flag; no extra parameters or
        buffers, so ``state_dict`` keys equal ``nn.Conv2d``'s. Hooks are not
        copied.
        """
        if not isinstance(conv, nn.Conv2d):
            raise TypeError(f'expected an nn.Conv2d, got {type(conv)}')
        compressed = cls(conv.in_channels,
                         conv.out_channels,
                         conv.kernel_size,
                         stride=conv.stride,
                         padding=conv.padding,
                         dilation=conv.dilation,
                         groups=conv.groups,
                         bias=conv.bias is not None,
                         padding_mode=conv.padding_mode,
                         device='meta',
                         method=method,
                         eps=eps,
                         radius=radius,
                         name=name,
                         non_finite=non_finite)
        share_parameters(conv, compressed)
        return compressed

    def to_conv(self) -> nn.Conv2d:
        """A plain ``nn.Conv2d`` sharing this module's Parameter objects."""
        conv = nn.Conv2d(self.in_channels,
                         self.out_channels,
                         self.kernel_size,
                         stride=self.stride,
                         padding=self.padding,
                         dilation=self.dilation,
                         groups=self.groups,
                         bias=self.bias is not None,
                         padding_mode=self.padding_mode,
                         device='meta')
        share_parameters(self, conv)
        return conv

    @property
    def folded_norm(self) -> Optional[LeanBatchNorm2d]:
        """The BatchNorm folded into this conv, or None."""
        return self.norm_folding.norm

    def fold_norm(self, norm: Optional[LeanBatchNorm2d]) -> None:
        """Apply ``norm`` (the eval-mode BatchNorm after this conv) in
        :meth:`forward`; see :meth:`~.folding.NormFolding.fold`."""
        self.norm_folding.fold(norm)

    def forward(self, input: Tensor) -> Tensor:
        return self.norm_folding.conv_forward(self, input)

    def _conv_forward(self, input: Tensor, weight: Tensor,
                      bias: Optional[Tensor]) -> Tensor:
        """``nn.Conv2d._conv_forward``, compressed (see the class)."""
        if not self._compresses(input, weight):
            return super()._conv_forward(input, weight, bias)
        if input.dim() == 3:  # unbatched (C, H, W), as nn.Conv2d accepts
            return self._conv_forward(input.unsqueeze(0), weight,
                                      bias).squeeze(0)
        spec = method_spec(self.method)
        if spec.decomposition == 'none':
            self._record_vanilla(input)
            return super()._conv_forward(input, weight, bias)
        padded_input, padding = self._explicitly_padded(input)
        geometry = ConvGeometry(_pair(self.stride), padding,
                                _pair(self.dilation), self.groups)
        if spec.low_rank:
            output, stats = self._low_rank_forward(padded_input, weight, bias,
                                                   geometry)
            self._set_stats(stats)
            return output
        output, stats = compressed_conv2d(padded_input,
                                          weight,
                                          bias,
                                          geometry,
                                          method=self.method,
                                          eps=self.eps,
                                          radius=self.radius,
                                          name=self.name,
                                          non_finite=self.non_finite)
        self._set_stats(stats)
        return output

    def _low_rank_forward(self, input: Tensor, weight: Tensor,
                          bias: Optional[Tensor], geometry: ConvGeometry
                          ) -> Tuple[Tensor, CompressionStats]:
        """HOSVD/SVD/ASI: factors from the context's cache when another conv
        already decomposed this very input with the same settings, else
        decomposed here (and cached). A non-finite input skipped by
        ``non_finite='skip'`` is cached as None: its readers keep nothing."""
        if input.dim() != 4:
            raise ValueError(f'expected a 4-D (B, C, H, W) input, got shape '
                             f'{tuple(input.shape)}')
        cast_input, weight, bias = autocast_arguments(input, weight, bias)
        with torch.autocast(input.device.type, enabled=False):
            factors, reused = self._shared_factors(input, cast_input.detach())
            if factors is None:
                return non_finite_conv2d(cast_input, weight, bias, geometry,
                                         self.method, reused=reused)
            return low_rank_conv2d(cast_input, weight, bias, geometry,
                                   self.method, self.eps, self.name, 'auto',
                                   factors=factors, reused=reused)

    def _explicitly_padded(self, input: Tensor) -> Tuple[Tensor, Pair]:
        """The input to compress and the symmetric padding left to the conv."""
        left, right, top, bottom = self._reversed_padding_repeated_twice
        if self.padding_mode == 'zeros' and left == right and top == bottom:
            return input, (top, left)
        pads = tuple(self._reversed_padding_repeated_twice)
        if self.padding_mode == 'zeros':  # its backward saves no tensor
            return F.pad(input, pads), (0, 0)
        return _ShapeOnlyPad.apply(input, pads, self.padding_mode), (0, 0)

    def extra_repr(self) -> str:
        return (f'{super().extra_repr()}, '
                f'{self._settings_repr(f", radius={self.radius}")}')
