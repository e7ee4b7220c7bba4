# UPerNet calibration on augmented VOC: train only decode_head.conv_seg for
# 1k iterations. Its last checkpoint, copied to
# checkpoints/calibrated/<this_file_name>.pth, is what the UPerNet
# fine-tuning configs load (see checkpoints.md).
_base_ = [
    '../_base_/models/upernet_r18.py',
    '../_base_/datasets/voc12aug_512x512.py',
    '../_base_/default_runtime.py',
    '../_base_/schedules/calib_conv-seg_1k.py',
]
# BN in train mode: the running statistics adapt to VOC.
model = dict(backbone=dict(norm_eval=False))
# Cityscapes checkpoint (19 classes): conv_seg is not loaded (size
# mismatch) and re-initialised; see checkpoints.md.
load_from = 'https://download.openmmlab.com/mmsegmentation/v0.5/upernet/upernet_r18_512x1024_40k_cityscapes/upernet_r18_512x1024_40k_cityscapes_20220615_113231-12ee861d.pth'  # noqa
