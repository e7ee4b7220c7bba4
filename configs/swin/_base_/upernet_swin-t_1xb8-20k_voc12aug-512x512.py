# BASE (not a runnable experiment): UPerNet Swin-T fine-tuning on augmented
# VOC, shared by its 5L and 10L setups. The recipe of our CNN models (SGD
# lr 0.01, warm-up + cosine, clip 1, 20k iterations) with UPerNet's weight
# decay 1e-4 (docs/paper_setup.md): the trained layers are UPerHead convs.
_base_ = [
    '../../_base_/models/upernet_swin-t.py',
    '../../_base_/datasets/voc12aug_512x512.py',
    '../../_base_/default_runtime.py',
    '../../_base_/schedules/finetune_20k.py',
]
# The last checkpoint of the calibration config
# upernet_swin-t_calib_1xb8-1k_voc12aug-512x512.py
# (see checkpoints.md).
load_from = 'checkpoints/calibrated/upernet_swin-t_calib_1xb8-1k_voc12aug-512x512.pth'  # noqa

optim_wrapper = dict(optimizer=dict(weight_decay=1e-4))
