# BASE (not a runnable experiment): SegFormer MiT-B0 fine-tuning on
# augmented VOC, shared by its 5L and 10L setups. The recipe of our CNN
# models (SGD lr 0.01, warm-up + cosine, clip 1, 20k iterations), so that
# the methods compare on the same footing.
_base_ = [
    '../../_base_/models/segformer_mit-b0.py',
    '../../_base_/datasets/voc12aug_512x512.py',
    '../../_base_/default_runtime.py',
    '../../_base_/schedules/finetune_20k.py',
]
# The last checkpoint of the calibration config
# segformer_mit-b0_calib_1xb8-1k_voc12aug-512x512.py
# (see checkpoints.md).
load_from = 'checkpoints/calibrated/segformer_mit-b0_calib_1xb8-1k_voc12aug-512x512.pth'  # noqa
