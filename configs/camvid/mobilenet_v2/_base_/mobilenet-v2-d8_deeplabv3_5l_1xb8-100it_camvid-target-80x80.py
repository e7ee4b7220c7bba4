# BASE (not a runnable experiment): DLV3-M 5L, the paper's
# freeze and compressed-layer lists for this architecture (PAPER_SETUP.md,
# "Which layers"; the same as configs/mobilenet_v2/_base_/mobilenet-v2-d8_deeplabv3_5l_1xb8-20k_voc12aug-512x512.py),
# unchanged: the class count does not touch them. radius: Gradient Filter
# patch size (the paper's, kept although the feature maps are smaller).
_base_ = './mobilenet-v2-d8_deeplabv3_1xb8-100it_camvid-target-80x80.py'

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
