# SegFormer, MiT-B0 (embed dims 32, 2 blocks per stage, heads 1,2,5,8, sr
# ratios 8,4,2,1), SegformerHead in 32,64,160,256, channels 256: mmseg's
# model of segformer_mit-b0_8xb1-160k_cityscapes-1024x1024, whose module
# names and shapes match mmseg's Cityscapes MiT-B0 checkpoint except the
# classifier. Changed for this project, as in our CNN bases: 21 classes,
# no dropout before the classifier (mmseg: 0.1) and no stochastic depth in
# the backbone (mmseg: drop_path_rate 0.1; a mostly frozen backbone should
# give the features it gives at test time, the counterpart of BN eval mode),
# BN instead of SyncBN in the head (batch 8 on one GPU), 512x512 crops.
# MiT has only LayerNorms (no norm_eval option); the compression hook keeps
# the head's BNs in eval mode. No ImageNet init: the weights come from
# ``load_from`` (Cityscapes, then calibrated). No auxiliary head (mmseg's
# SegFormer has none either).
_base_ = 'mmseg::_base_/models/segformer_mit-b0.py'

norm_cfg = dict(type='BN', requires_grad=True)  # batch 8 on one GPU
model = dict(
    data_preprocessor=dict(size=(512, 512)),
    pretrained=None,
    backbone=dict(drop_path_rate=0.0, init_cfg=None),
    decode_head=dict(dropout_ratio=0, num_classes=21, norm_cfg=norm_cfg),
    test_cfg=dict(mode='whole'))
