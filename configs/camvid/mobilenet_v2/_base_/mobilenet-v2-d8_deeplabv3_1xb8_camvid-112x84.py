# BASE (not a runnable experiment): DLV3-M (mobilenet-v2-d8_deeplabv3, the paper's
# architecture: configs/_base_/models/mobilenet-v2-d8_deeplabv3.py) on CamVid, 11 classes,
# 80x80 crops, shared by the pretraining and the fine-tuning
# configs. No pretrained initialisation at all: the pretraining starts from
# mmseg's random init, the fine-tunes from the pretraining's checkpoint.
_base_ = [
    '../../../_base_/models/mobilenet-v2-d8_deeplabv3.py',
    '../../_base_/datasets/camvid-voc_112x84.py',
    '../../../_base_/default_runtime.py',
]
model = dict(
    data_preprocessor=dict(size=(80, 80)),
    decode_head=dict(num_classes=11))
