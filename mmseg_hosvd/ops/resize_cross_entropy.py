"""Bilinear resize + cross-entropy that never holds the whole batch at full
resolution.

A segmentation head's loss upsamples its logits ``(B, K, h, w)`` to the label
size ``(H, W)`` and takes a per-pixel cross-entropy; autograd then keeps the
full-resolution log-softmax ``(B, K, H, W)`` (e.g. 168 MiB in float32 at
batch 8, 512x512, 21 classes) until backward. :func:`resize_cross_entropy`
computes the same summed loss, but keeps only the low-resolution logits and
the labels: forward and backward walk the batch ``chunk`` samples at a time,
upsampling one chunk, reducing it and dropping it, and backward recomputes the
chunk's upsampling and softmax. Peak extra memory: about three
``(chunk, K, H, W)`` float tensors.

The gradient of ``sum_p w[y_p] * (logsumexp(Z_p) - Z_p[y_p])`` with respect
to the upsampled logits ``Z`` is ``w[y_p] * (softmax(Z_p) - onehot(y_p))``
(0 where ``y_p == ignore_index``); it is carried back to the low-resolution
logits through the adjoint of the (linear) bilinear upsampling.
"""
from typing import Optional, Tuple

import torch
import torch.nn.functional as F
from torch import Tensor
from torch.autograd import Function
from torch.autograd.function import once_differentiable

REDUCED_PRECISION = (torch.float16, torch.bfloat16)


def _upsample(logits: Tensor, size: Tuple[int, int],
              align_corners: bool) -> Tensor:
    """Bilinear upsampling as mmseg's ``resize`` does it (float32 for
    half-precision logits, as the cross-entropy runs in float32)."""
    if logits.dtype in REDUCED_PRECISION:
        logits = logits.float()
    return F.interpolate(logits, size=size, mode='bilinear',
                         align_corners=align_corners)


class ResizeCrossEntropy(Function):
    """Autograd op of :func:`resize_cross_entropy` (see there)."""

    @staticmethod
    def forward(ctx, logits: Tensor, labels: Tensor,
                class_weight: Optional[Tensor], ignore_index: int,
                align_corners: bool, chunk: int) -> Tuple[Tensor, Tensor]:
        size = tuple(labels.shape[1:])
        dtype = (torch.float32
                 if logits.dtype in REDUCED_PRECISION else logits.dtype)
        loss = logits.new_zeros((), dtype=dtype)
        correct = torch.zeros((), dtype=torch.int64, device=logits.device)
        for start in range(0, logits.shape[0], chunk):
            label = labels[start:start + chunk]
            upsampled = _upsample(logits[start:start + chunk], size,
                                  align_corners)
            weight = (None if class_weight is None else
                      class_weight.to(upsampled.dtype))
            loss += F.cross_entropy(upsampled, label, weight=weight,
                                    ignore_index=ignore_index,
                                    reduction='sum')
            hit = upsampled.topk(1, dim=1)[1].squeeze(1).eq(label)
            correct += (hit & label.ne(ignore_index)).sum()
            del upsampled, hit
        ctx.save_for_backward(logits, labels, class_weight)
        ctx.ignore_index, ctx.align_corners, ctx.chunk = (ignore_index,
                                                          align_corners, chunk)
        ctx.mark_non_differentiable(correct)
        return loss, correct

    @staticmethod
    @once_differentiable
    def backward(ctx, grad_loss: Tensor, _grad_correct: Optional[Tensor]):
        logits, labels, class_weight = ctx.saved_tensors
        size = tuple(labels.shape[1:])
        grad = torch.empty_like(logits)
        for start in range(0, logits.shape[0], ctx.chunk):
            label = labels[start:start + ctx.chunk]
            low = logits[start:start + ctx.chunk].detach().requires_grad_()
            with torch.enable_grad():
                upsampled = _upsample(low, size, ctx.align_corners)
            grad_up = _cross_entropy_grad(upsampled.detach(), label,
                                          class_weight, ctx.ignore_index)
            grad_up.mul_(grad_loss)
            grad[start:start + ctx.chunk], = torch.autograd.grad(
                upsampled, low, grad_up)
            del upsampled, grad_up
        return grad, None, None, None, None, None


def _cross_entropy_grad(upsampled: Tensor, label: Tensor,
                        class_weight: Optional[Tensor],
                        ignore_index: int) -> Tensor:
    """``d sum_p w[y_p] CE(Z_p, y_p) / dZ`` for ``Z`` (N, K, H, W) and
    labels (N, H, W): ``w[y] * (softmax(Z) - onehot(y))``, 0 at ignored
    pixels. Returns a new (N, K, H, W) tensor."""
    valid = label.ne(ignore_index)
    target = torch.where(valid, label, torch.zeros_like(label)).unsqueeze(1)
    grad = torch.softmax(upsampled, dim=1)
    grad.scatter_add_(1, target, grad.new_full(target.shape, -1.0))
    pixel_weight = valid.to(grad.dtype)
    if class_weight is not None:
        pixel_weight = pixel_weight * class_weight.to(grad.dtype)[target[:, 0]]
    return grad.mul_(pixel_weight.unsqueeze(1))


def resize_cross_entropy(logits: Tensor,
                         labels: Tensor,
                         class_weight: Optional[Tensor] = None,
                         ignore_index: int = 255,
                         align_corners: bool = False,
                         chunk: int = 1) -> Tuple[Tensor, Tensor]:
    """Summed cross-entropy of bilinearly upsampled logits, chunked.

    Equals ``F.cross_entropy(F.interpolate(logits, labels.shape[1:],
    mode='bilinear', align_corners=align_corners), labels,
    weight=class_weight, ignore_index=ignore_index, reduction='sum')``
    in value and gradient, without a ``(B, K, H, W)`` tensor.

    Args:
        logits: (B, K, h, w) float logits.
        labels: (B, H, W) int64 class indices in ``[0, K)`` or
            ``ignore_index``.
        class_weight: optional (K,) per-class weights.
        ignore_index: label value that contributes nothing.
        align_corners: as in ``F.interpolate`` (the head's setting).
        chunk: samples upsampled at once (>= 1).

    Returns:
        ``(loss, correct)``: the summed loss (0-dim; float32 for half
        precision logits, else their dtype) and the number
        of non-ignored pixels whose top-1 class equals the label (0-dim
        int64, no gradient).
    """
    if logits.dim() != 4 or labels.dim() != 3:
        raise ValueError('resize_cross_entropy expects logits (B, K, h, w) '
                         'and labels (B, H, W), got '
                         f'{tuple(logits.shape)} and {tuple(labels.shape)}')
    if logits.shape[0] != labels.shape[0]:
        raise ValueError(f'batch sizes differ: logits {logits.shape[0]}, '
                         f'labels {labels.shape[0]}')
    if labels.dtype != torch.int64:
        raise ValueError(f'labels must be int64, got {labels.dtype}')
    if not isinstance(chunk, int) or chunk < 1:
        raise ValueError(f'chunk must be a positive int, got {chunk!r}')
    if class_weight is not None and class_weight.shape != logits.shape[1:2]:
        raise ValueError(f'class_weight has shape {tuple(class_weight.shape)}'
                         f', expected ({logits.shape[1]},)')
    return ResizeCrossEntropy.apply(logits, labels, class_weight,
                                    ignore_index, align_corners, chunk)
