# UPerNet Swin-T 10L: the 10 weight layers nearest the loss in forward
# execution order (conv_seg excluded), traced on the built model (forward
# pre-hooks on every nn.Conv2d, nn.Linear and nn.MultiheadAttention). The
# UPerHead runs after the whole backbone and holds 12 convs, run in the
# order lateral_convs.0-2, psp_modules.0-3, bottleneck, fpn_convs.0-2,
# fpn_bottleneck: the last 10 are the 5L list, the four pyramid-pooling
# convs and lateral_convs.2 (lateral_convs.0 and .1 run first and are
# not among them; no backbone layer is). Unlike our UPerNet-R18 10L list
# this is exactly 10 convs, all compressed. Layer lists only, shared by the
# setup bases (configs/swin/_base_/upernet_swin-t_10l_*.py).
# ``freeze_layers`` is applied in order to the fully trainable model
# ('~path' unfreezes). ``compressed_layers``, nearest the loss first;
# radius: Gradient Filter patch size, ignored by SVD/HOSVD, as in our
# UPerNet lists (docs/paper_setup.md): 8 on the stride-4 maps (128x128 at
# 512x512 crops), 4 at stride 8, 2 at strides 16 and 32; the pyramid-pooling
# convs read 1x1 to 6x6 pooled maps, where there is nothing to filter, so
# r=1 (exact for their 1x1 kernels). decode_head.conv_seg always trains and
# is never compressed.
freeze_layers = [
    'backbone',
    'decode_head',
    '~decode_head.conv_seg',
    '~decode_head.fpn_bottleneck',
    '~decode_head.fpn_convs',
    '~decode_head.bottleneck',
    '~decode_head.psp_modules',
    '~decode_head.lateral_convs.2',
]
compressed_layers = [
    dict(path='decode_head.fpn_bottleneck', radius=8),  # stride 4
    dict(path='decode_head.fpn_convs.2', radius=2),  # stride 16
    dict(path='decode_head.fpn_convs.1', radius=4),  # stride 8
    dict(path='decode_head.fpn_convs.0', radius=8),  # stride 4
    dict(path='decode_head.bottleneck', radius=2),  # stride 32
    dict(path='decode_head.psp_modules.3.1', radius=1),  # 6x6 pooled
    dict(path='decode_head.psp_modules.2.1', radius=1),  # 3x3 pooled
    dict(path='decode_head.psp_modules.1.1', radius=1),  # 2x2 pooled
    dict(path='decode_head.psp_modules.0.1', radius=1),  # 1x1 pooled
    dict(path='decode_head.lateral_convs.2', radius=2),  # stride 16
]
