# PSPNet-M 10L (docs/paper_setup.md, "Which layers"): the layer lists only,
# shared by every dataset's setup base (configs/<folder>/_base_/
# mobilenet-v2-d8_pspnet_10l_*.py). ``freeze_layers`` is applied in order to the fully
# trainable model ('~path' unfreezes); ``compressed_layers`` are the convs
# whose saved input is compressed (radius: Gradient Filter patch size,
# ignored by SVD/HOSVD). decode_head.conv_seg always trains and is never
# compressed.
freeze_layers = [
    'backbone',
    '~backbone.layer7',
    '~backbone.layer6.2.conv.2',
    '~backbone.layer6.2.conv.1',
]
compressed_layers = [
    dict(path='decode_head.bottleneck', radius=4),
    dict(path='backbone.layer7.0.conv.2', radius=4),
    dict(path='backbone.layer7.0.conv.1', radius=4),
    dict(path='backbone.layer7.0.conv.0', radius=4),
    dict(path='backbone.layer6.2.conv.2', radius=4),
    dict(path='backbone.layer6.2.conv.1', radius=4),
]
