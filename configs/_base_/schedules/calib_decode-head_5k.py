# Calibration of the MobileNetV2 models: their Cityscapes decode heads
# (channels 512) do not fit ours (channels 128), so the whole decode head is
# re-initialised and trained for 5k iterations on a frozen backbone, SGD lr
# 0.01 with poly decay, every BN in train mode (the new head's BN must learn
# its statistics; the calibration configs also set ``norm_eval=False`` on
# the backbone). One validation and one checkpoint, at the end.
optimizer = dict(type='SGD', lr=0.01, momentum=0.9, weight_decay=5e-4)
optim_wrapper = dict(type='OptimWrapper', optimizer=optimizer, clip_grad=None)
param_scheduler = [
    dict(
        type='PolyLR',
        eta_min=1e-4,
        power=0.9,
        begin=0,
        end=5000,
        by_epoch=False)
]
train_cfg = dict(type='IterBasedTrainLoop', max_iters=5000, val_interval=5000)
val_cfg = dict(type='ValLoop')
test_cfg = dict(type='TestLoop')

default_hooks = dict(
    timer=dict(type='IterTimerHook'),
    logger=dict(type='LoggerHook', interval=50, log_metric_by_epoch=False),
    param_scheduler=dict(type='ParamSchedulerHook'),
    checkpoint=dict(type='CheckpointHook', by_epoch=False, interval=5000),
    sampler_seed=dict(type='DistSamplerSeedHook'),
    visualization=dict(type='SegVisualizationHook'),
    # Nothing compressed; the backbone is frozen, the decode head trains.
    compression=dict(
        type='ActivationCompressionHook',
        method='vanilla',
        freeze=['backbone'],
        layers=[],
        norm_eval=False),
    non_finite_guard=dict(type='NonFiniteStepGuardHook'),
    weights_only_checkpoint=dict(type='WeightsOnlyCheckpointHook'),
)
