# UPerNet Swin-T 5L: the 5 weight layers nearest the loss in forward
# execution order (conv_seg excluded), traced on the built model (forward
# pre-hooks on every nn.Conv2d, nn.Linear and nn.MultiheadAttention). The
# UPerHead runs after the whole backbone and holds 12 convs (lateral 0-2,
# pyramid pooling 0-3, bottleneck, FPN 0-2, FPN bottleneck), so 5L (and
# 10L) lie entirely in the head: from the loss backwards fpn_bottleneck,
# fpn_convs.2, .1, .0 and bottleneck, the same layers as our UPerNet 5L.
# Layer lists only, shared by the setup bases
# (configs/swin/_base_/upernet_swin-t_5l_*.py). ``freeze_layers`` is
# applied in order to the fully trainable model ('~path' unfreezes).
# ``compressed_layers``, nearest the loss first; radius: Gradient Filter
# patch size, ignored by SVD/HOSVD, as in our UPerNet lists
# (docs/paper_setup.md): 8 on the stride-4 maps (128x128 at 512x512
# crops), 4 at stride 8, 2 at strides 16 and 32. decode_head.conv_seg
# always trains and is never compressed.
freeze_layers = [
    'backbone',
    'decode_head',
    '~decode_head.conv_seg',
    '~decode_head.fpn_bottleneck',
    '~decode_head.fpn_convs',
    '~decode_head.bottleneck',
]
compressed_layers = [
    dict(path='decode_head.fpn_bottleneck', radius=8),  # stride 4
    dict(path='decode_head.fpn_convs.2', radius=2),  # stride 16
    dict(path='decode_head.fpn_convs.1', radius=4),  # stride 8
    dict(path='decode_head.fpn_convs.0', radius=8),  # stride 4
    dict(path='decode_head.bottleneck', radius=2),  # stride 32
]
