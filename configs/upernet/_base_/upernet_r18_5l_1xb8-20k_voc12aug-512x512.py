# BASE (not a runnable experiment): UPerNet 5L (PAPER_SETUP.md).
# ``freeze_layers`` is applied in order to the fully trainable model ('~path'
# unfreezes); ``compressed_layers`` are the convs whose saved input is
# compressed (radius: Gradient Filter patch size, ignored by SVD/HOSVD).
# decode_head.conv_seg always trains and is never compressed.
_base_ = './upernet_r18_1xb8-20k_voc12aug-512x512.py'

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
default_hooks = dict(
    compression=dict(freeze=freeze_layers, layers=compressed_layers))
