# BASE (not a runnable experiment): DLV3-M 5L (docs/paper_setup.md) on VOC:
# the paper's layer lists (configs/_base_/layers/mobilenet-v2-d8_deeplabv3_5l.py) given to
# the compression hook.
_base_ = [
    './mobilenet-v2-d8_deeplabv3_1xb8-20k_voc12aug-512x512.py',
    '../../_base_/layers/mobilenet-v2-d8_deeplabv3_5l.py',
]
default_hooks = dict(
    compression=dict(
        freeze={{_base_.freeze_layers}},
        layers={{_base_.compressed_layers}}))
