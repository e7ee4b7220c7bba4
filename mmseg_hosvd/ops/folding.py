"""Conv-BatchNorm folding at run time, for BatchNorm in eval mode.

An eval-mode BatchNorm is a per-channel affine map, ``y = x * s + t`` with
``s = gamma / sqrt(running_var + eps)`` and ``t = beta - running_mean * s``.
Applied to a conv's output it folds into the conv's weight and bias
(``W * s``, ``(b - running_mean) * s + beta``), so autograd keeps no input
for the BatchNorm; gradients still reach ``gamma``/``beta`` through the
folded weight and bias (exact whenever the conv's weight gradient is).
This is the idea of mmcv's ``efficient_conv_bn_eval`` applied to a conv and a
BatchNorm that are separate modules (ResNet blocks, ``nn.Sequential``).

:class:`NormFolding` (a component of :class:`NormFoldingConv2d` and of
the compressed conv) makes the conv apply the eval-mode BatchNorm itself,
on every call: through the folded weight and bias where the folded weight
is smaller than the conv's output, otherwise by normalising its output
(:meth:`LeanBatchNorm2d.normalize`). A folded :class:`LeanBatchNorm2d` is
then the identity while in eval mode. Both sides read only configuration
(the fold, set once by :meth:`NormFolding.fold`) and the same BatchNorm's
``training`` flag, never a per-call flag, so they cannot fall out of step
(an exception or a recomputation between the two calls changes nothing).
Folding costs one weight-sized tensor (the folded weight, kept by the
conv): it is meant for BatchNorms whose ``gamma`` trains; a frozen
eval-mode :class:`LeanBatchNorm2d` keeps only its scale without folding.
Pure torch: no mmengine/mmcv.
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


class NormFolding:
    """The eval-mode BatchNorm that a conv applies itself: a component (a
    plain attribute, not a submodule) held by :class:`NormFoldingConv2d` and
    :class:`~.conv.CompressedConv2d`.

    After :meth:`fold`, while that BatchNorm is in eval mode,
    :meth:`conv_forward` applies it: with the conv's folded weight and bias
    when the folded weight, kept for backward instead of the BatchNorm's
    input, is smaller than the output (:func:`folding_pays`), otherwise by
    normalising the conv's output; the BatchNorm module itself is then the
    identity (:attr:`LeanBatchNorm2d.folded`).

    Args:
        out_channels: the conv's output channels (the BatchNorm's width).
        always: fold whenever the BatchNorm is in eval mode, also without
            grad and whatever the sizes (a frozen conv and BatchNorm: one
            output tensor instead of two in the forward).
    """

    def __init__(self, out_channels: int, always: bool = False) -> None:
        self.out_channels = out_channels
        self.always = always
        self.norm: Optional['LeanBatchNorm2d'] = None

    def fold(self, norm: Optional['LeanBatchNorm2d']) -> None:
        """Apply ``norm`` (the BatchNorm reading the conv's output) while it
        is in eval mode; ``None`` stops folding. ``norm`` is not registered
        as a submodule (``state_dict`` is unchanged); it is marked
        :attr:`~LeanBatchNorm2d.folded` (a previous one is unmarked)."""
        if norm is not None and not isinstance(norm, LeanBatchNorm2d):
            raise TypeError(f'fold_norm: expected a LeanBatchNorm2d (which '
                            f'then passes its input through), got '
                            f'{type(norm).__name__}')
        if norm is not None and norm.num_features != self.out_channels:
            raise ValueError(
                f'fold_norm: BatchNorm of {norm.num_features} features '
                f'after a conv of {self.out_channels} output channels')
        if self.norm is not None:
            self.norm.folded = False
        if norm is not None:
            norm.folded = True
        self.norm = norm

    def conv_forward(self, conv: nn.Conv2d, input: Tensor) -> Tensor:
        """``norm(conv(input))`` while the folded BatchNorm is in eval mode,
        else ``conv(input)``, through ``conv._conv_forward``."""
        norm = self.norm
        if norm is None or norm.training:
            return conv._conv_forward(input, conv.weight, conv.bias)
        if self.always or folding_pays(conv, input):
            weight, bias = fold_batch_norm(conv.weight, conv.bias, norm)
            return conv._conv_forward(input, weight, bias)
        return norm.normalize(
            conv._conv_forward(input, conv.weight, conv.bias))


def folding_pays(conv: nn.Conv2d, input: Tensor) -> bool:
    """Whether the folded weight of ``conv`` (kept instead of the
    BatchNorm's input) is smaller than its output for ``input``."""
    if input.dim() != 4 or not torch.is_grad_enabled():
        return False
    if isinstance(conv.padding, str):  # 'same'/'valid'
        return input.shape[0] * conv.out_channels * input.shape[
            2] * input.shape[3] > conv.weight.numel()
    size = 1
    for extent, kernel, stride, pad, dilation in zip(
            input.shape[2:], conv.kernel_size, conv.stride, conv.padding,
            conv.dilation):
        size *= (extent + 2 * pad - dilation * (kernel - 1) - 1) // \
            stride + 1
    return input.shape[0] * conv.out_channels * size > conv.weight.numel()


class NormFoldingConv2d(nn.Conv2d):
    """``nn.Conv2d`` that applies the following eval-mode BatchNorm itself.

    Its :class:`NormFolding` (:attr:`norm_folding`), after
    :meth:`fold_norm`, with that BatchNorm in eval mode and grad enabled,
    makes ``forward`` apply that BatchNorm too (``_conv_forward(x, W * s,
    (b - mean) * s + beta)`` when the folded weight is smaller than the
    output); otherwise it is ``nn.Conv2d.forward``. No parameters or
    buffers of its own.
    """

    def __init__(self, *args, **kwargs) -> None:
        super().__init__(*args, **kwargs)
        self.norm_folding = NormFolding(self.out_channels)

    @property
    def folded_norm(self) -> Optional[_BatchNorm]:
        """The BatchNorm folded into this conv, or None."""
        return self.norm_folding.norm

    def fold_norm(self, norm: Optional['LeanBatchNorm2d']) -> None:
        """See :meth:`NormFolding.fold`."""
        self.norm_folding.fold(norm)

    def forward(self, input: Tensor) -> Tensor:
        return self.norm_folding.conv_forward(self, input)

    @classmethod
    def from_conv(cls, conv: nn.Conv2d,
                  always: bool = False) -> 'NormFoldingConv2d':
        """A NormFoldingConv2d sharing ``conv``'s Parameter objects
        (``always``: see :class:`NormFolding`)."""
        folding = cls(conv.in_channels, conv.out_channels, conv.kernel_size,
                      stride=conv.stride, padding=conv.padding,
                      dilation=conv.dilation, groups=conv.groups,
                      bias=conv.bias is not None,
                      padding_mode=conv.padding_mode, device='meta')
        folding.weight = conv.weight
        folding.bias = conv.bias
        folding.norm_folding.always = always
        folding.train(conv.training)
        return folding


class LeanBatchNorm2d(nn.BatchNorm2d):
    """``nn.BatchNorm2d`` that keeps no input for backward in eval mode.

    In eval mode it is the affine map ``x * s + t``:

    * :attr:`folded` (folded into the conv before it by
      :meth:`NormFolding.fold`, which then applies it): the identity;
    * otherwise :meth:`normalize`: with frozen affine parameters ``x * s +
      t`` with ``s``, ``t`` constants, which keeps only ``s`` (``Cout``
      numbers) for backward; with a trainable ``gamma`` (which needs the
      input) ``BatchNorm2d``.

    Training mode is plain ``BatchNorm2d``. Shares the original's
    Parameters and buffers, so ``state_dict`` is unchanged.
    """

    #: applied by the conv before it while in eval mode (configuration set
    #: by :meth:`NormFolding.fold`; a plain attribute, not in ``state_dict``)
    folded: bool = False

    def forward(self, input: Tensor) -> Tensor:
        if self.folded and not self.training:
            return input  # the folding conv applied it
        return self.normalize(input)

    def normalize(self, input: Tensor) -> Tensor:
        """This BatchNorm applied to ``input`` ``(B, C, H, W)``, keeping for
        backward no more than the class docstring says."""
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
