# PSPNet-M calibration on augmented VOC: train the whole decode head on a
# frozen backbone for 5k iterations. Its last checkpoint, copied to
# checkpoints/calibrated/<this_file_name>.pth, is what the PSPNet-M
# fine-tuning configs load (see checkpoints.md).
_base_ = [
    '../_base_/models/mobilenet-v2-d8_pspnet.py',
    '../_base_/datasets/voc12aug_512x512.py',
    '../_base_/default_runtime.py',
    '../_base_/schedules/calib_decode-head_5k.py',
]
# BN in train mode: the running statistics adapt to VOC (and the
# re-initialised decode head learns its own).
model = dict(backbone=dict(norm_eval=False))
# Cityscapes checkpoint: its decode head (channels 512) and conv_seg (19
# classes) are not loaded (size mismatch) and re-initialised; only the
# backbone is pretrained; see checkpoints.md.
load_from = 'https://download.openmmlab.com/mmsegmentation/v0.5/mobilenet_v2/pspnet_m-v2-d8_512x1024_80k_cityscapes/pspnet_m-v2-d8_512x1024_80k_cityscapes_20200825_124817-19e81d51.pth'  # noqa
