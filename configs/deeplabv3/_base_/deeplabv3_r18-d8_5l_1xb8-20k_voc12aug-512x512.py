# BASE (not a runnable experiment): DLV3 5L (PAPER_SETUP.md).
# ``freeze_layers`` is applied in order to the fully trainable model ('~path'
# unfreezes); ``compressed_layers`` are the convs whose saved input is
# compressed (radius: Gradient Filter patch size, ignored by SVD/HOSVD).
# decode_head.conv_seg always trains and is never compressed.
_base_ = './deeplabv3_r18-d8_1xb8-20k_voc12aug-512x512.py'

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
default_hooks = dict(
    compression=dict(freeze=freeze_layers, layers=compressed_layers))
