# BASE (not a runnable experiment): UPerNet Swin-T 10L on VOC: the
# traced layer lists (configs/_base_/layers/upernet_swin-t_10l.py)
# given to the compression hook.
_base_ = [
    './upernet_swin-t_1xb8-20k_voc12aug-512x512.py',
    '../../_base_/layers/upernet_swin-t_10l.py',
]
default_hooks = dict(
    compression=dict(
        freeze={{_base_.freeze_layers}},
        layers={{_base_.compressed_layers}}))
