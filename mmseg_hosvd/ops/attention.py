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
    key_padding_mask = F._canonical_mask(
        mask=key_padding_mask, mask_name='key_padding_mask',
        other_type=F._none_or_dtype(attn_mask), other_name='attn_mask',
        target_type=query.dtype)
    if is_causal and attn_mask is None:
        raise RuntimeError('Need attn_mask if specifying the is_causal hint.')
    if is_causal and key_padding_mask is None and not need_weights:
        attn_mask = None
    else:
        attn_mask = F._canonical_mask(
            mask=attn_mask, mask_name='attn_mask', other_type=None,
            other_name='', target_type=query.dtype, check_other=False)
        if key_padding_mask is not None:
            is_causal = False
    head_dim = embed_dim // num_heads
    if mha._qkv_same_embed_dim:
        q, k, v = F._in_projection_packed(query, key, value,
                                          mha.in_proj_weight,
                                          mha.in_proj_bias)
    else:
        b_q = b_k = b_v = None
        if mha.in_proj_bias is not None:
            b_q, b_k, b_v = mha.in_proj_bias.chunk(3)
        q, k, v = F._in_projection(query, key, value, mha.q_proj_weight,
                                   mha.k_proj_weight, mha.v_proj_weight, b_q,
                                   b_k, b_v)
    src_len = key.shape[0]
    if attn_mask is not None:
        if attn_mask.dim() == 2:
            if attn_mask.shape != (tgt_len, src_len):
                raise RuntimeError(
                    f'The shape of the 2D attn_mask is {attn_mask.shape}, '
                    f'but should be {(tgt_len, src_len)}.')
            attn_mask = attn_mask.unsqueeze(0)
        elif attn_mask.dim() == 3:
            if attn_mask.shape != (bsz * num_heads, tgt_len, src_len):
                raise RuntimeError(
                    f'The shape of the 3D attn_mask is {attn_mask.shape}, '
                    f'but should be {(bsz * num_heads, tgt_len, src_len)}.')
        else:
            raise RuntimeError(f"attn_mask's dimension {attn_mask.dim()} is "
                               'not supported')
    if mha.bias_k is not None and mha.bias_v is not None:
        k = torch.cat([k, mha.bias_k.repeat(1, bsz, 1)])
        v = torch.cat([v, mha.bias_v.repeat(1, bsz, 1)])
        if attn_mask is not None:
            attn_mask = F.pad(attn_mask, (0, 1))
        if key_padding_mask is not None:
            key_padding_mask = F.pad(key_padding_mask, (0, 1))
    q = q.view(tgt_len, bsz * num_heads, head_dim).transpose(0, 1)
    k = k.view(k.shape[0], bsz * num_heads, head_dim).transpose(0, 1)
    v = v.view(v.shape[0], bsz * num_heads, head_dim).transpose(0, 1)
    if mha.add_zero_attn:
        zeros = (bsz * num_heads, 1, head_dim)
        k = torch.cat([k, k.new_zeros(zeros)], dim=1)
        v = torch.cat([v, v.new_zeros(zeros)], dim=1)
        if attn_mask is not None:
            attn_mask = F.pad(attn_mask, (0, 1))
        if key_padding_mask is not None:
            key_padding_mask = F.pad(key_padding_mask, (0, 1))
    src_len = k.size(1)
    if key_padding_mask is not None:
        if key_padding_mask.shape != (bsz, src_len):
            raise RuntimeError(
                f'expected key_padding_mask of shape {(bsz, src_len)}, got '
                f'{tuple(key_padding_mask.shape)}')
        key_padding_mask = key_padding_mask.view(bsz, 1, 1, src_len).expand(
            -1, num_heads, -1, -1).reshape(bsz * num_heads, 1, src_len)
        attn_mask = key_padding_mask if attn_mask is None else \
            attn_mask + key_padding_mask
    dropout_p = mha.dropout if mha.training else 0.0
    if need_weights:
        q_scaled = q * math.sqrt(1.0 / float(q.shape[-1]))
        if attn_mask is not None:
            weights = torch.baddbmm(attn_mask, q_scaled, k.transpose(-2, -1))
        else:
            weights = torch.bmm(q_scaled, k.transpose(-2, -1))
        weights = F.softmax(weights, dim=-1)
        if dropout_p > 0.0:
            weights = F.dropout(weights, p=dropout_p)
        heads = torch.bmm(weights, v)
        heads = heads.transpose(0, 1).reshape(tgt_len, bsz, embed_dim)
        weights = weights.view(bsz, num_heads, tgt_len, src_len)
        if average_attn_weights:
            weights = weights.mean(dim=1)
        if not is_batched:
            heads, weights = heads.squeeze(1), weights.squeeze(0)
        return heads, weights
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
    heads = heads.permute(2, 0, 1, 3).reshape(tgt_len, bsz, embed_dim)
    if not is_batched:
        heads = heads.squeeze(1)
    return heads, None


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
