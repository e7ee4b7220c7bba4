# CamVid in VOC layout (data/camvid_voc, tools/convert_camvid.py): 11
# classes, 255 = unlabelled. Reduced resolution for a CPU-scale experiment
# (a deviation from the paper's 512x512 VOC crops): the 480x360 frames are
# resized to 112x84 (x0.233) for testing and to 112x84 x [0.5, 2.0]
# (keep ratio) for training, then cropped to 80x80 (cat_max_ratio
# 0.75), flipped and photometrically distorted: the shape of the paper's VOC
# pipeline, scaled down. Batch 8. Metrics are computed at 480x360 (the
# prediction is resized back to the original frame).
#
# Splits (ImageSets/Segmentation): source_train (305 daytime frames),
# target_train (62 dusk frames), target_val (62 other dusk frames), val (101
# daytime frames of CamVid val). This base trains on source_train and
# validates/tests on val (the pretraining); the fine-tuning bases switch to
# target_train and target_val.
#
# data_root is relative to the repository root (run from there); override it
# with --cfg-options train_dataloader.dataset.data_root=... (and val/test) or
# with tools/camvid_experiment.py --data-root.
# mmseg's generic dataset: PascalVOCDataset refuses class names that are not
# VOC's, the VOC layout is read the same way (<name>.jpg / <name>.png listed
# by the split file)
dataset_type = 'BaseSegDataset'
data_root = 'data/camvid_voc'  # made by tools/convert_camvid.py
crop_size = (80, 80)
img_scale = (112, 84)
metainfo = dict(
    classes=('sky', 'building', 'pole', 'road', 'pavement', 'tree',
             'signsymbol', 'fence', 'car', 'pedestrian', 'bicyclist'),
    # the usual CamVid (SegNet) colours
    palette=[[128, 128, 128], [128, 0, 0], [192, 192, 128], [128, 64, 128],
             [60, 40, 222], [128, 128, 0], [192, 128, 128], [64, 64, 128],
             [64, 0, 128], [64, 64, 0], [0, 128, 192]])
train_pipeline = [
    dict(type='LoadImageFromFile'),
    dict(type='LoadAnnotations'),
    dict(
        type='RandomResize',
        scale=img_scale,
        ratio_range=(0.5, 2.0),
        keep_ratio=True),
    dict(type='RandomCrop', crop_size=crop_size, cat_max_ratio=0.75),
    dict(type='RandomFlip', prob=0.5),
    dict(type='PhotoMetricDistortion'),
    dict(type='PackSegInputs')
]
test_pipeline = [
    dict(type='LoadImageFromFile'),
    dict(type='Resize', scale=img_scale, keep_ratio=True),
    # annotations after Resize: the metric is computed at 480x360
    dict(type='LoadAnnotations'),
    dict(type='PackSegInputs')
]
data_prefix = dict(img_path='JPEGImages', seg_map_path='SegmentationClassAug')
train_dataloader = dict(
    batch_size=8,
    num_workers=0,
    persistent_workers=False,
    sampler=dict(type='InfiniteSampler', shuffle=True),
    dataset=dict(
        type=dataset_type,
        data_root=data_root,
        metainfo=metainfo,
        data_prefix=data_prefix,
        img_suffix='.jpg',
        seg_map_suffix='.png',
        ann_file='ImageSets/Segmentation/source_train.txt',
        pipeline=train_pipeline))
# every frame has the same size: test batches can be stacked
val_dataloader = dict(
    batch_size=8,
    num_workers=0,
    persistent_workers=False,
    sampler=dict(type='DefaultSampler', shuffle=False),
    dataset=dict(
        type=dataset_type,
        data_root=data_root,
        metainfo=metainfo,
        data_prefix=data_prefix,
        img_suffix='.jpg',
        seg_map_suffix='.png',
        ann_file='ImageSets/Segmentation/val.txt',
        pipeline=test_pipeline))
test_dataloader = val_dataloader

val_evaluator = dict(type='IoUMetric', iou_metrics=['mIoU'])
test_evaluator = val_evaluator
