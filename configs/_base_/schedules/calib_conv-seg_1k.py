# Calibration of the ResNet-18 models: from the Cityscapes checkpoint,
# train only the (re-initialised, 21-class) classifier decode_head.conv_seg
# for 1k iterations, SGD lr 0.01 with poly decay, every BN in train mode so
# its running statistics adapt to VOC (the calibration configs also set
# ``norm_eval=False`` on the backbone). One validation and one checkpoint,
# at the end.
optimizer = dict(type='SGD', lr=0.01, momentum=0.9, weight_decay=5e-4)
optim_wrapper = dict(type='OptimWrapper', optimizer=optimizer, clip_grad=None)
param_scheduler = [
    dict(
        type='PolyLR',
        eta_min=1e-4,
        power=0.9,
        begin=0,
        end=1000,
        by_epoch=False)
]
train_cfg = dict(type='IterBasedTrainLoop', max_iters=1000, val_interval=1000)
val_cfg = dict(type='ValLoop')
test_cfg = dict(type='TestLoop')

default_hooks = dict(
    timer=dict(type='IterTimerHook'),
    logger=dict(type='LoggerHook', interval=50, log_metric_by_epoch=False),
    param_scheduler=dict(type='ParamSchedulerHook'),
    checkpoint=dict(type='CheckpointHook', by_epoch=False, interval=1000),
    sampler_seed=dict(type='DistSamplerSeedHook'),
    visualization=dict(type='SegVisualizationHook'),
    # Nothing compressed; the freeze list is applied in order to the fully
    # trainable model: everything frozen except the classifier.
    compression=dict(
        type='ActivationCompressionHook',
        method='vanilla',
        freeze=['backbone', 'decode_head', '~decode_head.conv_seg'],
        layers=[],
        norm_eval=False),
    non_finite_guard=dict(type='NonFiniteStepGuardHook'),
    weights_only_checkpoint=dict(type='WeightsOnlyCheckpointHook'),
)
