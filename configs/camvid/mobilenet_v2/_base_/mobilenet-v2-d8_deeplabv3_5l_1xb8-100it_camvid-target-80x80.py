# BASE (not a runnable experiment): DLV3-M 5L on CamVid: the
# paper's layer lists (configs/_base_/layers/mobilenet-v2-d8_deeplabv3_5l.py, the same as
# on VOC: the class count does not touch them; the Gradient Filter radii are
# the paper's although the feature maps are smaller).
_base_ = [
    './mobilenet-v2-d8_deeplabv3_1xb8-100it_camvid-target-80x80.py',
    '../../../_base_/layers/mobilenet-v2-d8_deeplabv3_5l.py',
]
default_hooks = dict(
    compression=dict(
        freeze={{_base_.freeze_layers}},
        layers={{_base_.compressed_layers}}))
