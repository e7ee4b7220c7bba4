# BASE (not a runnable experiment): PSPNet-M 5L (PAPER_SETUP.md).
# ``freeze_layers`` is applied in order to the fully trainable model ('~path'
# unfreezes); ``compressed_layers`` are the convs whose saved input is
# compressed (radius: Gradient Filter patch size, ignored by SVD/HOSVD).
# decode_head.conv_seg always trains and is never compressed.
_base_ = './mobilenet-v2-d8_pspnet_1xb8-20k_voc12aug-512x512.py'

freeze_layers = [
    'backbone',
]
compressed_layers = [
    dict(path='decode_head.bottleneck', radius=4),
]
default_hooks = dict(
    compression=dict(freeze=freeze_layers, layers=compressed_layers))
