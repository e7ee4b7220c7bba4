# UPerNet Swin-T calibration on augmented VOC: train only
# decode_head.conv_seg for 1k iterations (the ResNet-18 recipe: the ADE20K
# checkpoint's UPerHead, channels 512, fits ours, so everything but the
# classifier and the dropped auxiliary head loads). Its last checkpoint,
# copied to checkpoints/calibrated/<this_file_name>.pth, is what the Swin
# fine-tuning configs load (see checkpoints.md).
_base_ = [
    '../_base_/models/upernet_swin-t.py',
    '../_base_/datasets/voc12aug_512x512.py',
    '../_base_/default_runtime.py',
    '../_base_/schedules/calib_conv-seg_1k.py',
]
# BN in train mode (the schedule's hook norm_eval=False): the head's BN
# running statistics adapt to VOC. Swin has only LayerNorms, which keep no
# running statistics (and the backbone has no norm_eval option).
# ADE20K checkpoint (150 classes): conv_seg is not loaded (size mismatch)
# and re-initialised, auxiliary_head.* is unexpected; see checkpoints.md.
load_from = 'https://download.openmmlab.com/mmsegmentation/v0.5/swin/upernet_swin_tiny_patch4_window7_512x512_160k_ade20k_pretrain_224x224_1K/upernet_swin_tiny_patch4_window7_512x512_160k_ade20k_pretrain_224x224_1K_20210531_112542-e380ad3e.pth'  # noqa
