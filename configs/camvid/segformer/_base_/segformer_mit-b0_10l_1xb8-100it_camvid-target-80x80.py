# BASE (not a runnable experiment): SegFormer MiT-B0 10L on CamVid: the
# layer lists of configs/_base_/layers/segformer_mit-b0_10l.py (the same as
# on VOC: the class count does not touch them).
_base_ = [
    './segformer_mit-b0_1xb8-100it_camvid-target-80x80.py',
    '../../../_base_/layers/segformer_mit-b0_10l.py',
]
default_hooks = dict(
    compression=dict(
        freeze={{_base_.freeze_layers}},
        layers={{_base_.compressed_layers}}))
