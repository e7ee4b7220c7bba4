# BASE (not a runnable experiment): SegFormer MiT-B0 10L on VOC: the
# traced layer lists (configs/_base_/layers/segformer_mit-b0_10l.py)
# given to the compression hook.
_base_ = [
    './segformer_mit-b0_1xb8-20k_voc12aug-512x512.py',
    '../../_base_/layers/segformer_mit-b0_10l.py',
]
default_hooks = dict(
    compression=dict(
        freeze={{_base_.freeze_layers}},
        layers={{_base_.compressed_layers}}))
