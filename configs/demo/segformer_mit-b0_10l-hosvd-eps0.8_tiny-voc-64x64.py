# A transformer demo: SegFormer MiT-B0 10L (the last MiT block's MixFFN
# convs and attention out-projection, the fc2 before them, the whole
# SegformerHead) fine-tuned with HOSVD (eps 0.8) on the tiny VOC-layout
# dataset that tools/demo.py (or tools/make_tiny_voc.py) generates under
# data/tiny_voc. Random initialisation (nothing to download): it shows the
# machinery (freezing, compression of convs and of a linear, memory
# logging), not accuracy. The model and the 10L lists are those of the
# paper-style configs (configs/_base_/models/segformer_mit-b0.py,
# configs/_base_/layers/segformer_mit-b0_10l.py); at 64x64 crops MiT's
# stage 4 works on 2x2 maps, which the lists do not depend on.
_base_ = [
    '../_base_/models/segformer_mit-b0.py',
    '../_base_/layers/segformer_mit-b0_10l.py',
    'mmseg::_base_/datasets/pascal_voc12.py',
    'mmseg::_base_/default_runtime.py',
]
custom_imports = dict(imports=['mmseg_hosvd'], allow_failed_imports=False)

crop_size = (64, 64)
model = dict(data_preprocessor=dict(size=crop_size))

data_root = 'data/tiny_voc'
train_pipeline = [
    dict(type='LoadImageFromFile'),
    dict(type='LoadAnnotations'),
    dict(type='RandomResize', scale=(96, 96), ratio_range=(0.75, 1.25),
         keep_ratio=True),
    dict(type='RandomCrop', crop_size=crop_size, cat_max_ratio=0.75),
    dict(type='RandomFlip', prob=0.5),
    dict(type='PackSegInputs'),
]
test_pipeline = [
    dict(type='LoadImageFromFile'),
    dict(type='Resize', scale=(96, 96), keep_ratio=True),
    dict(type='LoadAnnotations'),
    dict(type='PackSegInputs'),
]
train_dataloader = dict(
    batch_size=8,
    num_workers=0,
    persistent_workers=False,
    dataset=dict(data_root=data_root, pipeline=train_pipeline))
val_dataloader = dict(
    batch_size=1,
    num_workers=0,
    persistent_workers=False,
    dataset=dict(data_root=data_root, pipeline=test_pipeline))
test_dataloader = val_dataloader

optim_wrapper = dict(
    type='OptimWrapper',
    optimizer=dict(type='SGD', lr=0.05, momentum=0.9, weight_decay=5e-4),
    clip_grad=dict(max_norm=1, norm_type=2))
param_scheduler = [
    dict(type='LinearLR', start_factor=0.1, by_epoch=False, begin=0, end=5),
    dict(type='CosineAnnealingLR', eta_min=1e-4, by_epoch=False, begin=5,
         end=40),
]
train_cfg = dict(type='IterBasedTrainLoop', max_iters=40, val_interval=40)
val_cfg = dict(type='ValLoop')
test_cfg = dict(type='TestLoop')
default_hooks = dict(
    logger=dict(type='LoggerHook', interval=10, log_metric_by_epoch=False),
    checkpoint=dict(type='CheckpointHook', by_epoch=False, interval=40))
vis_backends = [dict(type='LocalVisBackend'),
                dict(type='TensorboardVisBackend')]
visualizer = dict(vis_backends=vis_backends)
randomness = dict(seed=233)

custom_hooks = [
    dict(type='ActivationCompressionHook', method='hosvd', eps=0.8,
         freeze={{_base_.freeze_layers}},
         layers={{_base_.compressed_layers}}),
    dict(type='NonFiniteStepGuardHook'),
    dict(type='ActivationMemoryHook'),
    dict(type='WeightsOnlyCheckpointHook'),
]
