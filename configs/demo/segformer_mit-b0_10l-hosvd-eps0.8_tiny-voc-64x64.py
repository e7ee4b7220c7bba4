# A transformer demo: SegFormer MiT-B0 10L (the last MiT block's MixFFN
# convs and attention out-projection, the fc2 before them, the whole
# SegformerHead) fine-tuned with HOSVD (eps 0.8) on the tiny VOC-layout
# dataset that tools/demo.py (or tools/make_tiny_voc.py) generates under
# data/tiny_voc (./_base_/tiny-voc-64x64.py), 40 iterations. Random
# initialisation (nothing to download): it shows the machinery (freezing,
# compression of convs and of a linear, memory logging), not accuracy. The
# model and the 10L lists are those of the paper-style configs
# (configs/_base_/models/segformer_mit-b0.py,
# configs/_base_/layers/segformer_mit-b0_10l.py); at 64x64 crops MiT's
# stage 4 works on 2x2 maps, which the lists do not depend on.
_base_ = [
    '../_base_/models/segformer_mit-b0.py',
    '../_base_/layers/segformer_mit-b0_10l.py',
    './_base_/tiny-voc-64x64.py',
]

model = dict(data_preprocessor=dict(size=(64, 64)))

param_scheduler = [
    dict(type='LinearLR', start_factor=0.1, by_epoch=False, begin=0, end=5),
    dict(type='CosineAnnealingLR', eta_min=1e-4, by_epoch=False, begin=5,
         end=40),
]
train_cfg = dict(max_iters=40, val_interval=40)
default_hooks = dict(checkpoint=dict(interval=40))

custom_hooks = [
    dict(type='ActivationCompressionHook', method='hosvd', eps=0.8,
         freeze={{_base_.freeze_layers}},
         layers={{_base_.compressed_layers}}),
    dict(type='NonFiniteStepGuardHook'),
    dict(type='ActivationMemoryHook'),
    dict(type='WeightsOnlyCheckpointHook'),
]
