# The README's demo: FCN-R18-d8 ("FCN 5L" of the paper's table) fine-tuned
# with HOSVD (eps 0.8) on the tiny VOC-layout dataset that tools/demo.py
# generates under data/tiny_voc (./_base_/tiny-voc-64x64.py). Random
# initialisation (nothing to download): it shows the machinery (freezing,
# compression, memory logging), not accuracy.
_base_ = [
    'mmseg::_base_/models/fcn_r50-d8.py',
    './_base_/tiny-voc-64x64.py',
]

norm_cfg = dict(type='BN', requires_grad=True)
model = dict(
    data_preprocessor=dict(size=(64, 64)),
    pretrained=None,
    backbone=dict(depth=18, norm_cfg=norm_cfg, norm_eval=True),
    decode_head=dict(
        in_channels=512,
        channels=128,
        num_classes=21,
        dropout_ratio=0,
        norm_cfg=norm_cfg),
    auxiliary_head=None)

custom_hooks = [
    dict(type='ActivationCompressionHook', method='hosvd', eps=0.8,
         freeze=['backbone', '~backbone.layer4.1'],
         layers=['decode_head.conv_cat', 'decode_head.convs.0',
                 'decode_head.convs.1', 'backbone.layer4.1']),
    dict(type='NonFiniteStepGuardHook'),
    dict(type='ActivationMemoryHook'),
    dict(type='WeightsOnlyCheckpointHook'),
]
