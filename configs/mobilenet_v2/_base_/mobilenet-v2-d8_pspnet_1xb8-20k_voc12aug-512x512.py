# BASE (not a runnable experiment): PSPNet-M fine-tuning on augmented VOC,
# shared by its 5L and 10L setups.
_base_ = [
    '../../_base_/models/mobilenet-v2-d8_pspnet.py',
    '../../_base_/datasets/voc12aug_512x512.py',
    '../../_base_/default_runtime.py',
    '../../_base_/schedules/finetune_20k.py',
]
# The last checkpoint of the calibration config
# mobilenet-v2-d8_pspnet_calib_1xb8-5k_voc12aug-512x512.py
# (see checkpoints.md).
load_from = 'checkpoints/calibrated/mobilenet-v2-d8_pspnet_calib_1xb8-5k_voc12aug-512x512.pth'  # noqa
