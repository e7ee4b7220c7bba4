# Pretraining from scratch for transformer backbones (SegFormer): the
# 2000-iteration schedule of pretrain_2k.py (warm-up 200, cosine, one
# validation and checkpoint at the end) with AdamW instead of SGD: lr 1e-3,
# weight decay 0.01, no weight decay on norms and position/bias terms, no
# clipping. SGD at the CNNs' lr trains MiT from scratch poorly.
_base_ = './pretrain_2k.py'
optim_wrapper = dict(
    _delete_=True,
    type='OptimWrapper',
    optimizer=dict(
        type='AdamW', lr=1e-3, betas=(0.9, 0.999), weight_decay=0.01),
    paramwise_cfg=dict(norm_decay_mult=0.0, bias_decay_mult=0.0),
    clip_grad=None)
