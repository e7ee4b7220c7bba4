# BASE (not a runnable experiment): SegFormer MiT-B0 (MMSegmentation's
# architecture, 4 stages, embed dims 32-256, SegformerHead with 256 channels
# and dropout 0.1) on CamVid, 11 classes, 80x80 crops, shared by the
# pretraining and the fine-tuning configs. BN instead of SyncBN (one
# process); no pretrained initialisation at all: the pretraining starts from
# mmseg's random init, the fine-tunes from the pretraining's checkpoint.
_base_ = [
    'mmseg::_base_/models/segformer_mit-b0.py',
    '../../_base_/datasets/camvid-voc_112x84.py',
    '../../../_base_/default_runtime.py',
]
norm_cfg = dict(type='BN', requires_grad=True)
model = dict(
    data_preprocessor=dict(size=(80, 80)),
    pretrained=None,
    backbone=dict(init_cfg=None),
    decode_head=dict(num_classes=11, norm_cfg=norm_cfg))
