# BASE (not a runnable experiment): DLV3-M 10L, the paper's
# freeze and compressed-layer lists for this architecture (PAPER_SETUP.md,
# "Which layers"; the same as configs/mobilenet_v2/_base_/mobilenet-v2-d8_deeplabv3_10l_1xb8-20k_voc12aug-512x512.py),
# unchanged: the class count does not touch them. radius: Gradient Filter
# patch size (the paper's, kept although the feature maps are smaller).
_base_ = './mobilenet-v2-d8_deeplabv3_1xb8-100it_camvid-target-80x80.py'

freeze_layers = [
    'backbone',
    '~backbone.layer7',
    '~backbone.layer6.2.conv.2',
]
compressed_layers = [
    dict(path='decode_head.bottleneck', radius=3),
    dict(path='decode_head.aspp_modules.0', radius=3),
    dict(path='decode_head.aspp_modules.1', radius=3),
    dict(path='decode_head.aspp_modules.2', radius=6),
    dict(path='decode_head.aspp_modules.3', radius=9),
    dict(path='backbone.layer7.0.conv.2', radius=3),
    dict(path='backbone.layer7.0.conv.1', radius=3),
    dict(path='backbone.layer7.0.conv.0', radius=3),
    dict(path='backbone.layer6.2.conv.2', radius=3),
]
default_hooks = dict(
    compression=dict(freeze=freeze_layers, layers=compressed_layers))
