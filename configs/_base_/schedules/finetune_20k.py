# The paper's fine-tuning recipe: 20k iterations, SGD lr 0.01 momentum 0.9
# wd 5e-4 (UPerNet overrides 1e-4), linear warm-up from 0.1x over 1k
# iterations then cosine to 1e-4, grad-norm clipping 1, validation and a
# checkpoint every 2k iterations (all kept: activation ranks are measured on
# every saved checkpoint), best mIoU and best mAcc kept as well.
optimizer = dict(type='SGD', lr=0.01, momentum=0.9, weight_decay=5e-4)
optim_wrapper = dict(
    type='OptimWrapper',
    optimizer=optimizer,
    clip_grad=dict(max_norm=1, norm_type=2))
param_scheduler = [
    dict(
        type='LinearLR',
        start_factor=0.1,
        by_epoch=False,
        begin=0,
        end=1000),
    dict(
        type='CosineAnnealingLR',
        eta_min=1e-4,
        by_epoch=False,
        begin=1000,
        end=20000),
]
train_cfg = dict(type='IterBasedTrainLoop', max_iters=20000, val_interval=2000)
val_cfg = dict(type='ValLoop')
test_cfg = dict(type='TestLoop')

# Keyed hooks (a dict, so that children merge into them instead of
# replacing a list; see configs/README.md). ``compression`` is completed by
# the setup bases (freeze, layers) and the leaves (method, eps).
default_hooks = dict(
    timer=dict(type='IterTimerHook'),
    logger=dict(type='LoggerHook', interval=50, log_metric_by_epoch=False),
    param_scheduler=dict(type='ParamSchedulerHook'),
    checkpoint=dict(
        type='CheckpointHook',
        by_epoch=False,
        interval=2000,
        save_best=['mIoU', 'mAcc'],
        rule='greater'),
    sampler_seed=dict(type='DistSamplerSeedHook'),
    visualization=dict(type='SegVisualizationHook'),
    compression=dict(type='ActivationCompressionHook', method='vanilla'),
    # companion of compression's non_finite='skip': skips optimizer steps
    # whose gradients are not all finite
    non_finite_guard=dict(type='NonFiniteStepGuardHook'),
    activation_memory=dict(type='ActivationMemoryHook'),
    weights_only_checkpoint=dict(type='WeightsOnlyCheckpointHook'),
)
