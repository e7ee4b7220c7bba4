# UPerNet 5L (docs/paper_setup.md, "Which layers"): the layer lists only,
# shared by every dataset's setup base (configs/<folder>/_base_/
# upernet_r18_5l_*.py). ``freeze_layers`` is applied in order to the fully
# trainable model ('~path' unfreezes); ``compressed_layers`` are the convs
# whose saved input is compressed (radius: Gradient Filter patch size,
# ignored by SVD/HOSVD). decode_head.conv_seg always trains and is never
# compressed.
freeze_layers = [
    'backbone',
    'decode_head',
    '~decode_head.conv_seg',
    '~decode_head.fpn_bottleneck',
    '~decode_head.fpn_convs',
    '~decode_head.bottleneck',
]
compressed_layers = [
    dict(path='decode_head.fpn_bottleneck', radius=8),
    dict(path='decode_head.fpn_convs.0', radius=8),
    dict(path='decode_head.fpn_convs.1', radius=4),
    dict(path='decode_head.fpn_convs.2', radius=2),
    dict(path='decode_head.bottleneck', radius=2),
]
