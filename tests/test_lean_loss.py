"""The chunked resize + cross-entropy equals mmseg's resize + CrossEntropyLoss
in value and every gradient."""
import copy
import os.path as osp
import warnings

import pytest
import torch
import torch.nn.functional as F
from mmengine.config import Config
from mmengine.structures import PixelData
from mmseg.models.decode_heads import FCNHead
from mmseg.registry import MODELS
from mmseg.structures import SegDataSample

from mmseg_hosvd.lean_loss import (LeanLossEncoderDecoder, install_lean_loss,
                                   lean_loss_by_feat, remove_lean_loss)
from mmseg_hosvd.ops.resize_cross_entropy import resize_cross_entropy

MODELS_DIR = osp.join(osp.dirname(osp.dirname(osp.abspath(__file__))),
                      'configs', '_base_', 'models')
SIX = ['fcn_r18-d8', 'pspnet_r18-d8', 'deeplabv3_r18-d8', 'upernet_r18',
       'mobilenet-v2-d8_deeplabv3', 'mobilenet-v2-d8_pspnet']


def labels_with_ignore(batch, size, classes, seed=0):
    gen = torch.Generator().manual_seed(seed)
    labels = torch.randint(0, classes, (batch, *size), generator=gen)
    labels[0, :3] = 255  # a band of ignored pixels
    return labels


@pytest.mark.parametrize('align_corners', [False, True])
@pytest.mark.parametrize('weighted', [False, True])
def test_function_matches_interpolate_cross_entropy(align_corners, weighted):
    torch.manual_seed(0)
    logits = torch.randn(3, 5, 6, 7, dtype=torch.float64, requires_grad=True)
    labels = labels_with_ignore(3, (23, 29), 5)
    weight = torch.rand(5, dtype=torch.float64) + 0.5 if weighted else None
    up = F.interpolate(logits, (23, 29), mode='bilinear',
                       align_corners=align_corners)
    ref = F.cross_entropy(up, labels, weight=weight, ignore_index=255,
                          reduction='sum')
    ref_grad, = torch.autograd.grad(1.7 * ref, logits)
    with warnings.catch_warnings():
        warnings.simplefilter('error')
        loss, correct = resize_cross_entropy(logits, labels, weight, 255,
                                             align_corners, chunk=2)
        grad, = torch.autograd.grad(1.7 * loss, logits)
    torch.testing.assert_close(loss, ref)
    torch.testing.assert_close(grad, ref_grad)
    hits = (up.argmax(1) == labels) & (labels != 255)
    assert int(correct) == int(hits.sum())
    assert not correct.requires_grad


@pytest.mark.parametrize('rows', [1, 4, 23])
def test_row_bands_give_the_same_loss_and_gradient(rows):
    """Bands of ``rows`` output rows (1: one row at a time; 23: the whole
    map) against interpolate + cross_entropy, in float64."""
    torch.manual_seed(1)
    logits = torch.randn(2, 5, 6, 7, dtype=torch.float64, requires_grad=True)
    labels = labels_with_ignore(2, (23, 29), 5)
    up = F.interpolate(logits, (23, 29), mode='bilinear', align_corners=False)
    ref = F.cross_entropy(up, labels, ignore_index=255, reduction='sum')
    ref_grad, = torch.autograd.grad(ref, logits)
    loss, correct = resize_cross_entropy(logits, labels, rows=rows)
    grad, = torch.autograd.grad(loss, logits)
    torch.testing.assert_close(loss, ref)
    torch.testing.assert_close(grad, ref_grad)
    assert int(correct) == int(((up.argmax(1) == labels) &
                                (labels != 255)).sum())


def test_row_bands_lower_the_peak():
    """One sample, 21 classes, 256x256: the whole map holds (21, 256, 256)
    float32 tensors (5.25 MiB each); bands of 16 rows a sixteenth."""
    from mmseg_hosvd.peak_memory import PeakMemoryMeter
    logits = torch.randn(1, 21, 32, 32, requires_grad=True)
    labels = torch.randint(0, 21, (1, 256, 256))
    peaks = {}
    for rows in (16, 256):
        meter = PeakMemoryMeter('cpu')
        with meter:
            loss, _ = resize_cross_entropy(logits, labels, rows=rows)
            loss.backward()
        logits.grad = None
        peaks[rows] = meter.peak_bytes
    assert peaks[256] > 2 * 21 * 256 * 256 * 4
    assert peaks[16] < peaks[256] / 4
    with pytest.raises(ValueError, match='rows must be a positive int'):
        resize_cross_entropy(logits, labels, rows=0)


def test_bfloat16_logits_upsample_in_float32():
    torch.manual_seed(0)
    logits = torch.randn(2, 4, 5, 5).bfloat16().requires_grad_()
    labels = labels_with_ignore(2, (11, 11), 4)
    weight = torch.tensor([0.5, 1.0, 2.0, 1.5], dtype=torch.bfloat16)
    loss, _ = resize_cross_entropy(logits, labels, weight)
    loss.backward()
    assert loss.dtype == torch.float32
    assert logits.grad.dtype == torch.bfloat16
    ref_logits = logits.detach().float().requires_grad_()
    ref = F.cross_entropy(F.interpolate(ref_logits, (11, 11), mode='bilinear'),
                          labels, weight=weight.float(), ignore_index=255,
                          reduction='sum')
    ref.backward()
    torch.testing.assert_close(loss, ref)
    torch.testing.assert_close(logits.grad, ref_logits.grad.bfloat16())


def test_function_bad_input():
    logits = torch.randn(2, 3, 4, 4)
    with pytest.raises(ValueError, match='labels must be int64'):
        resize_cross_entropy(logits, torch.zeros(2, 8, 8, dtype=torch.int32))
    with pytest.raises(ValueError, match='batch sizes differ'):
        resize_cross_entropy(logits, torch.zeros(3, 8, 8, dtype=torch.long))
    with pytest.raises(ValueError, match='chunk must be a positive int'):
        resize_cross_entropy(logits, torch.zeros(2, 8, 8, dtype=torch.long),
                             chunk=0)
    with pytest.raises(ValueError, match=r'class_weight has shape \(2,\)'):
        resize_cross_entropy(logits, torch.zeros(2, 8, 8, dtype=torch.long),
                             class_weight=torch.ones(2))


def samples(labels):
    out = []
    for label in labels:
        sample = SegDataSample()
        sample.gt_sem_seg = PixelData(data=label[None])
        out.append(sample)
    return out


def fcn_head(**loss):
    torch.manual_seed(0)
    loss_decode = dict(type='CrossEntropyLoss', **loss)
    return FCNHead(in_channels=6, channels=4, num_convs=1, num_classes=5,
                   dropout_ratio=0, loss_decode=loss_decode,
                   align_corners=loss.pop('align_corners', False)).double()


def compare_head(head, inputs, labels, chunk=2):
    """mmseg's loss_by_feat vs ours on the same head: values and grads of
    the head's parameters and of its input."""
    data = samples(labels)
    results = []
    for lean in (False, True):
        head.zero_grad()
        x = inputs.clone().requires_grad_()
        logits = head.forward([x])
        losses = (lean_loss_by_feat(head, logits, data, chunk)
                  if lean else head.loss_by_feat(logits, data))
        total = sum(v for k, v in losses.items() if k.startswith('loss'))
        total.backward()
        grads = [p.grad.clone() for p in head.parameters()] + [x.grad]
        results.append((losses, grads))
    (ref, ref_grads), (ours, our_grads) = results
    assert ref.keys() == ours.keys()
    for key in ref:
        torch.testing.assert_close(ours[key], ref[key])
    for ours_grad, ref_grad in zip(our_grads, ref_grads):
        torch.testing.assert_close(ours_grad, ref_grad)


@pytest.mark.parametrize('avg_non_ignore', [False, True])
@pytest.mark.parametrize('align_corners', [False, True])
def test_head_loss_ignore_index(avg_non_ignore, align_corners):
    head = fcn_head(avg_non_ignore=avg_non_ignore, loss_weight=0.4)
    head.align_corners = align_corners
    inputs = torch.randn(3, 6, 5, 6, dtype=torch.float64)
    compare_head(head, inputs, labels_with_ignore(3, (20, 22), 5))


@pytest.mark.parametrize('avg_non_ignore', [False, True])
def test_head_loss_class_weight(avg_non_ignore):
    # mmseg's class-weighted mean indexes the weights with every label,
    # so it fails on ignored pixels: compare on labels without them
    head = fcn_head(avg_non_ignore=avg_non_ignore, loss_weight=2.5,
                    class_weight=[0.5, 1.0, 2.0, 1.5, 0.8])
    inputs = torch.randn(2, 6, 5, 6, dtype=torch.float64)
    labels = torch.randint(0, 5, (2, 17, 19),
                           generator=torch.Generator().manual_seed(1))
    compare_head(head, inputs, labels, chunk=1)


def test_class_weight_with_ignored_pixels():
    weights = [0.5, 1.0, 2.0, 1.5, 0.8]
    head = fcn_head(avg_non_ignore=True, class_weight=weights)
    logits = torch.randn(2, 5, 4, 4, dtype=torch.float64)
    labels = labels_with_ignore(2, (9, 9), 5)
    losses = lean_loss_by_feat(head, logits, samples(labels))
    up = F.interpolate(logits, (9, 9), mode='bilinear')
    weight = torch.tensor(weights, dtype=torch.float64)
    valid = labels != 255
    ref = F.cross_entropy(up, labels, weight=weight, ignore_index=255,
                          reduction='sum') / weight[labels[valid]].sum()
    torch.testing.assert_close(losses['loss_ce'], ref)
    head = fcn_head(avg_non_ignore=False, class_weight=weights)
    with pytest.raises(ValueError, match='set avg_non_ignore=True'):
        lean_loss_by_feat(head, logits, samples(labels))


def test_several_loss_terms_and_sum_reduction():
    torch.manual_seed(0)
    head = FCNHead(in_channels=6, channels=4, num_convs=1, num_classes=5,
                   dropout_ratio=0, loss_decode=[
                       dict(type='CrossEntropyLoss', loss_weight=1.0),
                       dict(type='CrossEntropyLoss', loss_weight=0.3,
                            reduction='sum', avg_non_ignore=True),
                       dict(type='CrossEntropyLoss', loss_name='loss_x',
                            avg_non_ignore=True)]).double()
    inputs = torch.randn(2, 6, 5, 6, dtype=torch.float64)
    compare_head(head, inputs, labels_with_ignore(2, (12, 13), 5))


@pytest.mark.parametrize('loss, message', [
    (dict(type='DiceLoss'), 'FCNHead uses DiceLoss; only CrossEntropyLoss'),
    (dict(type='CrossEntropyLoss', use_sigmoid=True), 'use_sigmoid'),
    (dict(type='CrossEntropyLoss', reduction='none'), "reduction 'none'"),
])
def test_unsupported_losses_are_named(loss, message):
    head = FCNHead(in_channels=6, channels=4, num_convs=1, num_classes=5,
                   loss_decode=loss)
    labels = torch.zeros(1, 8, 8, dtype=torch.long)
    with pytest.raises(ValueError, match=message):
        lean_loss_by_feat(head, torch.randn(1, 5, 4, 4), samples(labels))


def test_pixel_sampler_is_refused():
    head = FCNHead(in_channels=6, channels=4, num_classes=5,
                   sampler=dict(type='OHEMPixelSampler', thresh=0.7))
    labels = torch.zeros(1, 8, 8, dtype=torch.long)
    with pytest.raises(ValueError, match='uses a pixel sampler'):
        lean_loss_by_feat(head, torch.randn(1, 5, 4, 4), samples(labels))


def build_model(name, auxiliary=False):
    cfg = Config.fromfile(osp.join(MODELS_DIR, f'{name}.py'))
    model_cfg = copy.deepcopy(cfg.model)
    model_cfg.pop('data_preprocessor', None)
    model_cfg.backbone.pop('init_cfg', None)
    model_cfg.backbone['init_cfg'] = None
    model_cfg.pop('pretrained', None)
    if auxiliary:
        model_cfg.auxiliary_head = dict(
            type='FCNHead', in_channels=256, in_index=2, channels=8,
            num_convs=1, concat_input=False, dropout_ratio=0,
            num_classes=21, norm_cfg=dict(type='BN', requires_grad=True),
            align_corners=False,
            loss_decode=dict(type='CrossEntropyLoss', loss_weight=0.4,
                             avg_non_ignore=True))
    torch.manual_seed(0)
    return MODELS.build(model_cfg)


def model_losses_and_grads(model, images, data):
    model.zero_grad()
    losses = model.loss(images, data)
    total = sum(v for k, v in losses.items() if 'loss' in k)
    total.backward()
    grads = {n: p.grad.clone() for n, p in model.named_parameters()
             if p.grad is not None}
    return losses, grads


@pytest.mark.parametrize('name', SIX)
def test_six_models_heads(name):
    model = build_model(name, auxiliary=name == 'fcn_r18-d8').double()
    model.train()
    torch.manual_seed(1)
    images = torch.randn(2, 3, 32, 32, dtype=torch.float64)
    data = samples(labels_with_ignore(2, (32, 32), 21))
    for sample in data:
        sample.set_metainfo(dict(img_shape=(32, 32), pad_shape=(32, 32)))
    keys = set(model.state_dict())
    ref, ref_grads = model_losses_and_grads(model, images, data)
    install_lean_loss(model, chunk=1)
    assert isinstance(model, LeanLossEncoderDecoder)
    assert set(model.state_dict()) == keys
    ours, our_grads = model_losses_and_grads(model, images, data)
    assert ref.keys() == ours.keys()
    if name == 'fcn_r18-d8':
        assert 'aux.loss_ce' in ours
    for key in ref:
        torch.testing.assert_close(ours[key], ref[key])
    assert ref_grads.keys() == our_grads.keys()
    for key in ref_grads:
        torch.testing.assert_close(our_grads[key], ref_grads[key])
    remove_lean_loss(model)
    assert type(model).__name__ == 'EncoderDecoder'


def test_install_refuses_other_segmentors_and_losses():
    with pytest.raises(TypeError, match='needs an mmseg EncoderDecoder, '
                       'got FCNHead'):
        install_lean_loss(FCNHead(in_channels=6, channels=4, num_classes=5))
    model = build_model('fcn_r18-d8')
    model.decode_head.loss_decode = MODELS.build(dict(type='DiceLoss'))
    with pytest.raises(ValueError, match='FCNHead uses DiceLoss'):
        install_lean_loss(model)
    assert type(model).__name__ == 'EncoderDecoder'


def test_registered_for_configs():
    cfg = Config.fromfile(osp.join(MODELS_DIR, 'fcn_r18-d8.py'))
    model_cfg = copy.deepcopy(cfg.model)
    model_cfg.pop('data_preprocessor', None)
    model_cfg.backbone['init_cfg'] = None
    model_cfg.update(type='LeanLossEncoderDecoder', lean_loss_chunk=2)
    model = MODELS.build(model_cfg)
    assert isinstance(model, LeanLossEncoderDecoder)
    assert model.lean_loss_chunk == 2
