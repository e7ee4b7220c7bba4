# DLV3 5L (docs/paper_setup.md, "Which layers"): the layer lists only,
# shared by every dataset's setup base (configs/<folder>/_base_/
# deeplabv3_r18-d8_5l_*.py). ``freeze_layers`` is applied in order to the fully
# trainable model ('~path' unfreezes); ``compressed_layers`` are the convs
# whose saved input is compressed (radius: Gradient Filter patch size,
# ignored by SVD/HOSVD). decode_head.conv_seg always trains and is never
# compressed.
freeze_layers = [
    'backbone',
    'decode_head',
    '~decode_head.conv_seg',
    '~decode_head.bottleneck',
    '~decode_head.aspp_modules',
]
compressed_layers = [
    dict(path='decode_head.bottleneck', radius=3),
    dict(path='decode_head.aspp_modules.0', radius=3),
    dict(path='decode_head.aspp_modules.1', radius=3),
    dict(path='decode_head.aspp_modules.2', radius=6),
    dict(path='decode_head.aspp_modules.3', radius=9),
]
