# SegFormer MiT-B0 pretrained from scratch on CamVid source_train (daytime),
# plain full training (nothing frozen, BN in train mode), 2000 iterations of
# batch 8 with AdamW; validated on val. tools/camvid_experiment.py copies its
# last checkpoint to <out>/checkpoints/<this file's name>.pth, the
# fine-tunes' load_from.
_base_ = [
    './_base_/segformer_mit-b0_1xb8_camvid-112x84.py',
    '../_base_/schedules/pretrain_2k_adamw.py',
]
train_dataloader = dict(batch_size=8)
