# Pretraining from scratch on source_train (no ImageNet or Cityscapes weights
# are reachable offline): plain full training, every layer trainable, BN in
# train mode. The recipe shape of the paper's fine-tuning (SGD momentum 0.9,
# weight decay 5e-4, linear warm-up from 0.1x then cosine to 1e-4), with a
# from-scratch learning rate of 0.05 and no gradient clipping, over
# 2000 iterations (warm-up 200) of batch 8. One
# validation (on val) and one checkpoint, at the end.
optimizer = dict(type='SGD', lr=0.05, momentum=0.9, weight_decay=5e-4)
optim_wrapper = dict(type='OptimWrapper', optimizer=optimizer, clip_grad=None)
param_scheduler = [
    dict(
        type='LinearLR',
        start_factor=0.1,
        by_epoch=False,
        begin=0,
        end=200),
    dict(
        type='CosineAnnealingLR',
        eta_min=1e-4,
        by_epoch=False,
        begin=200,
        end=2000),
]
train_cfg = dict(
    type='IterBasedTrainLoop', max_iters=2000, val_interval=2000)
val_cfg = dict(type='ValLoop')
test_cfg = dict(type='TestLoop')

# no compression hook: nothing is frozen or compressed; checkpoints are
# readable with torch.load(weights_only=True) (the fine-tunes' load_from)
default_hooks = dict(
    timer=dict(type='IterTimerHook'),
    logger=dict(type='LoggerHook', interval=25, log_metric_by_epoch=False),
    param_scheduler=dict(type='ParamSchedulerHook'),
    checkpoint=dict(type='CheckpointHook', by_epoch=False, interval=2000),
    sampler_seed=dict(type='DistSamplerSeedHook'),
    visualization=dict(type='SegVisualizationHook'),
    weights_only_checkpoint=dict(type='WeightsOnlyCheckpointHook'),
)
