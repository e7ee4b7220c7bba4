# SegFormer MiT-B0 calibration on augmented VOC: train only
# decode_head.conv_seg for 1k iterations (the ResNet-18 recipe: the
# Cityscapes checkpoint's head, channels 256, fits ours, so everything but
# the classifier loads). Its last checkpoint, copied to
# checkpoints/calibrated/<this_file_name>.pth, is what the SegFormer
# fine-tuning configs load (see checkpoints.md).
_base_ = [
    '../_base_/models/segformer_mit-b0.py',
    '../_base_/datasets/voc12aug_512x512.py',
    '../_base_/default_runtime.py',
    '../_base_/schedules/calib_conv-seg_1k.py',
]
# BN in train mode (the schedule's hook norm_eval=False): the head's BN
# running statistics adapt to VOC. MiT has only LayerNorms, which keep no
# running statistics (and the backbone has no norm_eval option). Head as in
# fine-tuning: no dropout before the classifier.
# Cityscapes checkpoint (19 classes): conv_seg is not loaded (size
# mismatch) and re-initialised; see checkpoints.md.
load_from = 'https://download.openmmlab.com/mmsegmentation/v0.5/segformer/segformer_mit-b0_8x1_1024x1024_160k_cityscapes/segformer_mit-b0_8x1_1024x1024_160k_cityscapes_20211208_101857-e7f88502.pth'  # noqa
