# BASE (not a runnable experiment): FCN 5L (PAPER_SETUP.md).
# ``freeze_layers`` is applied in order to the fully trainable model ('~path'
# unfreezes); ``compressed_layers`` are the convs whose saved input is
# compressed (radius: Gradient Filter patch size, ignored by SVD/HOSVD).
# decode_head.conv_seg always trains and is never compressed.
_base_ = './fcn_r18-d8_1xb8-20k_voc12aug-512x512.py'

freeze_layers = [
    'backbone',
    '~backbone.layer4.1',
]
compressed_layers = [
    dict(path='decode_head.conv_cat', radius=4),
    dict(path='decode_head.convs.0', radius=4),
    dict(path='decode_head.convs.1', radius=4),
    dict(path='backbone.layer4.1', radius=4),
]
default_hooks = dict(
    compression=dict(freeze=freeze_layers, layers=compressed_layers))
