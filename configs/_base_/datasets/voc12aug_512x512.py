# Augmented Pascal VOC 2012 (VOC2012 train.txt + SBD aug.txt = 10,582
# images; val.txt = 1,449), 512x512 crops, batch 8 on one GPU.
# The pipelines of mmseg's base already are the paper's: RandomResize
# (2048, 512) ratio 0.5-2.0 keep_ratio, RandomCrop 512x512 cat_max_ratio
# 0.75, RandomFlip 0.5, PhotoMetricDistortion (+ Pad to 512x512 with
# ignore index 255); test Resize (2048, 512) keep_ratio, whole inference.
_base_ = 'mmseg::_base_/datasets/pascal_voc12_aug.py'

train_dataloader = dict(batch_size=8, num_workers=4)
