# BASE (not a runnable experiment): FCN 5L, the paper's
# freeze and compressed-layer lists for this architecture (PAPER_SETUP.md,
# "Which layers"; the same as configs/fcn/_base_/fcn_r18-d8_5l_1xb8-20k_voc12aug-512x512.py),
# unchanged: the class count does not touch them. radius: Gradient Filter
# patch size (the paper's, kept although the feature maps are smaller).
_base_ = './fcn_r18-d8_1xb8-100it_camvid-target-80x80.py'

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
