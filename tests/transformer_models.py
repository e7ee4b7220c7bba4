"""Tiny SegFormer (MiT) and Swin segmentors for the transformer tests.

Both are mmseg ``EncoderDecoder`` s built from dicts (no config file), with
a ``SegDataPreprocessor``, small enough for a CPU training step in well
under a second at 64x64.
"""
from typing import Dict, List

import torch
import torch.nn as nn

import mmseg_hosvd.engine  # noqa: F401,I001  (first: the mmcv.ops fallback)
from mmengine.registry import DefaultScope
from mmengine.structures import PixelData
from mmseg.registry import MODELS
from mmseg.structures import SegDataSample

NUM_CLASSES = 4
CROP = (64, 64)
PREPROCESSOR = dict(type='SegDataPreProcessor', mean=[123.675, 116.28, 103.53],
                    std=[58.395, 57.12, 57.375], bgr_to_rgb=True,
                    pad_val=0, seg_pad_val=255, size=CROP)


def decode_head(head: str, in_channels: List[int], **kwargs) -> dict:
    """A ``head`` over the 4 backbone stages of ``in_channels`` channels:
    16 channels, BN, cross-entropy; ``kwargs`` add head-specific keys."""
    return dict(type=head, in_channels=in_channels, in_index=[0, 1, 2, 3],
                channels=16, dropout_ratio=0.1, num_classes=NUM_CLASSES,
                norm_cfg=dict(type='BN', requires_grad=True),
                align_corners=False,
                loss_decode=dict(type='CrossEntropyLoss', use_sigmoid=False,
                                 loss_weight=1.0, avg_non_ignore=True),
                **kwargs)


def segformer_cfg(drop: float = 0.0) -> dict:
    """MiT with 4 stages of one layer each, 16-16-32-32 channels;
    ``drop``: its dropout and attention-dropout rates."""
    return dict(
        type='EncoderDecoder',
        data_preprocessor=PREPROCESSOR,
        backbone=dict(type='MixVisionTransformer', in_channels=3,
                      embed_dims=16, num_stages=4, num_layers=[1, 1, 1, 1],
                      num_heads=[1, 1, 2, 2], patch_sizes=[7, 3, 3, 3],
                      sr_ratios=[4, 2, 1, 1], out_indices=(0, 1, 2, 3),
                      mlp_ratio=2, qkv_bias=True, drop_rate=drop,
                      attn_drop_rate=drop, drop_path_rate=0.0),
        decode_head=decode_head('SegformerHead', [16, 16, 32, 32]),
        train_cfg=dict(), test_cfg=dict(mode='whole'))


def swin_cfg(depths=(1, 1, 1, 1), drop: float = 0.0) -> dict:
    """Swin with ``embed_dims=24``, one head per stage, window 4;
    ``drop``: its dropout and attention-dropout rates."""
    return dict(
        type='EncoderDecoder',
        data_preprocessor=PREPROCESSOR,
        backbone=dict(type='SwinTransformer', pretrain_img_size=64,
                      embed_dims=24, patch_size=4, window_size=4, mlp_ratio=2,
                      depths=depths, num_heads=(1, 1, 1, 1),
                      strides=(4, 2, 2, 2), out_indices=(0, 1, 2, 3),
                      qkv_bias=True, drop_rate=drop, attn_drop_rate=drop,
                      drop_path_rate=0.0, patch_norm=True,
                      act_cfg=dict(type='GELU'),
                      norm_cfg=dict(type='LN')),
        decode_head=decode_head('UPerHead', [24, 48, 96, 192],
                                pool_scales=(1, 2)),
        train_cfg=dict(), test_cfg=dict(mode='whole'))


def build(family: str, seed: int = 0, **kwargs) -> nn.Module:
    """``'segformer'`` or ``'swin'`` (``kwargs`` go to its cfg function)."""
    torch.manual_seed(seed)
    cfg = segformer_cfg(**kwargs) if family == 'segformer' else \
        swin_cfg(**kwargs)
    with DefaultScope.overwrite_default_scope('mmseg'):
        model = MODELS.build(cfg)
    return model


def batch(size=CROP, n: int = 2, seed: int = 0) -> Dict[str, List]:
    """A ``train_step`` batch: ``n`` random uint8 images and label maps."""
    generator = torch.Generator().manual_seed(seed)
    inputs, samples = [], []
    for _ in range(n):
        inputs.append(torch.randint(0, 256, (3, *size), dtype=torch.uint8,
                                    generator=generator))
        sample = SegDataSample()
        sample.gt_sem_seg = PixelData(data=torch.randint(
            0, NUM_CLASSES, (1, *size), generator=generator))
        sample.set_metainfo(dict(img_shape=size, ori_shape=size,
                                 pad_shape=size))
        samples.append(sample)
    return dict(inputs=inputs, data_samples=samples)
