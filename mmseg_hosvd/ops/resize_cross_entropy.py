"""Bilinear resize + cross-entropy that never holds the whole batch at full
resolution.

A segmentation head's loss upsamples its logits ``(B, K, h, w)`` to the label
size ``(H, W)`` and takes a per-pixel cross-entropy; autograd then keeps the
full-resolution log-softmax ``(B, K, H, W)`` (e.g. 168 MiB in float32 at
batch 8, 512x512, 21 classes) until backward. :func:`resize_cross_entropy`
computes the same summed loss, but keeps only the low-resolution logits and
the labels: forward and backward walk the batch ``chunk`` samples and
``rows`` output rows at a time, upsampling one band (bilinear interpolation
is separable: ``rows_y[band] @ logits @ cols_x`` with 1-D linear
interpolation matrices, reading only the logit rows the band touches),
reducing it and dropping it; backward recomputes the band's upsampling and
softmax. Peak extra memory: about three ``(chunk, K, rows, W)`` float
tensors (by default ``rows * W`` is about :data:`BAND_PIXELS`).

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


#: pixels of the full-resolution map upsampled at once by default
BAND_PIXELS = 2**16


def _interpolation(out_size: int, in_size: int, align_corners: bool,
                   device: torch.device) -> Tensor:
    """(out_size, in_size) float64 weights of 1-D linear interpolation, as
    ``F.interpolate(mode='linear')`` computes it (bilinear interpolation
    is this along the rows, then along the columns)."""
    eye = torch.eye(in_size, dtype=torch.float64,
                    device=device).unsqueeze(0)  # (1, in, in)
    weights = F.interpolate(eye, size=out_size, mode='linear',
                            align_corners=align_corners)
    return weights[0].t().contiguous()


class _Bands:
    """Bands of ``rows`` rows of the (H, W) output and how to upsample a
    band from the (h, w) logits: ``rows_y[band] @ logits @ cols_x``, reading
    only the logit rows the band's weights touch."""

    def __init__(self, size: Tuple[int, int], low: Tuple[int, int],
                 rows: int, align_corners: bool,
                 device: torch.device) -> None:
        self.height = size[0]
        self.rows = rows
        self.rows_y = _interpolation(size[0], low[0], align_corners, device)
        self.cols_x = _interpolation(size[1], low[1], align_corners,
                                     device).t()

    def __iter__(self):
        for top in range(0, self.height, self.rows):
            weights = self.rows_y[top:top + self.rows]
            used = weights.abs().sum(0).nonzero()
            first, last = int(used[0]), int(used[-1]) + 1
            yield top, weights[:, first:last], slice(first, last)

    def upsample(self, logits: Tensor, weights: Tensor,
                 used: slice) -> Tensor:
        """(N, K, rows, W) float32 band of the upsampled (N, K, h, w)
        ``logits``."""
        if logits.dtype in REDUCED_PRECISION:
            logits = logits.float()
        band = torch.matmul(weights.to(logits.dtype), logits[:, :, used])
        return torch.matmul(band, self.cols_x.to(logits.dtype))


class ResizeCrossEntropy(Function):
    """Autograd op of :func:`resize_cross_entropy` (see there)."""

    @staticmethod
    def forward(ctx, logits: Tensor, labels: Tensor,
                class_weight: Optional[Tensor], ignore_index: int,
                align_corners: bool, chunk: int,
                rows: int) -> Tuple[Tensor, Tensor]:
        size = tuple(labels.shape[1:])
        bands = _Bands(size, tuple(logits.shape[2:]), rows, align_corners,
                       logits.device)
        dtype = (torch.float32
                 if logits.dtype in REDUCED_PRECISION else logits.dtype)
        loss = logits.new_zeros((), dtype=dtype)
        correct = torch.zeros((), dtype=torch.int64, device=logits.device)
        weight = (None if class_weight is None else class_weight.to(dtype))
        for start in range(0, logits.shape[0], chunk):
            low = logits[start:start + chunk]
            for top, rows_y, used in bands:
                label = labels[start:start + chunk, top:top + rows]
                upsampled = bands.upsample(low, rows_y, used)
                loss += F.cross_entropy(upsampled, label, weight=weight,
                                        ignore_index=ignore_index,
                                        reduction='sum')
                hit = upsampled.topk(1, dim=1)[1].squeeze(1).eq(label)
                correct += (hit & label.ne(ignore_index)).sum()
                del upsampled, hit
        ctx.save_for_backward(logits, labels, class_weight)
        ctx.ignore_index, ctx.align_corners = ignore_index, align_corners
        ctx.chunk, ctx.rows = chunk, rows
        ctx.mark_non_differentiable(correct)
        return loss, correct

    @staticmethod
    @once_differentiable
    def backward(ctx, grad_loss: Tensor, _grad_correct: Optional[Tensor]):
        logits, labels, class_weight = ctx.saved_tensors
        bands = _Bands(tuple(labels.shape[1:]), tuple(logits.shape[2:]),
                       ctx.rows, ctx.align_corners, logits.device)
        grad = torch.zeros_like(logits)
        for start in range(0, logits.shape[0], ctx.chunk):
            low = logits[start:start + ctx.chunk].detach().requires_grad_()
            for top, rows_y, used in bands:
                label = labels[start:start + ctx.chunk, top:top + ctx.rows]
                with torch.enable_grad():
                    upsampled = bands.upsample(low, rows_y, used)
                grad_up = _cross_entropy_grad(upsampled.detach(), label,
                                              class_weight, ctx.ignore_index)
                grad_up.mul_(grad_loss)
                grad_low, = torch.autograd.grad(upsampled, low, grad_up)
                grad[start:start + ctx.chunk] += grad_low
                del upsampled, grad_up, grad_low
        return grad, None, None, None, None, None, None


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
                         chunk: int = 1,
                         rows: Optional[int] = None) -> Tuple[Tensor, Tensor]:
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
        rows: rows of the (H, W) map upsampled at once (>= 1); None: as
            many as make about :data:`BAND_PIXELS` pixels.

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
    if rows is None:
        rows = max(1, BAND_PIXELS // labels.shape[2])
    if not isinstance(rows, int) or rows < 1:
        raise ValueError(f'rows must be a positive int, got {rows!r}')
    if class_weight is not None and class_weight.shape != logits.shape[1:2]:
        raise ValueError(f'class_weight has shape {tuple(class_weight.shape)}'
                         f', expected ({logits.shape[1]},)')
    return ResizeCrossEntropy.apply(logits, labels, class_weight,
                                    ignore_index, align_corners, chunk, rows)
