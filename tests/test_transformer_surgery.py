"""Surgery on transformer segmentors (SegFormer MiT, Swin): layer paths,
the attention out-projection, forward order, install/remove, bad configs."""
import copy

import pytest
import torch
import torch.nn as nn
from mmcv.cnn.bricks.transformer import FFN
from mmcv.cnn.bricks.transformer import \
    MultiheadAttention as MMCVMultiheadAttention

import transformer_models as tm
from mmseg_hosvd.compression import CompressionConfig, apply_compression
from mmseg_hosvd.engine import ActivationCompressionHook
from mmseg_hosvd.ops import CompressedConv2d, CompressedLinear
from mmseg_hosvd.ops.attention import CompressedMultiheadAttention
from mmseg_hosvd.layer_paths import (expand_layer_paths, layer_execution_order,
                                     resolve_layers)
from mmseg_hosvd.surgery import (compressed_layers, compression_context,
                                 install_compression, remove_compression)

MIT = 'backbone.layers.3.1.0'  # last MiT TransformerEncoderLayer
SWIN = 'backbone.stages.3.blocks.0'  # last SwinBlock


@pytest.fixture(scope='module')
def segformer():
    return tm.build('segformer')


@pytest.fixture(scope='module')
def swin():
    return tm.build('swin')


def test_segformer_paths(segformer):
    mixffn = tuple(f'{MIT}.ffn.layers.{i}' for i in (0, 1, 4))
    out_proj = f'{MIT}.attn.attn.out_proj'
    cases = {
        f'{MIT}.ffn': mixffn,  # MixFFN: its convs
        f'{MIT}.attn': (out_proj, ),  # EfficientMultiheadAttention
        f'{MIT}.attn.attn': (out_proj, ),  # nn.MultiheadAttention
        out_proj: (out_proj, ),
        MIT: (out_proj, ) + mixffn,  # TransformerEncoderLayer
        'decode_head.fusion_conv': ('decode_head.fusion_conv.conv', ),
        'backbone.layers.0.1.0.attn': (
            'backbone.layers.0.1.0.attn.attn.out_proj', ),  # not its sr conv
    }
    for path, expected in cases.items():
        assert expand_layer_paths(segformer, path) == expected, path
    assert isinstance(segformer.get_submodule(f'{MIT}.attn'),
                      MMCVMultiheadAttention)


def test_swin_paths(swin):
    w_msa = (f'{SWIN}.attn.w_msa.qkv', f'{SWIN}.attn.w_msa.proj')
    ffn = (f'{SWIN}.ffn.layers.0.0', f'{SWIN}.ffn.layers.1')
    cases = {
        f'{SWIN}.attn.w_msa': w_msa,  # WindowMSA
        f'{SWIN}.attn': w_msa,  # ShiftWindowMSA
        f'{SWIN}.ffn': ffn,  # mmcv FFN
        SWIN: w_msa + ffn,  # SwinBlock
        f'{SWIN}.ffn.layers.1': (f'{SWIN}.ffn.layers.1', ),  # nn.Linear
    }
    for path, expected in cases.items():
        assert expand_layer_paths(swin, path) == expected, path
    assert isinstance(swin.get_submodule(f'{SWIN}.ffn'), FFN)


def test_bad_paths_name_path_type_and_accepted(swin):
    with pytest.raises(ValueError, match=r"layers: 'backbone.stages.3.norm' "
                       r'is a Sequential|is a LayerNorm') as error:
        expand_layer_paths(swin, 'backbone.norm3')
    assert 'nn.Linear' in str(error.value) and 'SwinBlock' in str(
        error.value)
    with pytest.raises(ValueError, match="'backbone.nope' does not exist"):
        expand_layer_paths(swin, 'backbone.nope')
    with pytest.raises(ValueError, match=r"linear '.*w_msa.qkv'.*already "
                       'listed'):
        resolve_layers(swin, [SWIN, f'{SWIN}.attn.w_msa.qkv'], 0.8, 2)
    with pytest.raises(ValueError, match='unknown method'):
        resolve_layers(swin, [dict(path=SWIN, method='tucker')], 0.8, 2)


def _mha_pair(**kwargs):
    torch.manual_seed(0)
    plain = nn.MultiheadAttention(8, 2, **kwargs).double()
    compressed = copy.deepcopy(plain)
    compressed.__class__ = CompressedMultiheadAttention
    compressed.out_proj = CompressedLinear.from_linear(
        compressed.out_proj, 'vanilla', name='out_proj')
    return plain, compressed


@pytest.mark.parametrize('kwargs, call', [
    (dict(), dict()),
    (dict(batch_first=True), dict(need_weights=False)),
    (dict(batch_first=True), dict(average_attn_weights=False)),
    (dict(), dict(attn_mask='bool', key_padding_mask='bool')),
    (dict(batch_first=True), dict(attn_mask='float', need_weights=False)),
    (dict(add_bias_kv=True, add_zero_attn=True, bias=False),
     dict(key_padding_mask='bool')),
    (dict(kdim=4, vdim=6), dict()),
])
def test_compressed_mha_equals_plain(kwargs, call):
    plain, compressed = _mha_pair(**kwargs)
    batch_first = kwargs.get('batch_first', False)
    generator = torch.Generator().manual_seed(1)

    def tensor(length, dim):
        shape = (3, length, dim) if batch_first else (length, 3, dim)
        return torch.randn(shape, dtype=torch.double, generator=generator)

    inputs = (tensor(5, 8), tensor(6, kwargs.get('kdim', 8)),
              tensor(6, kwargs.get('vdim', 8)))
    call = dict(call)
    if call.get('attn_mask') == 'bool':
        call['attn_mask'] = torch.zeros(5, 6, dtype=torch.bool)
        call['attn_mask'][:, 0] = True
    elif call.get('attn_mask') == 'float':
        call['attn_mask'] = torch.randn(5, 6, dtype=torch.double,
                                        generator=generator)
    if call.get('key_padding_mask') == 'bool':
        call['key_padding_mask'] = torch.zeros(3, 6, dtype=torch.bool)
        call['key_padding_mask'][1, 2] = True
    results = []
    for module in (plain, compressed):
        leaves = [x.clone().requires_grad_() for x in inputs]
        output, weights = module(*leaves, **call)
        loss = output.square().sum()
        if weights is not None:
            loss = loss + weights.square().sum()
        params = list(module.parameters())
        grads = torch.autograd.grad(loss, leaves + params)
        results.append((output, weights, grads))
    (out1, w1, g1), (out2, w2, g2) = results
    torch.testing.assert_close(out2, out1, rtol=1e-12, atol=1e-12)
    assert (w1 is None) == (w2 is None)
    if w1 is not None:
        torch.testing.assert_close(w2, w1, rtol=1e-12, atol=1e-12)
    for a, b in zip(g1, g2):
        torch.testing.assert_close(b, a, rtol=1e-12, atol=1e-12)
    assert compressed.out_proj.last_stats is not None  # called as a module


def test_compressed_mha_keeps_what_plain_keeps():
    """Saved storages: the plain module's, the out-projection's input
    (vanilla) included, nothing more."""
    plain, compressed = _mha_pair()
    x = torch.randn(5, 3, 8, dtype=torch.double, requires_grad=True)
    sizes = []
    for module in (plain, compressed):
        saved = {}

        def pack(t, saved=saved):
            saved[t.untyped_storage().data_ptr()] = \
                t.untyped_storage().nbytes()
            return t

        with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
            module(x, x, x, need_weights=False)[0].sum()
        sizes.append(sum(saved.values()))
    assert sizes[1] <= sizes[0]


def test_num_layers_order_includes_out_projections(segformer, swin):
    def trace(model):
        model.eval()
        try:
            with torch.no_grad():
                return layer_execution_order(model, lambda: model(
                    torch.zeros(1, 3, 64, 64), mode='tensor'))
        finally:
            model.train()

    order = trace(segformer)
    assert order[-12:-4] == [
        'backbone.layers.2.1.0.ffn.layers.4', 'backbone.layers.3.0.projection',
        f'{MIT}.attn.attn.out_proj', f'{MIT}.ffn.layers.0',
        f'{MIT}.ffn.layers.1', f'{MIT}.ffn.layers.4',
        'decode_head.convs.0.conv', 'decode_head.convs.1.conv'
    ]
    # the sr conv runs before the attention's out-projection
    assert order.index('backbone.layers.0.1.0.attn.sr') < order.index(
        'backbone.layers.0.1.0.attn.attn.out_proj')
    order = trace(swin)
    index = order.index(f'{SWIN}.attn.w_msa.qkv')
    assert order[index:index + 4] == [
        f'{SWIN}.attn.w_msa.qkv', f'{SWIN}.attn.w_msa.proj',
        f'{SWIN}.ffn.layers.0.0', f'{SWIN}.ffn.layers.1'
    ]


@pytest.mark.parametrize('family, num_layers', [('segformer', 9),
                                                ('swin', 14)])
def test_install_remove_round_trip(family, num_layers):
    model = tm.build(family)
    keys = list(model.state_dict())
    params = dict(model.named_parameters())
    installed = apply_compression(model, CompressionConfig(
        method='hosvd', num_layers=num_layers)).layers
    assert len(installed) == num_layers
    assert {type(m) for m in installed.values()} == {CompressedConv2d,
                                                     CompressedLinear}
    assert list(model.state_dict()) == keys
    assert all(p is params[n] for n, p in model.named_parameters())
    contexts = {id(m.context) for m in installed.values()}
    assert contexts == {id(compression_context(model))}
    if family == 'segformer':
        assert type(model.get_submodule(f'{MIT}.attn.attn')) is \
            CompressedMultiheadAttention
    # the compressed model's checkpoint loads into plain mmseg, strictly
    plain = tm.build(family, seed=1)
    plain.load_state_dict(model.state_dict(), strict=True)
    assert remove_compression(model) == num_layers
    assert not compressed_layers(model)
    assert not any(isinstance(m, CompressedMultiheadAttention)
                   for m in model.modules())
    if family == 'segformer':
        out_proj = model.get_submodule(f'{MIT}.attn.attn.out_proj')
        assert type(out_proj) is \
            nn.modules.linear.NonDynamicallyQuantizableLinear
    assert list(model.state_dict()) == keys
    assert all(p is params[n] for n, p in model.named_parameters())


def test_bad_configs_for_linears(segformer):
    model = copy.deepcopy(segformer)
    with pytest.raises(ValueError, match=r"layers\[0\]: path "
                       f"'{MIT}.attn.nope' does not exist"):
        apply_compression(model,
                          CompressionConfig(layers=[f'{MIT}.attn.nope']))
    with pytest.raises(ValueError, match=f"'{MIT}.norm1' is a LayerNorm, not"
                       ' an nn.Conv2d, nn.Linear'):
        apply_compression(model, CompressionConfig(layers=[f'{MIT}.norm1']))
    with pytest.raises(ValueError, match=f"linear '{MIT}.attn.attn.out_proj'"
                       r'.*already listed'):
        apply_compression(model, CompressionConfig(layers=[
            f'{MIT}.attn', f'{MIT}.attn.attn.out_proj']))
    with pytest.raises(ValueError, match=r"'backbone.layers.3.1.0.attn.attn."
                       r"out_proj' \(from 'backbone.layers.3.1.0'\) is an "
                       r"nn.Linear.*method='gradient_filter'.*dict\(path="):
        apply_compression(model, CompressionConfig(
            method='gradient_filter', layers=[MIT]))
    with pytest.raises(ValueError, match='is an nn.Linear'):
        apply_compression(model, CompressionConfig(
            method='gradient_filter', num_layers=9))
    with pytest.raises(ValueError, match=r"layers\[0\]: unknown method"):
        ActivationCompressionHook(layers=[dict(path=MIT, method='tucker')])
    # nothing was installed by the failed calls
    assert not compressed_layers(model)


def test_per_entry_method_override(swin):
    model = copy.deepcopy(swin)
    installed = install_compression(
        model,
        resolve_layers(model, [
            dict(path=SWIN, method='vanilla'), 'decode_head.fpn_bottleneck'
        ], 0.8, 2), 'gradient_filter')
    assert {p: m.method for p, m in installed.items()} == {
        f'{SWIN}.attn.w_msa.qkv': 'vanilla',
        f'{SWIN}.attn.w_msa.proj': 'vanilla',
        f'{SWIN}.ffn.layers.0.0': 'vanilla',
        f'{SWIN}.ffn.layers.1': 'vanilla',
        'decode_head.fpn_bottleneck.conv': 'gradient_filter',
    }
