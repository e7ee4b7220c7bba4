# BASE (not a runnable experiment): FCN 5L on CamVid: the
# paper's layer lists (configs/_base_/layers/fcn_r18-d8_5l.py, the same as
# on VOC: the class count does not touch them; the Gradient Filter radii are
# the paper's although the feature maps are smaller).
_base_ = [
    './fcn_r18-d8_1xb8-100it_camvid-target-80x80.py',
    '../../../_base_/layers/fcn_r18-d8_5l.py',
]
default_hooks = dict(
    compression=dict(
        freeze={{_base_.freeze_layers}},
        layers={{_base_.compressed_layers}}))
