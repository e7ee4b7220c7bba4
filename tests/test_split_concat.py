"""split_concat: the decode heads' concatenation convs as sums of per-branch
convs. Outputs and gradients equal the concatenated computation (float64),
each branch of a compressed conv is compressed on its own, its statistics
add up, state dicts and classes come back, and the step peak drops."""
import mmseg_hosvd.engine  # noqa: F401,I001  (first: the mmcv.ops fallback)
import pytest
import torch
import torch.nn as nn
from mmcv.cnn import ConvModule
from mmengine.optim import OptimWrapper
from mmengine.registry import DefaultScope
from mmseg.models.decode_heads import FCNHead
from mmseg.registry import MODELS

import transformer_models
from mmseg_hosvd.bench import TrainingStep
from mmseg_hosvd.compression import CompressionConfig, apply_compression
from mmseg_hosvd.concat_conv import concat_conv, split_problem
from mmseg_hosvd.lean_backward import install_lean_backward
from mmseg_hosvd.ops import CompressedConv2d
from mmseg_hosvd.ops.accounting import concatenated_stats
from mmseg_hosvd.ops.folding import folding_pays
from mmseg_hosvd.peak_memory import PeakMemoryMeter
from mmseg_hosvd.split_concat import install_split_concat

SIZE = 24
NORM = dict(type='BN', requires_grad=True)

#: model -> (its decode head's keys, the paths of its concatenation convs)
HEADS = {
    'fcn': (dict(type='FCNHead', in_channels=64, in_index=3, num_convs=2,
                 concat_input=True),
            ['decode_head.conv_cat']),
    'pspnet': (dict(type='PSPHead', in_channels=64, in_index=3,
                    pool_scales=(1, 2, 3, 6)),
               ['decode_head.bottleneck']),
    'deeplabv3': (dict(type='ASPPHead', in_channels=64, in_index=3,
                       dilations=(1, 2, 3)),
                  ['decode_head.bottleneck']),
    'deeplabv3plus': (dict(type='DepthwiseSeparableASPPHead', in_channels=64,
                           in_index=3, dilations=(1, 2, 3),
                           c1_in_channels=8, c1_channels=4),
                      ['decode_head.bottleneck']),
    'upernet': (dict(type='UPerHead', in_channels=[8, 16, 32, 64],
                     in_index=[0, 1, 2, 3], pool_scales=(1, 2, 3)),
                ['decode_head.bottleneck', 'decode_head.fpn_bottleneck']),
    'segformer': (None, ['decode_head.fusion_conv']),
}


def _model_cfg(family: str) -> dict:
    """A ResNetV1c-18 of 8 base channels (d8) and a 8-channel head."""
    head = dict(HEADS[family][0], channels=8, dropout_ratio=0.1,
                num_classes=4, norm_cfg=NORM, align_corners=False,
                loss_decode=dict(type='CrossEntropyLoss'))
    return dict(
        type='EncoderDecoder',
        data_preprocessor=transformer_models.PREPROCESSOR,
        backbone=dict(type='ResNetV1c', depth=18, base_channels=8,
                      stem_channels=8, num_stages=4, out_indices=(0, 1, 2, 3),
                      strides=(1, 2, 1, 1), dilations=(1, 1, 2, 4),
                      norm_cfg=NORM, norm_eval=False, contract_dilation=True),
        decode_head=head, train_cfg=dict(), test_cfg=dict(mode='whole'))


def _hook_cfg(model: nn.Module, family: str) -> dict:
    """A hosvd run: the head (and ``backbone.layer4``) train, the head's
    convs (and ``backbone.layer4.1``) are compressed."""
    head_convs = [path for path, m in model.named_modules()
                  if path.startswith('decode_head.') and
                  isinstance(m, nn.Conv2d) and 'conv_seg' not in path]
    if family == 'segformer':
        return dict(freeze=['backbone'], layers=head_convs)
    return dict(freeze=['backbone', '~backbone.layer4'],
                layers=['backbone.layer4.1'] + head_convs)


def _build(family: str, seed: int = 0, **keys) -> nn.Module:
    """The tiny model of ``family`` in float64 (``keys``: its config's)."""
    if family == 'segformer':
        return transformer_models.build('segformer', seed).double()
    torch.manual_seed(seed)
    with DefaultScope.overwrite_default_scope('mmseg'):
        model = MODELS.build(dict(_model_cfg(family), **keys)).double()
    generator = torch.Generator().manual_seed(seed + 1)
    for module in model.modules():  # non-trivial eval BatchNorms
        if isinstance(module, nn.modules.batchnorm._BatchNorm):
            n = module.num_features
            module.running_mean.copy_(torch.randn(n, generator=generator))
            module.running_var.copy_(torch.rand(n, generator=generator) + .5)
            with torch.no_grad():
                module.bias.copy_(torch.randn(n, generator=generator) * .1)
    return model


def _output_and_grads(family: str, split: bool, **keys):
    """The logits of one training-mode forward with grad, the trainable
    gradients of a fixed weighting of them, and what was applied."""
    model = _build(family)
    hook = _hook_cfg(model, family)
    hook.update(keys)
    applied = apply_compression(
        model, CompressionConfig.from_dict(dict(hook, split_concat=split)))
    model.train()
    applied.set_norm_eval()
    inputs = torch.randn(2, 3, SIZE, SIZE, dtype=torch.float64,
                         generator=torch.Generator().manual_seed(3))
    logits = model(inputs, mode='tensor')
    weights = torch.linspace(-1, 1, logits.numel(), dtype=logits.dtype)
    (logits * weights.view_as(logits)).sum().backward()
    grads = {n: p.grad.clone() for n, p in model.named_parameters()
             if p.requires_grad}
    return logits.detach(), grads, applied


def _assert_equal(got, want, skip=()):
    assert got.keys() == want.keys()
    for name, value in want.items():
        if name not in skip:
            torch.testing.assert_close(got[name], value, rtol=1e-9,
                                       atol=1e-11,
                                       msg=lambda m: f'{name}: {m}')


@pytest.mark.parametrize('family', list(HEADS))
def test_vanilla_outputs_and_gradients_equal(family):
    out, grads, applied = _output_and_grads(family, False, method='vanilla')
    split_out, split_grads, split_applied = _output_and_grads(
        family, True, method='vanilla', lean_backward='all')
    model = split_applied.model
    head_class = type(applied.model.decode_head)
    assert split_applied.split.split == ['decode_head']
    assert type(model.decode_head).__name__ == \
        'SplitConcat' + head_class.__name__
    assert 'split concat: 1 head(s) (decode_head)' in split_applied.summary()
    torch.testing.assert_close(split_out, out, rtol=1e-9, atol=1e-11)
    _assert_equal(split_grads, grads)
    for path in HEADS[family][1]:  # the split convs train
        assert f'{path}.conv.weight' in split_grads
    keys = list(model.state_dict())
    params = dict(model.named_parameters())
    assert keys == list(applied.model.state_dict())
    split_applied.remove()
    assert type(model.decode_head) is head_class
    assert list(model.state_dict()) == keys
    assert all(p is params[n] for n, p in model.named_parameters())


def test_hosvd_gradients_equal_when_the_concat_conv_is_plain():
    """HOSVD layers elsewhere (one, convs.0, reading a split branch), the
    concatenation conv trains uncompressed: every gradient is equal."""
    family = 'fcn'
    convs = HEADS[family][1]
    layers = [path for path in _hook_cfg(_build(family), family)['layers']
              if path not in [f'{c}.conv' for c in convs]]
    out, grads, _ = _output_and_grads(family, False, layers=layers)
    split_out, split_grads, applied = _output_and_grads(family, True,
                                                        layers=layers)
    assert not {f'{c}.conv' for c in convs} & set(applied.layers)
    torch.testing.assert_close(split_out, out, rtol=1e-9, atol=1e-11)
    _assert_equal(split_grads, grads)


@pytest.mark.parametrize('family', ['fcn', 'segformer'])
def test_hosvd_compressed_concat_conv(family):
    """The compressed concatenation conv: same output, same gradients
    except its own weight's (each branch is compressed on its own); its
    statistics cover the whole concatenation."""
    out, grads, applied = _output_and_grads(family, False)
    split_out, split_grads, split_applied = _output_and_grads(family, True)
    convs = [f'{p}.conv' for p in HEADS[family][1]]
    torch.testing.assert_close(split_out, out, rtol=1e-9, atol=1e-11)
    _assert_equal(split_grads, grads, skip={f'{c}.weight' for c in convs})
    for conv in convs:
        whole = applied.layers[conv].last_stats
        parts = split_applied.layers[conv].last_stats
        assert parts.input_shape == whole.input_shape
        assert parts.kept_bytes > 0 and parts.ranks != whole.ranks
        rel = (split_grads[f'{conv}.weight'] - grads[f'{conv}.weight']
               ).norm() / grads[f'{conv}.weight'].norm()
        assert 0 < rel < 1  # both approximate the same gradient


def _compressed_module(in_channels: int, method: str,
                       eps: float = 0.8) -> ConvModule:
    torch.manual_seed(0)
    module = ConvModule(in_channels, 5, 3, padding=1,
                        norm_cfg=dict(type='BN')).double()
    module.conv = CompressedConv2d.from_conv(module.conv, method, eps,
                                             name='cm.conv')
    return module.eval()


@pytest.mark.parametrize('method', ['hosvd', 'vanilla', 'gradient_filter'])
def test_stats_are_the_branches_stats(method):
    """One record for the split conv: the branches' stats concatenated
    (kept bytes summed, the concatenation's shape)."""
    generator = torch.Generator().manual_seed(1)
    branches = [torch.randn(2, c, 12, 12, dtype=torch.float64,
                            generator=generator) for c in (3, 4)]
    module = _compressed_module(7, method)
    concat_conv(module, branches).sum().backward()
    stats = module.conv.last_stats
    parts = []
    for x in branches:
        part = _compressed_module(x.shape[1], method)
        part(x)
        parts.append(part.conv.last_stats)
    assert stats.input_shape == (2, 7, 12, 12)
    assert stats.method == method
    assert stats.kept_bytes == sum(p.kept_bytes for p in parts) > 0
    assert stats.paper_elements == sum(p.paper_elements for p in parts)
    assert stats.ranks == concatenated_stats(parts).ranks
    with torch.no_grad():  # an uncompressed call leaves the stats alone
        concat_conv(module, branches)
    assert module.conv.last_stats is stats


def test_branch_weight_gradients_are_the_branch_convs():
    generator = torch.Generator().manual_seed(2)
    branches = [torch.randn(2, c, 10, 10, dtype=torch.float64,
                            generator=generator) for c in (3, 4)]
    module = _compressed_module(7, 'hosvd')
    out = concat_conv(module, branches)
    grad_out = torch.randn(out.shape, dtype=out.dtype, generator=generator)
    out.backward(grad_out)
    start = 0
    for x in branches:
        part = CompressedConv2d(x.shape[1], 5, 3, padding=1, bias=False,
                                method='hosvd', eps=0.8).double()
        with torch.no_grad():
            part.weight.copy_(module.conv.weight[:, start:start + x.shape[1]])
        y = part(x)
        # grad of the conv output through eval BN + ReLU: grad_out * s * mask
        norm = module.norm
        scale = norm.weight / (norm.running_var + norm.eps).sqrt()
        y.backward(grad_out * (out > 0) * scale.view(1, -1, 1, 1))
        torch.testing.assert_close(
            module.conv.weight.grad[:, start:start + x.shape[1]],
            part.weight.grad)
        start += x.shape[1]


def test_unsplittable_heads_are_left_alone_or_refused_by_name():
    aux = dict(HEADS['fcn'][0], in_index=2, in_channels=32,
               concat_input=False, channels=8, num_classes=4, norm_cfg=NORM,
               loss_decode=dict(type='CrossEntropyLoss'))
    model = _build('pspnet', auxiliary_head=aux)
    done = install_split_concat(model, True)
    assert done.split == ['decode_head']
    assert done.left == {'auxiliary_head': 'FCNHead with concat_input=False '
                         'builds no concatenation'}
    assert type(model.auxiliary_head) is FCNHead
    with pytest.raises(ValueError, match="split 'auxiliary_head'.*"
                       'concat_input=False'):
        install_split_concat(_build('pspnet', auxiliary_head=aux),
                             ['auxiliary_head'])
    with pytest.raises(ValueError, match="split 'backbone': ResNetV1c: no "
                       'split version'):
        install_split_concat(model, ['backbone'])
    with pytest.raises(ValueError, match="no module 'decode_head.nope'"):
        install_split_concat(model, ['decode_head.nope'])


def test_asi_concat_conv_is_left_alone_or_refused():
    model = _build('fcn')
    config = dict(_hook_cfg(model, 'fcn'), method='asi')
    applied = apply_compression(model, CompressionConfig.from_dict(
        dict(config, split_concat=True)))
    assert applied.split.split == []
    assert "'asi'" in applied.split.left['decode_head']
    assert type(model.decode_head) is FCNHead
    model = _build('fcn')
    with pytest.raises(ValueError, match="cannot split 'decode_head': "
                       "FCNHead.conv_cat: its conv is compressed with 'asi'"):
        apply_compression(model, CompressionConfig.from_dict(
            dict(config, split_concat=['decode_head'])))


@pytest.mark.parametrize('value', [1, 'decode_head', [1]])
def test_bad_split_concat_names_the_key(value):
    with pytest.raises(ValueError, match='split_concat: expected True, '
                       'False or a list of decode head paths'):
        CompressionConfig(layers=['decode_head.conv_seg'],
                          split_concat=value)
    assert CompressionConfig(layers=['a'], split_concat=['decode_head']
                             ).split_concat == ('decode_head', )


def _conv_module(in_channels: int, **keys) -> ConvModule:
    torch.manual_seed(0)
    module = ConvModule(in_channels, 5, 3, padding=1, norm_cfg=NORM,
                        **keys).double()
    generator = torch.Generator().manual_seed(4)
    with torch.no_grad():
        module.norm.running_mean.copy_(torch.randn(5, generator=generator))
        module.norm.running_var.copy_(torch.rand(5, generator=generator) + 1)
        module.norm.weight.copy_(torch.randn(5, generator=generator))
        module.norm.bias.copy_(torch.randn(5, generator=generator))
    return module.eval()


def _grads_of(module, branches, forward):
    inputs = [x.detach().requires_grad_() for x in branches]
    out = forward(module, inputs)
    out.backward(torch.linspace(-1, 1, out.numel(),
                                dtype=out.dtype).view_as(out))
    return [out] + [x.grad for x in inputs] + [
        p.grad for p in module.parameters()]


@pytest.mark.parametrize('size, pays', [(12, True), (1, False)])
@pytest.mark.parametrize('fold', ['lean_backward', 'efficient_conv_bn_eval'])
def test_a_batch_norm_the_conv_applies_is_applied_once(size, pays, fold):
    """A BatchNorm folded into the conv (lean_backward 'all', through the
    folded weight where that pays, else normalising the sum; or mmcv's
    efficient_conv_bn_eval) is applied once, to the sum."""
    generator = torch.Generator().manual_seed(5)
    branches = [torch.randn(2, c, size, size, dtype=torch.float64,
                            generator=generator) for c in (3, 4)]
    reference = _grads_of(_conv_module(7), branches,
                          lambda m, xs: m(torch.cat(xs, 1)))
    holder = nn.Module()
    holder.cm = _conv_module(
        7, efficient_conv_bn_eval=fold == 'efficient_conv_bn_eval')
    if fold == 'lean_backward':
        lean = install_lean_backward(holder, 'all')
        assert lean.folded == [('cm.conv', 'cm.bn')]
        assert folding_pays(holder.cm.conv, branches[0]) == pays
    got = _grads_of(holder.cm.eval(), branches, concat_conv)
    for value, want in zip(got, reference):
        torch.testing.assert_close(value, want, rtol=1e-9, atol=1e-12)


def test_concat_conv_refuses_what_it_cannot_split():
    module = ConvModule(8, 4, 3, groups=2, norm_cfg=NORM).double()
    branches = [torch.zeros(1, 4, 3, 3, dtype=torch.float64)] * 2
    assert split_problem(module) == 'its conv has groups=2'
    with pytest.raises(ValueError, match='groups=2'):
        concat_conv(module, branches)
    with pytest.raises(ValueError, match=r'branches of \[4, 4\] channels '
                       r'\(sum 8\) for a conv of 7 input channels'):
        concat_conv(_conv_module(7), branches)
    order = ConvModule(4, 4, 1, norm_cfg=NORM, order=('norm', 'conv', 'act'))
    assert 'before conv' in split_problem(order)


def test_step_peak_is_lower_with_split_concat():
    """A real training step (FCN, float32, vanilla, frozen backbone): the
    concatenation and its gradient are gone from the CPU step peak."""
    peaks = {}
    for split in (False, True):
        model = _build('fcn').float()
        head_convs = _hook_cfg(model, 'fcn')['layers'][1:]
        applied = apply_compression(model, CompressionConfig(
            method='vanilla', freeze=['backbone'], layers=head_convs,
            lean_loss=True, split_concat=split))
        wrapper = OptimWrapper(torch.optim.SGD(
            [p for p in model.parameters() if p.requires_grad], lr=0.01))
        step = TrainingStep(model, wrapper, [applied])
        data = transformer_models.batch((96, 96), n=2)
        step.run(data)  # the optimizer's state, allocator warm-up
        with PeakMemoryMeter('cpu') as meter:
            step.run(data)
        peaks[split] = meter.peak_bytes
    # FCN keeps x (2, 64, 12, 12) for convs.0 anyway; split, conv_cat keeps
    # no copy of it: at least that copy (float32) is off the peak
    assert peaks[True] <= peaks[False] - 2 * 64 * 12 * 12 * 4, peaks
