# BASE (not a runnable experiment): FCN (fcn_r18-d8, the paper's
# architecture: configs/_base_/models/fcn_r18-d8.py) on CamVid, 11 classes,
# 80x80 crops, shared by the pretraining and the fine-tuning
# configs. No pretrained initialisation at all: the pretraining starts from
# mmseg's random init, the fine-tunes from the pretraining's checkpoint.
_base_ = [
    '../../../_base_/models/fcn_r18-d8.py',
    '../../_base_/datasets/camvid-voc_112x84.py',
    '../../../_base_/default_runtime.py',
]
model = dict(
    data_preprocessor=dict(size=(80, 80)),
    decode_head=dict(num_classes=11))
