"""lean_backward: exact replacements that keep less for backward.

Gradients of every trainable parameter with and without the option agree in
float64 on the six paper models; the ops match autograd; checkpoints keep
their keys; the saved bytes drop."""
import copy

import pytest
import torch
import torch.nn as nn
from mmengine.config import Config
from mmengine.registry import HOOKS
from mmengine.structures import PixelData
from mmseg.registry import MODELS
from mmseg.structures import SegDataSample

from mmseg_hosvd.compression import CompressionConfig, apply_compression
from mmseg_hosvd.lean_backward import conv_norm_pairs, remove_lean_backward
from mmseg_hosvd.ops.activation import (MaskedReLU, MaskedReLU6, pack_bits,
                                        unpack_bits)
from mmseg_hosvd.ops.folding import (LeanBatchNorm2d, NormFoldingConv2d,
                                     fold_batch_norm, folding_pays)
from mmseg_hosvd.ops.pooling import ShapeOnlyAdaptiveAvgPool2d
from mmseg_hosvd.profiling import SavedTensorMeter
from test_training import FAMILIES, leaf_config

SIZE = 40


def _randomise_norms(model: nn.Module, seed: int) -> None:
    generator = torch.Generator().manual_seed(seed)
    for module in model.modules():
        if isinstance(module, nn.modules.batchnorm._BatchNorm):
            n = module.num_features
            module.running_mean.copy_(torch.randn(n, generator=generator))
            module.running_var.copy_(
                torch.rand(n, generator=generator) + 0.5)
            with torch.no_grad():
                module.weight.copy_(torch.randn(n, generator=generator))
                module.bias.copy_(torch.randn(n, generator=generator))


def _batch(num_classes: int, seed: int = 0):
    generator = torch.Generator().manual_seed(seed)
    inputs = torch.randn(2, 3, SIZE, SIZE, generator=generator,
                         dtype=torch.float64)
    samples = []
    for _ in range(2):
        label = torch.randint(0, num_classes, (1, SIZE, SIZE),
                              generator=generator)
        sample = SegDataSample(gt_sem_seg=PixelData(data=label))
        sample.set_metainfo(dict(img_shape=(SIZE, SIZE),
                                 ori_shape=(SIZE, SIZE),
                                 pad_shape=(SIZE, SIZE)))
        samples.append(sample)
    return inputs, samples


def _gradients(cfg, state, method: str, eps: float, lean: str):
    """Trainable parameters' gradients (float64), saved activation bytes,
    what was applied and how many conv calls applied a folded BatchNorm."""
    model = MODELS.build(copy.deepcopy(cfg.model)).double()
    model.load_state_dict(state)
    hook_cfg = copy.deepcopy(cfg.default_hooks.compression)
    hook_cfg.update(method=method, eps=eps, lean_backward=lean)
    applied = apply_compression(
        model, CompressionConfig.from_hook_cfg(hook_cfg))
    model.train()
    applied.set_norm_eval()
    folded_calls = []
    for module in model.modules():
        if getattr(module, 'folded_norm', None) is not None:
            # calls that apply their BatchNorm through the folded weight
            module.register_forward_pre_hook(
                lambda m, args: folded_calls.append(
                    not m.folded_norm.training and folding_pays(m, args[0])))
    inputs, samples = _batch(cfg.model.decode_head.num_classes)
    params = [p for p in model.parameters() if p.requires_grad]
    with SavedTensorMeter(params) as meter:
        losses = model(inputs, samples, mode='loss')
        loss, _ = model.parse_losses(losses)
        saved = meter.activation_bytes()
    loss.backward()
    grads = {n: None if p.grad is None else p.grad.clone()
             for n, p in model.named_parameters() if p.requires_grad}
    return grads, saved, applied, sum(folded_calls)


@pytest.mark.parametrize('family, method, eps, lean', [
    (family, method, 0.8, 'exact') for family in FAMILIES
    for method in ('vanilla', 'hosvd')
] + [('fcn', 'vanilla', 0.8, 'all'), ('deeplabv3-m', 'hosvd', 1.0, 'all')])
def test_gradients_equal_with_and_without(family, method, eps, lean):
    cfg = Config.fromfile(leaf_config(family, '10l', 'vanilla'))
    torch.manual_seed(0)
    model = MODELS.build(copy.deepcopy(cfg.model)).double()
    model.init_weights()
    _randomise_norms(model, seed=1)
    state = model.state_dict()
    reference, saved_off, _, _ = _gradients(cfg, state, method, eps, 'off')
    grads, saved_on, applied, folded_calls = _gradients(cfg, state, method,
                                                        eps, lean)
    assert applied.lean.lean_norms and applied.lean.masked_activations
    if family.endswith('-m') and (method == 'vanilla' or lean == 'all'):
        # the depthwise convs of layer7 (trainable BN) fold at this size
        assert folded_calls > 0
    assert grads.keys() == reference.keys()
    for name, grad in reference.items():
        assert (grads[name] is None) == (grad is None), name
        if grad is None:
            continue
        torch.testing.assert_close(grads[name], grad, rtol=1e-9, atol=1e-12,
                                   msg=lambda m: f'{name}: {m}')


# ---------------------------------------------------------------------------
# the ops, against autograd
# ---------------------------------------------------------------------------
def _norm(channels: int, trainable: bool, seed: int = 0) -> nn.BatchNorm2d:
    generator = torch.Generator().manual_seed(seed)
    norm = nn.BatchNorm2d(channels).double()
    norm.running_mean.copy_(torch.randn(channels, generator=generator))
    norm.running_var.copy_(torch.rand(channels, generator=generator) + 0.5)
    with torch.no_grad():
        norm.weight.copy_(torch.randn(channels, generator=generator))
        norm.bias.copy_(torch.randn(channels, generator=generator))
    norm.requires_grad_(trainable)
    return norm.eval()


def _grads(modules, x):
    out = x
    for module in modules:
        out = module(out)
    (out * torch.linspace(-1, 1, out.numel(), dtype=out.dtype).view_as(out)
     ).sum().backward()
    params = [p for m in modules for p in m.parameters()]
    return out.detach(), x.grad, [
        None if p.grad is None else p.grad.clone() for p in params
    ]


@pytest.mark.parametrize('bias', [True, False])
@pytest.mark.parametrize('trainable_norm', [True, False])
@pytest.mark.parametrize('batch, size, folds', [(4, 12, True),
                                                (1, 2, False)])
def test_folded_conv_norm_matches_conv_then_norm(bias, trainable_norm, batch,
                                                  size, folds):
    torch.manual_seed(0)
    conv = nn.Conv2d(6, 5, 3, padding=1, bias=bias).double()
    norm = _norm(5, trainable_norm)
    x = torch.randn(batch, 6, size, size, dtype=torch.float64,
                    requires_grad=True)
    ref = _grads([conv, norm], x)

    conv2 = copy.deepcopy(conv)
    norm2 = copy.deepcopy(norm)
    conv2.zero_grad(), norm2.zero_grad()
    folding = NormFoldingConv2d.from_conv(conv2)
    lean_norm = LeanBatchNorm2d.from_norm(norm2)
    if trainable_norm:  # as install_lean_backward: frozen ones scale only
        folding.fold_norm(lean_norm)
    x2 = x.detach().clone().requires_grad_()
    assert folding_pays(folding, x2) == folds
    with SavedTensorMeter(list(conv2.parameters()) +
                          list(norm2.parameters())) as meter:
        out = folding(x2)
        out = lean_norm(out)
        kept = meter.activation_bytes()
    assert lean_norm.folded == trainable_norm
    (out * torch.linspace(-1, 1, out.numel(), dtype=out.dtype).view_as(out)
     ).sum().backward()
    torch.testing.assert_close(out.detach(), ref[0], rtol=1e-12, atol=1e-12)
    torch.testing.assert_close(x2.grad, ref[1], rtol=1e-12, atol=1e-12)
    params = list(conv2.parameters()) + list(norm2.parameters())
    for p, want in zip(params, ref[2]):
        if want is None:
            assert p.grad is None
        else:
            torch.testing.assert_close(p.grad, want, rtol=1e-10, atol=1e-12)
    # the BatchNorm's input
    # (the conv output) only when it is trainable and folding did not pay
    x_bytes = 0  # a leaf that requires grad: counted as a parameter
    out_bytes = out.numel() * 8
    if folds and trainable_norm:
        # the folded weight, and per-channel vectors (scale, shift)
        weight_bytes = conv.weight.numel() * 8
        assert weight_bytes <= kept - x_bytes <= weight_bytes + 3 * 5 * 8
    elif trainable_norm:
        # the conv output, and the running statistics (buffers)
        assert out_bytes <= kept - x_bytes <= out_bytes + 2 * 5 * 8
    else:
        assert kept == x_bytes + 5 * 8  # the scale


def test_fold_batch_norm_is_the_eval_transform():
    conv = nn.Conv2d(3, 4, 1, bias=True).double()
    norm = _norm(4, True)
    x = torch.randn(2, 3, 5, 5, dtype=torch.float64)
    weight, bias = fold_batch_norm(conv.weight, conv.bias, norm)
    torch.testing.assert_close(
        torch.nn.functional.conv2d(x, weight, bias), norm(conv(x)))


def test_fold_norm_refuses_a_plain_norm_and_a_wrong_width():
    folding = NormFoldingConv2d(3, 4, 1)
    with pytest.raises(TypeError, match='LeanBatchNorm2d'):
        folding.fold_norm(nn.BatchNorm2d(4))
    with pytest.raises(ValueError, match='5 features'):
        folding.fold_norm(LeanBatchNorm2d(5))


@pytest.mark.parametrize('numel', [1, 7, 8, 9, 1000])
def test_pack_bits_round_trip(numel):
    mask = torch.rand(numel, generator=torch.Generator().manual_seed(numel)
                      ) > 0.5
    packed = pack_bits(mask)
    assert packed.dtype == torch.uint8 and packed.numel() == -(-numel // 8)
    assert torch.equal(unpack_bits(packed, numel), mask)


@pytest.mark.parametrize('inplace', [False, True])
@pytest.mark.parametrize('cls, ref', [(MaskedReLU, nn.ReLU),
                                      (MaskedReLU6, nn.ReLU6)])
def test_masked_activations_match_autograd_and_keep_bits(cls, ref, inplace):
    # values on the kinks (0 and 6) included
    base = torch.tensor([-1.0, 0.0, 0.5, 5.999, 6.0, 7.0]).repeat(4, 3, 2, 1)
    base = (base * torch.linspace(0.5, 1.5, 6)).double()
    base[0, 0, 0, :2] = torch.tensor([0.0, 6.0], dtype=torch.float64)
    grad = torch.randn(base.shape, dtype=torch.float64)
    a = (base.clone() * 1).requires_grad_()
    ref_out = ref()(a * 1)
    ref_out.backward(grad)
    b = base.clone().requires_grad_()
    with SavedTensorMeter() as meter:
        out = cls(inplace=inplace)(b * 1)
        kept = meter.activation_bytes()
    out.backward(grad)
    assert torch.equal(out.detach(), ref_out.detach())
    assert torch.equal(b.grad, a.grad)
    assert kept == -(-base.numel() // 8)  # one bit per element


def test_masked_activation_keeps_nothing_without_grad():
    x = torch.randn(2, 3, 4, 4)
    with SavedTensorMeter() as meter:
        y = MaskedReLU()(x)
        assert meter.activation_bytes() == 0
    assert torch.equal(y, torch.relu(x))


@pytest.mark.parametrize('output_size', [1, 2, 3, 6, (2, 5)])
def test_shape_only_pool_matches_autograd(output_size):
    x = torch.randn(2, 3, 13, 11, dtype=torch.float64, requires_grad=True)
    want = nn.AdaptiveAvgPool2d(output_size)(x)
    grad = torch.randn(want.shape, dtype=torch.float64)
    want_grad, = torch.autograd.grad(want, x, grad)
    with SavedTensorMeter() as meter:
        got = ShapeOnlyAdaptiveAvgPool2d(output_size)(x)
        assert meter.activation_bytes() == 0
    got_grad, = torch.autograd.grad(got, x, grad)
    torch.testing.assert_close(got, want, rtol=0, atol=0)
    torch.testing.assert_close(got_grad, want_grad, rtol=1e-14, atol=1e-14)


# ---------------------------------------------------------------------------
# surgery and composition
# ---------------------------------------------------------------------------
def _deeplabv3(lean: str):
    cfg = Config.fromfile(leaf_config('deeplabv3', '10l', 'hosvd'))
    torch.manual_seed(0)
    model = MODELS.build(copy.deepcopy(cfg.model))
    hook_cfg = copy.deepcopy(cfg.default_hooks.compression)
    hook_cfg.update(lean_backward=lean)
    applied = apply_compression(
        model, CompressionConfig.from_hook_cfg(hook_cfg))
    return model, applied


def test_state_dict_and_parameters_unchanged_and_removable():
    plain, _ = _deeplabv3('off')
    model, applied = _deeplabv3('exact')
    assert list(model.state_dict()) == list(plain.state_dict())
    params = dict(model.named_parameters())
    # the BatchNorms are new modules sharing the original Parameters
    for path in applied.lean.lean_norms:
        norm = model.get_submodule(path)
        assert isinstance(norm, LeanBatchNorm2d)
        assert norm.weight is params[f'{path}.weight']
    # paper setup: layer4's BN are frozen (scale only), the ASPP ones train
    # after compressed convs: unfolded in 'exact'
    assert ('decode_head.aspp_modules.0.conv',
            'decode_head.aspp_modules.0.bn') in applied.lean.unfolded
    assert applied.lean.folded == []
    originals = dict(applied.lean.originals)
    remove_lean_backward(model, applied.lean)
    for path, module in originals.items():
        assert model.get_submodule(path) is module
    assert not any(isinstance(m, (LeanBatchNorm2d, MaskedReLU,
                                  ShapeOnlyAdaptiveAvgPool2d))
                   for m in model.modules())


def test_all_mode_folds_trainable_norms_after_compressed_convs():
    model, applied = _deeplabv3('all')
    assert ('decode_head.aspp_modules.0.conv',
            'decode_head.aspp_modules.0.bn') in applied.lean.folded
    conv = model.get_submodule('decode_head.aspp_modules.0.conv')
    assert conv.folded_norm is model.get_submodule(
        'decode_head.aspp_modules.0.bn')
    assert 'decode_head.aspp_modules.0.bn' not in dict(conv.named_modules())


def test_no_folding_when_norms_train():
    cfg = Config.fromfile(leaf_config('fcn', '5l', 'hosvd'))
    model = MODELS.build(copy.deepcopy(cfg.model))
    hook_cfg = copy.deepcopy(cfg.default_hooks.compression)
    hook_cfg.update(norm_eval=False)
    applied = apply_compression(
        model, CompressionConfig.from_hook_cfg(hook_cfg))
    assert applied.lean.lean_norms == [] and applied.lean.masked_activations
    assert not any(isinstance(m, LeanBatchNorm2d) for m in model.modules())


def test_bad_mode_is_refused():
    with pytest.raises(ValueError, match="lean_backward: unknown mode 'on'"):
        HOOKS.build(dict(type='ActivationCompressionHook', method='hosvd',
                         lean_backward='on'))


def test_composes_with_mmcv_efficient_conv_bn_eval():
    """mmcv's ConvModule(efficient_conv_bn_eval=True) folds by calling
    ``conv._conv_forward(x, folded_weight, folded_bias)``: a compressed conv
    there gives the gradients of conv -> BN, and lean_backward leaves the
    pair to mmcv."""
    from mmcv.cnn import ConvModule
    from mmseg_hosvd.ops import CompressedConv2d
    torch.manual_seed(0)

    def block(efficient: bool) -> nn.Module:
        torch.manual_seed(0)
        module = ConvModule(4, 6, 3, padding=1, norm_cfg=dict(type='BN'),
                            efficient_conv_bn_eval=efficient).double()
        generator = torch.Generator().manual_seed(3)
        module.bn.running_mean.copy_(torch.randn(6, generator=generator))
        module.bn.running_var.copy_(torch.rand(6, generator=generator) + .5)
        module.conv = CompressedConv2d.from_conv(module.conv, 'hosvd',
                                                 eps=1.0, name='conv')
        return module.eval()

    x = torch.randn(3, 4, 9, 9, dtype=torch.float64)
    grads = []
    for efficient in (False, True):
        module = block(efficient)
        if efficient:
            assert list(conv_norm_pairs(module)) == []
        (module(x) ** 2).sum().backward()
        grads.append([p.grad.clone() for p in module.parameters()])
    for got, want in zip(grads[1], grads[0]):
        torch.testing.assert_close(got, want, rtol=1e-10, atol=1e-12)


@pytest.mark.parametrize('size', [12, 2])  # folded weight, normalised output
def test_fold_cannot_fall_out_of_step(size):
    """The fold is configuration, not a per-call flag: a conv call whose
    BatchNorm call never comes (an exception, a recomputation) changes
    nothing, and the BatchNorm applied elsewhere is the identity only
    because its conv applies it, every time."""
    torch.manual_seed(0)
    conv = nn.Conv2d(3, 4, 3, padding=1).double()
    norm = _norm(4, True)
    folding = NormFoldingConv2d.from_conv(copy.deepcopy(conv))
    lean_norm = LeanBatchNorm2d.from_norm(copy.deepcopy(norm))
    folding.fold_norm(lean_norm)
    x = torch.randn(2, 3, size, size, dtype=torch.float64)
    with torch.no_grad():
        expected = norm(conv(x))
    folding(x.requires_grad_())  # its BatchNorm call never comes (error)
    with torch.no_grad():  # e.g. validation next: no folded weight
        torch.testing.assert_close(lean_norm(folding(x)), expected)
    torch.testing.assert_close(lean_norm(folding(x)), expected)
    folding.fold_norm(None)  # unfolded: the BatchNorm applies itself again
    assert not lean_norm.folded
    torch.testing.assert_close(lean_norm(folding(x)), expected)
