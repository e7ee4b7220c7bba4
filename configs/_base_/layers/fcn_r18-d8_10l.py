# FCN 10L (docs/paper_setup.md, "Which layers"): the layer lists only,
# shared by every dataset's setup base (configs/<folder>/_base_/
# fcn_r18-d8_10l_*.py). ``freeze_layers`` is applied in order to the fully
# trainable model ('~path' unfreezes); ``compressed_layers`` are the convs
# whose saved input is compressed (radius: Gradient Filter patch size,
# ignored by SVD/HOSVD). decode_head.conv_seg always trains and is never
# compressed.
freeze_layers = [
    'backbone',
    '~backbone.layer4',
    '~backbone.layer3.1',
]
compressed_layers = [
    dict(path='decode_head.conv_cat', radius=2),
    dict(path='decode_head.convs.0', radius=2),
    dict(path='decode_head.convs.1', radius=2),
    dict(path='backbone.layer4.1', radius=2),
    dict(path='backbone.layer4.0', radius=2),
    dict(path='backbone.layer4.0.downsample.0', radius=2),
    dict(path='backbone.layer3.1', radius=2),
]
