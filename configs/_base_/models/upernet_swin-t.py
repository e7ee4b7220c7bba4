# UPerNet, Swin-T (patch 4, window 7, embed dims 96, depths 2,2,6,2, heads
# 3,6,12,24), UPerHead in 96,192,384,768, channels 512, pool scales
# 1,2,3,6: the model of mmseg's
# swin-tiny-patch4-window7-in1k-pre_upernet_8xb2-160k_ade20k-512x512
# (that config's model is mmseg's _base_/models/upernet_swin.py, whose
# defaults are Swin-T; inheriting the whole config would also bring its
# ADE20K data and AdamW schedule), whose module names and shapes match
# mmseg's ADE20K checkpoint except the classifier. Changed for this project,
# as in our CNN bases: 21 classes, the auxiliary FCNHead dropped (our
# models have none; its checkpoint weights are not loaded), no dropout
# before the classifier (mmseg: 0.1) and no stochastic depth in the backbone
# (mmseg: drop_path_rate 0.3; a frozen backbone should give the features it
# gives at test time, the counterpart of BN eval mode), BN instead of SyncBN
# in the head (batch 8 on one GPU), 512x512 crops. Swin has only LayerNorms
# (no norm_eval option); the compression hook keeps the head's BNs in eval
# mode. No ImageNet init (the mmseg config's backbone init_cfg is not
# inherited): the weights come from ``load_from`` (ADE20K, then calibrated).
_base_ = 'mmseg::_base_/models/upernet_swin.py'

norm_cfg = dict(type='BN', requires_grad=True)  # batch 8 on one GPU
model = dict(
    data_preprocessor=dict(size=(512, 512)),
    pretrained=None,
    backbone=dict(
        embed_dims=96,
        depths=[2, 2, 6, 2],
        num_heads=[3, 6, 12, 24],
        window_size=7,
        use_abs_pos_embed=False,
        patch_norm=True,
        drop_path_rate=0.0,
        init_cfg=None),
    decode_head=dict(
        in_channels=[96, 192, 384, 768],
        channels=512,
        pool_scales=(1, 2, 3, 6),
        dropout_ratio=0,
        num_classes=21,
        norm_cfg=norm_cfg),
    auxiliary_head=None)
