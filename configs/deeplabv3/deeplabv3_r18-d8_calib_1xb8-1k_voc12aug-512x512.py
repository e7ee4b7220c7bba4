# DLV3 calibration on augmented VOC: train only decode_head.conv_seg for 1k
# iterations. Its last checkpoint, copied to
# checkpoints/calibrated/<this_file_name>.pth, is what the DLV3 fine-tuning
# configs load (see checkpoints.md).
_base_ = [
    '../_base_/models/deeplabv3_r18-d8.py',
    '../_base_/datasets/voc12aug_512x512.py',
    '../_base_/default_runtime.py',
    '../_base_/schedules/calib_conv-seg_1k.py',
]
# BN in train mode: the running statistics adapt to VOC.
model = dict(backbone=dict(norm_eval=False))
# Cityscapes checkpoint (19 classes): conv_seg is not loaded (size
# mismatch) and re-initialised; see checkpoints.md.
load_from = 'https://download.openmmlab.com/mmsegmentation/v0.5/deeplabv3/deeplabv3_r18-d8_512x1024_80k_cityscapes/deeplabv3_r18-d8_512x1024_80k_cityscapes_20201225_021506-23dffbe2.pth'  # noqa
