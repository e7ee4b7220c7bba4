# Fine-tuning of transformer segmentors (SegFormer) on CamVid: the 100
# iterations of finetune_100it.py (warm-up 5, cosine, clip 1, BN eval, the
# plugin's hooks) with AdamW, lr 2e-4, weight decay 0.01 (none on norms and
# biases), as MMSegmentation's own SegFormer schedules use AdamW.
_base_ = './finetune_100it.py'
optim_wrapper = dict(
    _delete_=True,
    type='OptimWrapper',
    optimizer=dict(
        type='AdamW', lr=2e-4, betas=(0.9, 0.999), weight_decay=0.01),
    paramwise_cfg=dict(norm_decay_mult=0.0, bias_decay_mult=0.0),
    clip_grad=dict(max_norm=1, norm_type=2))
