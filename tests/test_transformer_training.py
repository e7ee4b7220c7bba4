"""Training SegFormer (MiT) and Swin with the compression API, every
method, through mmengine's OptimWrapper; lean_backward on transformers is
exact."""
import pytest
import torch
import torch.nn as nn
from mmengine.optim import OptimWrapper

import transformer_models as tm
from mmseg_hosvd.compression import CompressionConfig, apply_compression
from mmseg_hosvd.ops import CompressedLinear
from mmseg_hosvd.ops.dropout import MaskedDropout
from mmseg_hosvd.profiling import SavedTensorMeter

MIT = 'backbone.layers.3.1.0'
SWIN = 'backbone.stages.3.blocks.0'
#: num_layers reaching the last block's linears (and MiT's out_proj)
NUM_LAYERS = dict(segformer=9, swin=14)
#: Gradient Filter on convs, the linears listed as vanilla
GF_LAYERS = dict(
    segformer=[f'{MIT}.ffn', dict(path=f'{MIT}.attn', method='vanilla'),
               'decode_head.fusion_conv'],
    swin=[dict(path=SWIN, method='vanilla'), 'decode_head.fpn_bottleneck'])
METHODS = ('vanilla', 'gradient_filter', 'svd', 'hosvd', 'asi')


def _config(family: str, method: str, **kwargs) -> CompressionConfig:
    if method != 'gradient_filter':
        return CompressionConfig(method=method,
                                 num_layers=NUM_LAYERS[family], **kwargs)
    layers = GF_LAYERS[family]
    paths = [e if isinstance(e, str) else e['path'] for e in layers]
    freeze = ['backbone', 'decode_head', '~decode_head.conv_seg'] + [
        f'~{p}' for p in paths
    ]
    return CompressionConfig(method=method, layers=layers, freeze=freeze,
                             **kwargs)


@pytest.mark.parametrize('family', ['segformer', 'swin'])
@pytest.mark.parametrize('method', METHODS)
def test_train_steps(family, method):
    model = tm.build(family)
    applied = apply_compression(model, _config(family, method, eps=0.9))
    installed = applied.layers
    linears = [p for p, m in installed.items()
               if isinstance(m, CompressedLinear)]
    assert linears, 'no linear layer compressed'
    frozen = {n: p.detach().clone() for n, p in model.named_parameters()
              if not p.requires_grad}
    weights = {p: m.weight.detach().clone() for p, m in installed.items()}
    optim = OptimWrapper(torch.optim.SGD(
        [p for p in model.parameters() if p.requires_grad], lr=0.1))
    for step in range(2):
        model.train()
        applied.set_norm_eval()
        log = model.train_step(tm.batch(seed=step), optim)
        assert torch.isfinite(log['loss'])
    for name, param in model.named_parameters():
        if name in frozen:
            assert torch.equal(param, frozen[name]), name
    for path, module in installed.items():
        assert not torch.equal(module.weight, weights[path]), path
        expected = 'vanilla' if method == 'gradient_filter' and isinstance(
            module, CompressedLinear) else method
        assert module.method == expected
        assert module.last_stats is not None, path


def _gradients(family: str, method: str, lean: str):
    model = tm.build(family, drop=0.2).double()
    applied = apply_compression(model, CompressionConfig(
        method=method, eps=0.9, num_layers=NUM_LAYERS[family],
        lean_backward=lean))
    model.train()
    applied.set_norm_eval()
    data = model.data_preprocessor(tm.batch(), True)
    data['inputs'] = data['inputs'].double()
    state = list(model.parameters()) + list(model.buffers())
    torch.manual_seed(5)
    with SavedTensorMeter(state) as meter:
        losses = model(**data, mode='loss')
    saved = meter.activation_bytes()
    loss = sum(v for k, v in losses.items() if 'loss' in k)
    loss.backward()
    grads = {n: p.grad.clone() for n, p in model.named_parameters()
             if p.requires_grad}
    return grads, saved, applied, model


@pytest.mark.parametrize('family', ['segformer', 'swin'])
@pytest.mark.parametrize('method', ['vanilla', 'hosvd'])
def test_lean_backward_exact_on_transformers(family, method):
    off, saved_off, _, _ = _gradients(family, method, 'off')
    exact, saved_exact, applied, model = _gradients(family, method, 'exact')
    assert applied.lean.masked_dropouts
    assert any(isinstance(m, MaskedDropout) for m in model.modules())
    assert off.keys() == exact.keys()
    for name in off:
        torch.testing.assert_close(exact[name], off[name], rtol=1e-9,
                                   atol=1e-12, msg=name)
    assert saved_exact < saved_off


def test_dropout_masks_bits_and_p0_saves_nothing():
    x = torch.randn(4, 64, requires_grad=True)
    for p, module in ((0.0, nn.Dropout(0.0)), (0.5, MaskedDropout(0.5))):
        saved = []
        with torch.autograd.graph.saved_tensors_hooks(
                lambda t: saved.append(t.untyped_storage().nbytes()) or t,
                lambda t: t):
            module.train()(x)
        assert sum(saved) == (0 if p == 0 else x.numel() // 8)


def test_breakdown_names_transformer_ops():
    """The benchmark's groups name what a Swin step keeps: attention
    probabilities, LayerNorm and GELU inputs, compressed linear factors,
    plain linear inputs."""
    from mmseg_hosvd.bench.report import group_shares, op_group
    from mmseg_hosvd.profiling import saved_breakdown
    model = tm.build('swin', drop=0.2)
    applied = apply_compression(
        model, CompressionConfig(method='hosvd', num_layers=14))
    model.train()
    applied.set_norm_eval()
    data = model.data_preprocessor(tm.batch(), True)
    losses = model(**data, mode='loss')
    loss = sum(v for k, v in losses.items() if 'loss' in k)
    state = list(model.parameters()) + list(model.buffers())
    by_saved = {k: v['bytes'] for k, v in saved_breakdown(
        loss, state).to_dict()['by_saved'].items()}
    groups = group_shares(by_saved)
    for group in ('attention', 'layer_norm', 'gelu', 'compressed_linear',
                  'dropout_mask'):
        assert groups[group] > 0, (group, groups)
    x = torch.randn(3, 4, requires_grad=True)
    plain = nn.Linear(4, 2)(x).grad_fn
    assert op_group(f'{plain.name()}._saved_mat1') == 'linear'


def test_shifted_windows_train():
    """Swin with two blocks per stage: the last block shifts its windows
    (attention mask); its linears train compressed."""
    model = tm.build('swin', depths=(2, 2, 2, 2))
    applied = apply_compression(
        model, CompressionConfig(method='hosvd', num_layers=14))
    installed = applied.layers
    assert 'backbone.stages.3.blocks.1.attn.w_msa.qkv' in installed
    assert model.get_submodule('backbone.stages.3.blocks.1.attn').shift_size
    weight = installed['backbone.stages.3.blocks.1.attn.w_msa.qkv'].weight
    before = weight.detach().clone()
    optim = OptimWrapper(torch.optim.SGD(
        [p for p in model.parameters() if p.requires_grad], lr=0.1))
    model.train()
    applied.set_norm_eval()
    assert torch.isfinite(model.train_step(tm.batch(), optim)['loss'])
    assert not torch.equal(weight, before)
