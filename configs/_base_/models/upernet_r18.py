# UPerNet, ResNetV1c-18 without dilation (strides 1,2,2,2), UPerHead in
# 64,128,256,512, channels 512, pool scales 1,2,3,6; 21 classes, no
# auxiliary head, no dropout, BN frozen in eval mode (norm_eval). No
# ImageNet init: the weights come from ``load_from`` (Cityscapes, then
# calibrated).
_base_ = 'mmseg::_base_/models/upernet_r50.py'

norm_cfg = dict(type='BN', requires_grad=True)  # batch 8 on one GPU
model = dict(
    data_preprocessor=dict(size=(512, 512)),
    pretrained=None,
    backbone=dict(
        depth=18,
        strides=(1, 2, 2, 2),
        dilations=(1, 1, 1, 1),
        norm_cfg=norm_cfg,
        norm_eval=True,
        init_cfg=None),
    decode_head=dict(
        in_channels=[64, 128, 256, 512],
        in_index=[0, 1, 2, 3],
        channels=512,
        pool_scales=(1, 2, 3, 6),
        dropout_ratio=0,
        num_classes=21,
        norm_cfg=norm_cfg),
    auxiliary_head=None)
