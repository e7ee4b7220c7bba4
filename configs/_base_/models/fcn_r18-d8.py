# FCN, ResNetV1c-18 d8 (strides 1,2,1,1; dilations 1,1,2,4), FCNHead in 512,
# channels 128, 2 convs + concat_input (conv_cat); 21 classes, no auxiliary
# head, no dropout, BN frozen in eval mode (norm_eval). No ImageNet init:
# the weights come from ``load_from`` (Cityscapes, then calibrated).
_base_ = 'mmseg::_base_/models/fcn_r50-d8.py'

norm_cfg = dict(type='BN', requires_grad=True)  # batch 8 on one GPU
model = dict(
    data_preprocessor=dict(size=(512, 512)),
    pretrained=None,
    backbone=dict(
        depth=18,
        strides=(1, 2, 1, 1),
        dilations=(1, 1, 2, 4),
        norm_cfg=norm_cfg,
        norm_eval=True,
        init_cfg=None),
    decode_head=dict(
        in_channels=512,
        channels=128,
        num_convs=2,
        concat_input=True,
        dropout_ratio=0,
        num_classes=21,
        norm_cfg=norm_cfg),
    auxiliary_head=None)
