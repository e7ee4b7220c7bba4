"""What :class:`~.conv.CompressedConv2d` and :class:`~.linear.CompressedLinear`
have in common.

Layer 2: :class:`CompressedLayerMixin`, a base placed before ``nn.Conv2d`` /
``nn.Linear``: the validated settings (``method``, ``eps``,
``non_finite``), the compression test of a call, the vanilla record, the
shared-input factor cache and the decomposition (ASI included) whose errors
name the layer, and the settings text of ``extra_repr``. It adds no
parameter, buffer or submodule (``state_dict`` keys stay those of the
``nn`` layer). :func:`share_parameters` hands Parameter objects over.
"""
from contextlib import contextmanager
from typing import Iterator, List, Optional, Tuple

import torch
import torch.nn as nn
from torch import Tensor

from .accounting import CompressionStats, concatenated_stats, vanilla_stats
from .context import CompressionContext
from ..decomposition import check_eps
from .input_factors import FACTORIZERS, Factors, decompose
from .methods import check_non_finite, method_spec


class CompressedLayerMixin:
    """Settings and factor sharing of a compressed ``nn.Conv2d``/``nn.Linear``.

    A subclass sets, in its ``__init__``, :attr:`name`, :attr:`method`,
    :attr:`eps`, :attr:`non_finite`, ``last_stats`` and :attr:`context`, and
    defines :meth:`_check_method`.

    Class attributes:
        _LAYER: the class name shown in error messages.
        _CACHE_TAG: prefix of the shared-input cache's configuration, so
            that layers whose factors differ in layout never share them.
    """

    _LAYER = 'CompressedLayer'
    _CACHE_TAG: Tuple[str, ...] = ()

    name: str
    last_stats: Optional[CompressionStats]
    context: CompressionContext
    #: stats of the calls inside :meth:`summing_stats` (None outside)
    _stats_parts: Optional[List[CompressionStats]] = None

    def _check_method(self, value: str) -> str:
        """``value`` if the layer supports that method, else ValueError."""
        raise NotImplementedError

    @property
    def method(self) -> str:
        return self._method

    @method.setter
    def method(self, value: str) -> None:
        self._method = self._check_method(value)

    @property
    def eps(self) -> float:
        return self._eps

    @eps.setter
    def eps(self, value: float) -> None:
        self._eps = check_eps(value)

    @property
    def non_finite(self) -> str:
        return self._non_finite

    @non_finite.setter
    def non_finite(self, value: str) -> None:
        self._non_finite = check_non_finite(value)

    @staticmethod
    def _compresses(input: Tensor, weight: Tensor) -> bool:
        """A call is compressed when grad is enabled, ``weight`` requires
        grad and ``input`` is not empty."""
        return (torch.is_grad_enabled() and weight.requires_grad and
                input.numel() > 0)

    def _record_vanilla(self, input: Tensor) -> None:
        """:attr:`last_stats` of a ``'vanilla'`` call: the full input kept."""
        self._set_stats(vanilla_stats(input))

    def _set_stats(self, stats: CompressionStats) -> None:
        """Record a compressed call's stats: ``last_stats``, or inside
        :meth:`summing_stats` the concatenation of the block's calls."""
        parts = self._stats_parts
        if parts is None:
            self.last_stats = stats
            return
        parts.append(stats)
        self.last_stats = concatenated_stats(parts)

    @contextmanager
    def summing_stats(self) -> Iterator[None]:
        """A block whose calls read the parts of one input concatenated
        along dim 1 (a conv's input channels; the weight sliced to each
        part's channels): ``last_stats`` is then one record of them all
        (:func:`~.accounting.concatenated_stats`: kept bytes summed over
        the parts, each storage once), not the last call's. Left alone
        when no call inside compresses."""
        if self._stats_parts is not None:
            raise RuntimeError(f'{self._LAYER} {self.name!r}: summing_stats '
                               'blocks do not nest')
        self._stats_parts = []
        try:
            yield
        finally:
            del self._stats_parts  # back to the class default, None

    def _shared_factors(self, input: Tensor, activation: Tensor
                        ) -> Tuple[Optional[Factors], bool]:
        """``(factors, reused)`` of ``activation`` (``input`` cast, detached
        and viewed as it is decomposed): from the context's cache when
        another layer already decomposed this very ``input`` with the same
        settings, else decomposed here and cached. None: a non-finite input
        skipped by ``non_finite='skip'``. Call with autocast disabled."""
        context = self.context
        cache = context.cache
        config = self._CACHE_TAG + (self.method, self.eps, activation.dtype,
                                    self.non_finite)
        found = cache.get(input, config) if cache is not None else None
        if found is not None:
            factors, owner = found
            context.aliases[self.name] = owner
            return factors, True
        factors = self._decompose(activation)
        if cache is not None:
            cache.put(input, config, factors, self.name)
        return factors, False

    def _decompose(self, activation: Tensor) -> Optional[Factors]:
        """HOSVD/SVD/ASI factors of ``activation`` (or the activation itself
        where they would be larger), or None (non-finite, ``'skip'``);
        FloatingPointError naming the layer with ``'raise'``."""
        spec = method_spec(self.method)
        if spec.stateful:
            tracker, name = self.context.subspaces, self.name

            def factorize(activation, eps, max_elements):
                return tracker.decompose(name, activation, eps)
        else:
            factorize = FACTORIZERS[spec.decomposition]
        return decompose(self.method, activation, self.eps, self.name,
                         self.non_finite, layer=self._LAYER,
                         factorize=factorize)

    def _settings_repr(self, extra: str = '') -> str:
        """``method``, ``eps``, ``extra``, then ``non_finite`` (unless
        ``'raise'``) and ``name`` (if any), for ``extra_repr``."""
        text = f'method={self.method!r}, eps={self.eps}{extra}'
        if self.non_finite != 'raise':
            text += f', non_finite={self.non_finite!r}'
        if self.name:
            text += f', name={self.name!r}'
        return text


def share_parameters(source: nn.Module, target: nn.Module) -> None:
    """Make ``target`` use ``source``'s ``weight``/``bias`` Parameter
    objects and training flag."""
    target.weight = source.weight
    target.bias = source.bias
    target.train(source.training)
