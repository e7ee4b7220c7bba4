# BASE (not a runnable experiment): DLV3 10L (docs/paper_setup.md) on VOC:
# the paper's layer lists (configs/_base_/layers/deeplabv3_r18-d8_10l.py) given to
# the compression hook.
_base_ = [
    './deeplabv3_r18-d8_1xb8-20k_voc12aug-512x512.py',
    '../../_base_/layers/deeplabv3_r18-d8_10l.py',
]
default_hooks = dict(
    compression=dict(
        freeze={{_base_.freeze_layers}},
        layers={{_base_.compressed_layers}}))
