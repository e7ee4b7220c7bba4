"""``nn.MultiheadAttention`` that applies its out-projection as a module.

``nn.MultiheadAttention.forward`` calls ``F.multi_head_attention_forward``,
which applies ``out_proj`` functionally (``F.linear(x, out_proj.weight,
out_proj.bias)``): replacing the ``out_proj`` module changes nothing there.
:class:`CompressedMultiheadAttention` computes the attention exactly as
``F.multi_head_attention_forward`` does up to the out-projection
(:func:`attention_before_out_proj`, the same operations in the same order,
so output and gradients equal the plain module's) and then calls
``self.out_proj`` as a module, so that a
:class:`~.linear.CompressedLinear` installed there keeps its compressed
input.

Not compressed: the packed in-projection (``in_proj_weight`` or
``q/k/v_proj_weight``), the softmax and the dropout inside the attention;
their saved tensors are those of the plain module.

It adds no parameter or buffer (``state_dict`` keys are
``nn.MultiheadAttention``'s), so a model's modules can be switched to it by
setting ``__class__`` and back (:mod:`mmseg_hosvd.surgery`). Pure torch
(uses ``torch.nn.functional``'s mask and in-projection helpers, as
``nn.MultiheadAttention`` itself does).
"""
import math
from typing import Optional, Tuple

import torch
import torch.nn as nn
import torch.nn.functional as F
from torch import Tensor


def attention_before_out_proj(
        mha: nn.MultiheadAttention,
        query: Tensor,
        key: Tensor,
        value: Tensor,
        key_padding_mask: Optional[Tensor],
        need_weights: bool,
        attn_mask: Optional[Tensor],
        average_attn_weights: bool,
        is_causal: bool) -> Tuple[Tensor, Optional[Tensor]]:
    """``F.multi_head_attention_forward`` of ``mha``'s settings without the
    out-projection.

    Args:
        query: ``(L, B, E)`` (or unbatched ``(L, E)``), sequence first.
        key, value: ``(S, B, E_k)``, ``(S, B, E_v)`` (or unbatched).
        Others: as ``F.multi_head_attention_forward``; masks already
            canonical (``F._canonical_mask``), as ``nn.MultiheadAttention``
            passes them.

    Returns:
        The heads' concatenated output ``(L, B, E)`` (unbatched ``(L, E)``)
        before ``out_proj``, and the attention weights ``(B, L, S)`` (per
        head ``(B, num_heads, L, S)`` without averaging) or None.
    """
    num_heads = mha.num_heads
    is_batched = F._mha_shape_check(query, key, value, key_padding_mask,
                                    attn_mask, num_heads)
    if not is_batched:
        query, key, value = (x.unsqueeze(1) for x in (query, key, value))
        if key_padding_mask is not None:
            key_padding_mask = key_padding_mask.unsqueeze(0)
    tgt_len, bsz, embed_dim = query.shape
    if embed_dim != mha.embed_dim:
        raise ValueError(f'expected embedding dimension {mha.embed_dim}, got '
                         f'{embed_dim}')
    key_padding_mask, attn_mask, is_causal = _canonical_masks(
        query, key_padding_mask, attn_mask, need_weights, is_causal)
    head_dim = embed_dim // num_heads
    q, k, v = _in_projection(mha, query, key, value)
    attn_mask = _batched_attn_mask(attn_mask, tgt_len, key.shape[0],
                                   bsz * num_heads)
    if mha.bias_k is not None and mha.bias_v is not None:
        k = torch.cat([k, mha.bias_k.repeat(1, bsz, 1)])
        v = torch.cat([v, mha.bias_v.repeat(1, bsz, 1)])
        attn_mask, key_padding_mask = _pad_masks(attn_mask, key_padding_mask)
    q = q.view(tgt_len, bsz * num_heads, head_dim).transpose(0, 1)
    k = k.view(k.shape[0], bsz * num_heads, head_dim).transpose(0, 1)
    v = v.view(v.shape[0], bsz * num_heads, head_dim).transpose(0, 1)
    if mha.add_zero_attn:
        zeros = (bsz * num_heads, 1, head_dim)
        k = torch.cat([k, k.new_zeros(zeros)], dim=1)
        v = torch.cat([v, v.new_zeros(zeros)], dim=1)
        attn_mask, key_padding_mask = _pad_masks(attn_mask, key_padding_mask)
    if key_padding_mask is not None:
        attn_mask = _merge_padding_mask(attn_mask, key_padding_mask, bsz,
                                        num_heads, k.size(1))
    dropout_p = mha.dropout if mha.training else 0.0
    if need_weights:
        heads, weights = _attention_with_weights(q, k, v, attn_mask,
                                                 dropout_p, bsz, num_heads)
        if average_attn_weights:
            weights = weights.mean(dim=1)
    else:
        heads, weights = _scaled_dot_product(q, k, v, attn_mask, dropout_p,
                                             is_causal, bsz, num_heads), None
    heads = heads.reshape(tgt_len, bsz, embed_dim)
    if not is_batched:
        heads = heads.squeeze(1)
        weights = None if weights is None else weights.squeeze(0)
    return heads, weights


def _canonical_masks(query: Tensor, key_padding_mask: Optional[Tensor],
                     attn_mask: Optional[Tensor], need_weights: bool,
                     is_causal: bool
                     ) -> Tuple[Optional[Tensor], Optional[Tensor], bool]:
    """The masks as ``F.multi_head_attention_forward`` canonicalises them,
    and the ``is_causal`` hint left."""
    key_padding_mask = F._canonical_mask(
        mask=key_padding_mask, mask_name='key_padding_mask',
        other_type=F._none_or_dtype(attn_mask), other_name='attn_mask',
        target_type=query.dtype)
    if is_causal and attn_mask is None:
        raise RuntimeError('Need attn_mask if specifying the is_causal hint.')
    if is_causal and key_padding_mask is None and not need_weights:
        return key_padding_mask, None, is_causal
    attn_mask = F._canonical_mask(
        mask=attn_mask, mask_name='attn_mask', other_type=None,
        other_name='', target_type=query.dtype, check_other=False)
    if key_padding_mask is not None:
        is_causal = False
    return key_padding_mask, attn_mask, is_causal


def _in_projection(mha: nn.MultiheadAttention, query: Tensor, key: Tensor,
                   value: Tensor) -> Tuple[Tensor, Tensor, Tensor]:
    """``q, k, v`` ``(L or S, B, E)`` of ``mha``'s input projections."""
    if mha._qkv_same_embed_dim:
        return F._in_projection_packed(query, key, value, mha.in_proj_weight,
                                       mha.in_proj_bias)
    b_q = b_k = b_v = None
    if mha.in_proj_bias is not None:
        b_q, b_k, b_v = mha.in_proj_bias.chunk(3)
    return F._in_projection(query, key, value, mha.q_proj_weight,
                            mha.k_proj_weight, mha.v_proj_weight, b_q, b_k,
                            b_v)


def _batched_attn_mask(attn_mask: Optional[Tensor], tgt_len: int,
                       src_len: int, heads: int) -> Optional[Tensor]:
    """``attn_mask`` checked and made 3-D (``(1 or B*heads, L, S)``)."""
    if attn_mask is None:
        return None
    if attn_mask.dim() == 2:
        if attn_mask.shape != (tgt_len, src_len):
            raise RuntimeError(
                f'The shape of the 2D attn_mask is {attn_mask.shape}, '
                f'but should be {(tgt_len, src_len)}.')
        return attn_mask.unsqueeze(0)
    if attn_mask.dim() == 3:
        if attn_mask.shape != (heads, tgt_len, src_len):
            raise RuntimeError(
                f'The shape of the 3D attn_mask is {attn_mask.shape}, '
                f'but should be {(heads, tgt_len, src_len)}.')
        return attn_mask
    raise RuntimeError(f"attn_mask's dimension {attn_mask.dim()} is "
                       'not supported')


def _pad_masks(attn_mask: Optional[Tensor],
               key_padding_mask: Optional[Tensor]
               ) -> Tuple[Optional[Tensor], Optional[Tensor]]:
    """Both masks with one more key column (a bias or zero key)."""
    if attn_mask is not None:
        attn_mask = F.pad(attn_mask, (0, 1))
    if key_padding_mask is not None:
        key_padding_mask = F.pad(key_padding_mask, (0, 1))
    return attn_mask, key_padding_mask


def _merge_padding_mask(attn_mask: Optional[Tensor],
                        key_padding_mask: Tensor, bsz: int, num_heads: int,
                        src_len: int) -> Tensor:
    """``attn_mask`` plus ``key_padding_mask`` ``(B, S)`` per head."""
    if key_padding_mask.shape != (bsz, src_len):
        raise RuntimeError(
            f'expected key_padding_mask of shape {(bsz, src_len)}, got '
            f'{tuple(key_padding_mask.shape)}')
    key_padding_mask = key_padding_mask.view(bsz, 1, 1, src_len).expand(
        -1, num_heads, -1, -1).reshape(bsz * num_heads, 1, src_len)
    return key_padding_mask if attn_mask is None else \
        attn_mask + key_padding_mask


def _attention_with_weights(q: Tensor, k: Tensor, v: Tensor,
                            attn_mask: Optional[Tensor], dropout_p: float,
                            bsz: int, num_heads: int
                            ) -> Tuple[Tensor, Tensor]:
    """Heads ``(L, B*heads, head_dim)`` and weights ``(B, heads, L, S)``
    from ``q, k, v`` ``(B*heads, L or S, head_dim)``."""
    q_scaled = q * math.sqrt(1.0 / float(q.shape[-1]))
    if attn_mask is not None:
        weights = torch.baddbmm(attn_mask, q_scaled, k.transpose(-2, -1))
    else:
        weights = torch.bmm(q_scaled, k.transpose(-2, -1))
    weights = F.softmax(weights, dim=-1)
    if dropout_p > 0.0:
        weights = F.dropout(weights, p=dropout_p)
    heads = torch.bmm(weights, v).transpose(0, 1)
    return heads, weights.view(bsz, num_heads, q.shape[1], k.shape[1])


def _scaled_dot_product(q: Tensor, k: Tensor, v: Tensor,
                        attn_mask: Optional[Tensor], dropout_p: float,
                        is_causal: bool, bsz: int, num_heads: int) -> Tensor:
    """Heads ``(L, B, heads, head_dim)`` by
    ``F.scaled_dot_product_attention``."""
    tgt_len, src_len, head_dim = q.shape[1], k.shape[1], q.shape[2]
    if attn_mask is not None:
        if attn_mask.size(0) == 1 and attn_mask.dim() == 3:
            attn_mask = attn_mask.unsqueeze(0)
        else:
            attn_mask = attn_mask.view(bsz, num_heads, -1, src_len)
    q = q.view(bsz, num_heads, tgt_len, head_dim)
    k = k.view(bsz, num_heads, src_len, head_dim)
    v = v.view(bsz, num_heads, src_len, head_dim)
    heads = F.scaled_dot_product_attention(q, k, v, attn_mask, dropout_p,
                                           is_causal)
    return heads.permute(2, 0, 1, 3)


class CompressedMultiheadAttention(nn.MultiheadAttention):
    """``nn.MultiheadAttention`` whose ``out_proj`` is called as a module.

    With grad enabled and a trainable ``out_proj.weight`` the forward runs
    :func:`attention_before_out_proj` and then ``self.out_proj`` (e.g. a
    :class:`~.linear.CompressedLinear`); otherwise (inference, frozen
    out-projection) it is ``nn.MultiheadAttention.forward`` itself, fast
    path included. Output and gradients equal ``nn.MultiheadAttention``'s.
    The in-projection is not compressed (see the module docstring).
    """

    def forward(self,
                query: Tensor,
                key: Tensor,
                value: Tensor,
                key_padding_mask: Optional[Tensor] = None,
                need_weights: bool = True,
                attn_mask: Optional[Tensor] = None,
                average_attn_weights: bool = True,
                is_causal: bool = False
                ) -> Tuple[Tensor, Optional[Tensor]]:
        if not (torch.is_grad_enabled() and self.out_proj.weight.requires_grad):
            return super().forward(query, key, value, key_padding_mask,
                                   need_weights, attn_mask,
                                   average_attn_weights, is_causal)
        if query.is_nested or key.is_nested or value.is_nested:
            raise ValueError('CompressedMultiheadAttention: nested tensors '
                             'are only supported by the inference fast path')
        is_batched = query.dim() == 3
        key_padding_mask = F._canonical_mask(
            mask=key_padding_mask, mask_name='key_padding_mask',
            other_type=F._none_or_dtype(attn_mask), other_name='attn_mask',
            target_type=query.dtype)
        attn_mask = F._canonical_mask(
            mask=attn_mask, mask_name='attn_mask', other_type=None,
            other_name='', target_type=query.dtype, check_other=False)
        if self.batch_first and is_batched:
            query, key, value = (x.transpose(1, 0)
                                 for x in (query, key, value))
        heads, weights = attention_before_out_proj(
            self, query, key, value, key_padding_mask, need_weights,
            attn_mask, average_attn_weights, is_causal)
        output = self.out_proj(heads)
        if self.batch_first and is_batched:
            output = output.transpose(1, 0)
        return output, weights
