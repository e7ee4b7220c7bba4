# SegFormer MiT-B0 10L: the 10 weight layers nearest the loss in forward
# execution order (conv_seg excluded), traced on the built model (forward
# pre-hooks on every nn.Conv2d, nn.Linear and nn.MultiheadAttention; an
# nn.MultiheadAttention counts once, for its out-projection, which runs
# inside the attention call after the functional in-projection). From the
# loss backwards: the SegformerHead's fusion conv and four per-stage convs
# (the 5L list), then the last MiT block (stage 4, block 1:
# backbone.layers.3.1.1) with its MixFFN's fc2, depthwise 3x3 pe_conv and
# fc1 (ffn.layers.4, .1, .0, all nn.Conv2d) and its attention's
# out-projection (attn.attn, an nn.MultiheadAttention; stage 4 has sr ratio
# 1, so no spatial-reduction conv), then the MixFFN fc2 of the block before
# it (backbone.layers.3.1.0.ffn.layers.4). Layer lists only, shared by the
# setup bases (configs/segformer/_base_/segformer_mit-b0_10l_*.py).
#
# ``freeze_layers`` is applied in order to the fully trainable model
# ('~path' unfreezes) and leaves exactly these layers (and the head's BN
# affines, and conv_seg) trainable: the MHA's in-projection parameters
# (in_proj_weight/bias, functional, not a layer) and every LayerNorm stay
# frozen. ``compressed_layers``, nearest the loss first; radius: Gradient
# Filter patch size, ignored by SVD/HOSVD, chosen as for UPerNet
# (docs/paper_setup.md): 8 on the stride-4 maps (128x128 at 512x512
# crops), 4 at stride 8, 2 at strides 16 and 32 (the MiT stage-4 convs
# work on 16x16 maps). The out-projection is a linear: SVD/HOSVD/ASI
# compress its input, but the Gradient Filter is defined for convs only, so
# the gradient-filter leaf uses ``gradient_filter_layers``, where that entry
# is ``method='vanilla'`` (counted, not compressed). decode_head.conv_seg
# always trains and is never compressed.
freeze_layers = [
    'backbone',
    '~backbone.layers.3.1.1.ffn',
    '~backbone.layers.3.1.1.attn.attn.out_proj',
    '~backbone.layers.3.1.0.ffn.layers.4',
]
compressed_layers = [
    dict(path='decode_head.fusion_conv', radius=8),  # 1024 ch, stride 4
    dict(path='decode_head.convs.3', radius=2),  # 256 ch, stride 32
    dict(path='decode_head.convs.2', radius=2),  # 160 ch, stride 16
    dict(path='decode_head.convs.1', radius=4),  # 64 ch, stride 8
    dict(path='decode_head.convs.0', radius=8),  # 32 ch, stride 4
    dict(path='backbone.layers.3.1.1.ffn.layers.4', radius=2),  # fc2
    dict(path='backbone.layers.3.1.1.ffn.layers.1', radius=2),  # pe_conv
    dict(path='backbone.layers.3.1.1.ffn.layers.0', radius=2),  # fc1
    dict(path='backbone.layers.3.1.1.attn.attn'),  # MHA out-projection
    dict(path='backbone.layers.3.1.0.ffn.layers.4', radius=2),  # fc2
]
# The same layers for the Gradient Filter: the out-projection (a linear)
# is counted only (method='vanilla'), the convs are filtered.
gradient_filter_layers = [
    dict(path='decode_head.fusion_conv', radius=8),
    dict(path='decode_head.convs.3', radius=2),
    dict(path='decode_head.convs.2', radius=2),
    dict(path='decode_head.convs.1', radius=4),
    dict(path='decode_head.convs.0', radius=8),
    dict(path='backbone.layers.3.1.1.ffn.layers.4', radius=2),
    dict(path='backbone.layers.3.1.1.ffn.layers.1', radius=2),
    dict(path='backbone.layers.3.1.1.ffn.layers.0', radius=2),
    dict(path='backbone.layers.3.1.1.attn.attn', method='vanilla'),
    dict(path='backbone.layers.3.1.0.ffn.layers.4', radius=2),
]
