# BASE (not a runnable experiment): SegFormer MiT-B0 fine-tuning on CamVid
# target_train (dusk), validated/tested on target_val, from the pretraining
# checkpoint; shared by its 5L and 10L setups. AdamW (finetune_100it_adamw).
_base_ = [
    './segformer_mit-b0_1xb8_camvid-112x84.py',
    '../../_base_/schedules/finetune_100it_adamw.py',
]
train_dataloader = dict(
    dataset=dict(ann_file='ImageSets/Segmentation/target_train.txt'))
val_dataloader = dict(
    dataset=dict(ann_file='ImageSets/Segmentation/target_val.txt'))
test_dataloader = val_dataloader
# as in the VOC configs (configs/_base_/models/segformer_mit-b0.py): no
# stochastic depth and no dropout before the classifier while fine-tuning
# (the pretraining used mmseg's 0.1 for both)
model = dict(
    backbone=dict(drop_path_rate=0.0), decode_head=dict(dropout_ratio=0))
# written by tools/camvid_experiment.py (default --out), which overrides it
# with the checkpoint of its own --out
load_from = 'work_dirs/camvid_experiment/checkpoints/segformer_mit-b0_pretrain_1xb8-2k_camvid-source-80x80.pth'  # noqa
