# The paper's fine-tuning recipe (configs/_base_/schedules/finetune_20k.py:
# SGD lr 0.01 momentum 0.9 weight decay 5e-4, gradient-norm clipping 1, BN
# in eval mode, the plugin's hooks) scaled from 20k to 100 iterations: linear
# warm-up from 0.1x over the first 5% (5 iterations; the paper's 1k of 20k)
# then cosine to 1e-4. One validation (on target_val) and one checkpoint, at
# the end: the short schedule reports its last checkpoint, not the best of
# several validations.
_base_ = '../../../_base_/schedules/finetune_20k.py'

param_scheduler = [
    dict(
        type='LinearLR', start_factor=0.1, by_epoch=False, begin=0, end=5),
    dict(
        type='CosineAnnealingLR',
        eta_min=1e-4,
        by_epoch=False,
        begin=5,
        end=100),
]
train_cfg = dict(max_iters=100, val_interval=100)
default_hooks = dict(
    logger=dict(interval=10),
    checkpoint=dict(
        _delete_=True, type='CheckpointHook', by_epoch=False, interval=100))
