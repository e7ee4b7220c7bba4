# BASE (not a runnable experiment): FCN fine-tuning on CamVid
# target_train (dusk), validated/tested on target_val, from the pretraining
# checkpoint; shared by its 5L and 10L setups.
_base_ = [
    './fcn_r18-d8_1xb8_camvid-112x84.py',
    '../../_base_/schedules/finetune_100it.py',
]
train_dataloader = dict(
    dataset=dict(ann_file='ImageSets/Segmentation/target_train.txt'))
val_dataloader = dict(
    dataset=dict(ann_file='ImageSets/Segmentation/target_val.txt'))
test_dataloader = val_dataloader
# written by tools/camvid_experiment.py (default --out), which overrides it
# with the checkpoint of its own --out
load_from = 'work_dirs/camvid_experiment/checkpoints/fcn_r18-d8_pretrain_1xb8-2k_camvid-source-80x80.pth'  # noqa
