# SegFormer MiT-B0 5L: the 5 weight layers nearest the loss in forward
# execution order (conv_seg excluded), traced on the built model (forward
# pre-hooks on every nn.Conv2d, nn.Linear and nn.MultiheadAttention): the
# SegformerHead's four per-stage 1x1 ConvModules and its fusion conv, i.e.
# the whole head. Layer lists only, shared by the setup bases
# (configs/segformer/_base_/segformer_mit-b0_5l_*.py). ``freeze_layers`` is
# applied in order to the fully trainable model ('~path' unfreezes): the
# backbone is frozen, the head (5 ConvModules + conv_seg) trains.
# ``compressed_layers``, nearest the loss first; radius: Gradient Filter
# patch size, ignored by SVD/HOSVD, chosen as for UPerNet
# (docs/paper_setup.md): 8 on the stride-4 maps (128x128 at 512x512 crops),
# 4 at stride 8, 2 at strides 16 and 32, so that the filtered grid is
# 16x16 (8x8 at stride 32). decode_head.conv_seg always trains and is
# never compressed.
freeze_layers = [
    'backbone',
]
compressed_layers = [
    dict(path='decode_head.fusion_conv', radius=8),  # 1024 ch, stride 4
    dict(path='decode_head.convs.3', radius=2),  # 256 ch, stride 32
    dict(path='decode_head.convs.2', radius=2),  # 160 ch, stride 16
    dict(path='decode_head.convs.1', radius=4),  # 64 ch, stride 8
    dict(path='decode_head.convs.0', radius=8),  # 32 ch, stride 4
]
