"""Conv-BatchNorm folding at run time, for BatchNorm in eval mode.

An eval-mode BatchNorm is a per-channel affine map, ``y = x * s + t`` with
``s = gamma / sqrt(running_var + eps)`` and ``t = beta - running_mean * s``.
Applied to a conv's output it folds into the conv's weight and bias
(``W * s``, ``(b - running_mean) * s + beta``), so autograd keeps no input
for the BatchNorm; gradients still reach ``gamma``/``beta`` through the
folded weight and bias (exact whenever the conv's weight gradient is).
This is the idea of mmcv's ``efficient_conv_bn_eval`` applied to a conv and a
BatchNorm that are separate modules (ResNet blocks, ``nn.Sequential``).

:class:`NormFoldingConv2d` does the folding in ``forward`` and
:class:`LeanBatchNorm2d` (``folded``) passes its input through while in
eval mode; both look at the same BatchNorm's ``training`` flag, so they
switch together. Folding costs one weight-sized tensor (the folded weight,
kept by the conv): it is meant for BatchNorms whose ``gamma`` trains; a
frozen eval-mode :class:`LeanBatchNorm2d` keeps only its scale without
folding. Pure torch: no mmengine/mmcv.
"""
from typing import Optional, Tuple

import torch
import torch.nn as nn
from torch import Tensor
from torch.nn.modules.batchnorm import _BatchNorm


def fold_batch_norm(weight: Tensor, bias: Optional[Tensor],
                    norm: _BatchNorm) -> Tuple[Tensor, Tensor]:
    """The conv weight ``(Cout, Cin/groups, kh, kw)`` and bias ``(Cout,)`` of
    ``norm(conv(x))`` for ``norm`` in eval mode (running statistics).

    Differentiable in ``weight``, ``bias`` and the BatchNorm's affine
    parameters."""
    if norm.running_var is None or norm.running_mean is None:
        raise ValueError('fold_batch_norm: the BatchNorm tracks no running '
                         'statistics (track_running_stats=False)')
    scale = (norm.running_var + norm.eps).rsqrt()
    if norm.weight is not None:
        scale = norm.weight * scale
    shift = -norm.running_mean if bias is None else bias - norm.running_mean
    folded_bias = shift * scale
    if norm.bias is not None:
        folded_bias = folded_bias + norm.bias
    folded_weight = weight * scale.reshape(-1, *([1] * (weight.dim() - 1)))
    return folded_weight, folded_bias


class _NormRef:
    """Holds a BatchNorm without registering it as a submodule (its
    parameters stay where they are in ``state_dict``)."""

    def __init__(self, norm: _BatchNorm) -> None:
        self.norm = norm


class NormFoldingConv2d(nn.Conv2d):
    """``nn.Conv2d`` that applies the following eval-mode BatchNorm itself.

    After :meth:`fold_norm`, with that BatchNorm in eval mode and grad
    enabled, ``forward`` calls ``_conv_forward(x, W * s, (b - mean) * s +
    beta)`` when the folded weight (kept for backward instead of the
    BatchNorm's input) is smaller than the output; otherwise it is
    ``nn.Conv2d.forward``. No parameters or buffers of its own.
    """

    _norm_ref: Optional[_NormRef] = None

    @property
    def folded_norm(self) -> Optional[_BatchNorm]:
        return None if self._norm_ref is None else self._norm_ref.norm

    def fold_norm(self, norm: Optional['LeanBatchNorm2d']) -> None:
        """Apply ``norm`` (the BatchNorm reading this conv's output) while it
        is in eval mode; ``None`` stops folding. ``norm`` is not registered
        as a submodule (``state_dict`` is unchanged)."""
        if norm is not None and not isinstance(norm, LeanBatchNorm2d):
            raise TypeError(f'fold_norm: expected a LeanBatchNorm2d (which '
                            f'then passes its input through), got '
                            f'{type(norm).__name__}')
        if norm is not None and norm.num_features != self.out_channels:
            raise ValueError(
                f'fold_norm: BatchNorm of {norm.num_features} features '
                f'after a conv of {self.out_channels} output channels')
        self._norm_ref = None if norm is None else _NormRef(norm)

    def forward(self, input: Tensor) -> Tensor:
        norm = self.folded_norm
        if norm is None or norm.training or not self._folding_pays(input):
            return self._conv_forward(input, self.weight, self.bias)
        weight, bias = fold_batch_norm(self.weight, self.bias, norm)
        norm.skip_next = True
        return self._conv_forward(input, weight, bias)

    def _folding_pays(self, input: Tensor) -> bool:
        """Whether the folded weight (kept instead of the BatchNorm's
        input) is smaller than this call's output."""
        if input.dim() != 4 or not torch.is_grad_enabled():
            return False
        if isinstance(self.padding, str):  # 'same'/'valid'
            return input.shape[0] * self.out_channels * input.shape[
                2] * input.shape[3] > self.weight.numel()
        size = 1
        for extent, kernel, stride, pad, dilation in zip(
                input.shape[2:], self.kernel_size, self.stride, self.padding,
                self.dilation):
            size *= (extent + 2 * pad - dilation * (kernel - 1) - 1) // \
                stride + 1
        return input.shape[0] * self.out_channels * size > self.weight.numel()

    @classmethod
    def from_conv(cls, conv: nn.Conv2d) -> 'NormFoldingConv2d':
        """A NormFoldingConv2d sharing ``conv``'s Parameter objects."""
        folding = cls(conv.in_channels, conv.out_channels, conv.kernel_size,
                      stride=conv.stride, padding=conv.padding,
                      dilation=conv.dilation, groups=conv.groups,
                      bias=conv.bias is not None,
                      padding_mode=conv.padding_mode, device='meta')
        folding.weight = conv.weight
        folding.bias = conv.bias
        folding.train(conv.training)
        return folding


class LeanBatchNorm2d(nn.BatchNorm2d):
    """``nn.BatchNorm2d`` that keeps no input for backward in eval mode.

    In eval mode it is the affine map ``x * s + t``:

    * :attr:`skip_next` (set by a :class:`NormFoldingConv2d` that folded
      this BatchNorm into its weight for the call): the identity;
    * affine parameters frozen: ``x * s + t`` with ``s``, ``t`` constants,
      which keeps only ``s`` (``Cout`` numbers) for backward;
    * otherwise (trainable ``gamma`` needs the input): ``BatchNorm2d``.

    Training mode is plain ``BatchNorm2d``. Shares the original's
    Parameters and buffers, so ``state_dict`` is unchanged.
    """

    #: set by the folding conv for the call that applied this BatchNorm;
    #: consumed by the next ``forward``
    skip_next: bool = False

    def forward(self, input: Tensor) -> Tensor:
        if self.skip_next:
            self.skip_next = False
            return input
        if self.training:
            return super().forward(input)
        if not (torch.is_grad_enabled() and input.requires_grad) or (
                self.affine and (self.weight.requires_grad
                                 or self.bias.requires_grad)):
            # nothing to save (BatchNorm's own kernel is the fastest), or
            # a trainable gamma that needs the input
            return super().forward(input)
        with torch.no_grad():
            scale = (self.running_var + self.eps).rsqrt()
            if self.weight is not None:
                scale = scale * self.weight
            shift = -self.running_mean * scale
            if self.bias is not None:
                shift = shift + self.bias
        shape = (1, -1) + (1, ) * (input.dim() - 2)
        return torch.addcmul(shift.to(input.dtype).view(shape), input,
                             scale.to(input.dtype).view(shape))

    @classmethod
    def from_norm(cls, norm: _BatchNorm) -> 'LeanBatchNorm2d':
        lean = cls(norm.num_features, eps=norm.eps, momentum=norm.momentum,
                   affine=norm.affine,
                   track_running_stats=norm.track_running_stats,
                   device='meta')
        lean.weight = norm.weight
        lean.bias = norm.bias
        for name in ('running_mean', 'running_var', 'num_batches_tracked'):
            lean._buffers[name] = norm._buffers.get(name)
        lean.train(norm.training)
        return lean
