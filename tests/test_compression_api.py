"""The compression API: CompressionConfig, apply_compression, and
AppliedCompression.remove() reverting every swap."""
import dataclasses

import pytest
import torch
from mmseg.models.segmentors import EncoderDecoder

import transformer_models as tm
from mmseg_hosvd.compression import CompressionConfig, apply_compression
from mmseg_hosvd.engine import ActivationCompressionHook
from mmseg_hosvd.lean_loss import LeanLossEncoderDecoder
from mmseg_hosvd.ops import CompressedConv2d, CompressedLinear
from mmseg_hosvd.ops.attention import CompressedMultiheadAttention

MIT = 'backbone.layers.3.1.0'  # last MiT TransformerEncoderLayer


def test_from_dict_is_what_the_hook_builds():
    values = dict(method='asi', eps=0.9, layers=['a', dict(path='b')],
                  budget_mib=1.5, seed=3, non_finite='raise')
    config = CompressionConfig.from_dict(values)
    assert ActivationCompressionHook(**values).config == config
    assert config.layers == ('a', dict(path='b')) and config.freeze == ()
    # one default for the hook and the API
    assert config.lean_backward == 'exact' and config.non_finite == 'raise'
    assert CompressionConfig(layers=['a']).lean_backward == 'exact'
    with pytest.raises(dataclasses.FrozenInstanceError):
        config.method = 'svd'


@pytest.mark.parametrize('values, message', [
    (dict(layers=['a'], Method='svd'), r"unknown compression key\(s\)"),
    (dict(layers=['a'], budget_mib=2.0), "budget_mib is for method='asi'"),
    (dict(layers=['a'], lean_backward='some'),
     "lean_backward: unknown mode 'some'"),
    (dict(layers=[dict(path='a', method='tucker')]),
     r"layers\[0\]: unknown method 'tucker'"),
    (dict(num_layers=True), 'num_layers: expected an int >= 1, got True'),
    (dict(), 'layers / num_layers'),
    (dict(num_layers=3, trace_size=(0, 0)),
     r'trace_size: expected \(H, W\), two ints >= 1, got \(0, 0\)'),
    (dict(num_layers=3, trace_size=64), 'trace_size: expected'),
])
def test_bad_values_name_the_key(values, message):
    with pytest.raises(ValueError, match=message):
        CompressionConfig.from_dict(values)


def test_apply_then_remove_reverts_every_swap():
    model = tm.build('segformer')
    assert type(model) is EncoderDecoder
    types = {name: type(m) for name, m in model.named_modules()}
    params = dict(model.named_parameters())
    requires_grad = {n: p.requires_grad for n, p in params.items()}
    keys = list(model.state_dict())
    config = CompressionConfig(method='hosvd', num_layers=9, lean_loss=True,
                               trace_size=tm.CROP)
    applied = apply_compression(model, config)

    assert len(applied.layers) == 9
    assert {type(m) for m in applied.layers.values()} == {CompressedConv2d,
                                                          CompressedLinear}
    assert type(model) is LeanLossEncoderDecoder
    assert type(model.get_submodule(f'{MIT}.attn.attn')) is \
        CompressedMultiheadAttention
    assert applied.lean.lean_norms and applied.lean.masked_activations
    assert any(not p.requires_grad for p in model.parameters())
    assert list(model.state_dict()) == keys
    model.train()
    applied.set_norm_eval()
    assert applied.norms and not any(m.training for m in applied.norms)

    applied.remove()
    assert {name: type(m) for name, m in model.named_modules()} == types
    assert dict(model.named_parameters()).keys() == params.keys()
    assert all(p is params[n] for n, p in model.named_parameters())
    assert {n: p.requires_grad
            for n, p in model.named_parameters()} == requires_grad
    assert applied.layers == {}
    # the reverted model runs as a plain mmseg model
    batch = model.data_preprocessor(tm.batch(), True)
    losses = model(**batch, mode='loss')
    assert torch.isfinite(sum(v for k, v in losses.items() if 'loss' in k))


def test_apply_keeps_a_config_built_lean_loss_segmentor():
    model = tm.build('segformer')
    model.__class__ = LeanLossEncoderDecoder  # as if built from a config
    model.lean_loss_chunk = 1
    applied = apply_compression(
        model, CompressionConfig(layers=[f'{MIT}.ffn'], lean_loss=True))
    applied.remove()
    assert type(model) is LeanLossEncoderDecoder
