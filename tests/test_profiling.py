"""The saved-tensor meter and the graph-walk breakdown on tiny graphs whose
saved bytes are known by hand."""
import gc

import pytest
import torch
import torch.nn as nn
import torch.nn.functional as F
from torch.autograd import Function

from mmseg_hosvd.profiling import (ACTIVATION, PARAMETER, SavedTensorMeter,
                                   graph_nodes, node_saved_tensors,
                                   saved_breakdown, storage_key)

F32 = 4


def conv_relu():
    torch.manual_seed(0)
    conv = nn.Conv2d(3, 4, 3, padding=1)
    x = torch.randn(2, 3, 8, 8)  # the input: no grad, not a parameter
    return conv, x


def test_conv_relu_bytes_by_hand():
    conv, x = conv_relu()
    meter = SavedTensorMeter(conv.parameters())
    with meter:
        loss = F.relu(conv(x)).sum()
    # conv saves its input (2*3*8*8) and weight (4*3*3*3, a parameter; the
    # bias is not saved); relu saves its output (2*4*8*8); sum saves sizes
    input_bytes, output_bytes = 2 * 3 * 8 * 8 * F32, 2 * 4 * 8 * 8 * F32
    weight_bytes = 4 * 3 * 3 * 3 * F32
    assert meter.activation_bytes() == input_bytes + output_bytes == 3584
    assert meter.parameter_bytes() == weight_bytes == 432
    assert meter.summary() == dict(activation_bytes=3584,
                                   parameter_bytes=432,
                                   storages=3,
                                   packed=3)

    breakdown = saved_breakdown(loss, conv.parameters())
    assert breakdown.activation_bytes == 3584
    assert breakdown.parameter_bytes == 432
    assert {k: (v.bytes, v.storages)
            for k, v in breakdown.by_op.items()} == {
                'ConvolutionBackward0': (input_bytes, 1),
                'ReluBackward0': (output_bytes, 1)
            }
    assert {k: v.bytes
            for k, v in breakdown.parameters_by_op.items()} == {
                'ConvolutionBackward0': weight_bytes
            }
    assert {k: v.bytes for k, v in breakdown.by_saved.items()} == {
        'ConvolutionBackward0._saved_input': input_bytes,
        'ReluBackward0._saved_result': output_bytes
    }
    loss.backward()


def test_parameters_recognised_without_a_registry():
    conv, x = conv_relu()
    with SavedTensorMeter() as meter:  # nn.Parameter objects are enough
        loss = conv(x).sum()
    assert meter.parameter_bytes() == 4 * 3 * 3 * 3 * F32
    assert meter.activation_bytes() == 2 * 3 * 8 * 8 * F32
    loss.backward()


def test_buffers_count_as_parameters_when_registered():
    torch.manual_seed(0)
    bn = nn.BatchNorm2d(4).eval()
    x = torch.randn(2, 4, 5, 5, requires_grad=True)
    h = x + 1  # adding a Python scalar saves nothing
    state = list(bn.parameters()) + list(bn.buffers())
    with SavedTensorMeter(state) as meter:
        loss = bn(h).sum()
    # eval BN saves its input, weight, running mean/var (+ empty tensors)
    assert meter.activation_bytes() == 2 * 4 * 5 * 5 * F32
    assert meter.parameter_bytes() == 3 * 4 * F32
    breakdown = saved_breakdown(loss, state)
    (name, share), = breakdown.by_op.items()
    assert name.endswith('BatchNormBackward0')  # Native/Cudnn
    assert share.bytes == 2 * 4 * 5 * 5 * F32
    assert breakdown.parameter_bytes == 3 * 4 * F32
    loss.backward()


def test_a_tensor_saved_twice_counts_once_for_its_first_saver():
    a = torch.randn(3, 5, requires_grad=True)
    with SavedTensorMeter() as meter:
        x = a + 1  # saves nothing
        y = x * x  # saves x twice (self and other)
        z = x.sin()  # saves x again
        loss = (y + z).sum()
    assert meter.packed == 3
    assert meter.activation_bytes() == 3 * 5 * F32
    (stored, ) = meter.storages()
    assert stored.saves == 3 and stored.kind == ACTIVATION
    breakdown = saved_breakdown(loss)
    assert breakdown.activation_bytes == 3 * 5 * F32
    # first saver in forward order: the product, created before sin
    assert {k: v.bytes for k, v in breakdown.by_op.items()} == {
        'MulBackward0': 3 * 5 * F32
    }
    # inclusive view: both ops hold it
    assert {k: v.bytes for k, v in breakdown.by_op_inclusive.items()} == {
        'MulBackward0': 3 * 5 * F32,
        'SinBackward0': 3 * 5 * F32
    }
    loss.backward()


def test_views_of_one_storage_count_once_with_the_whole_storage():
    a = torch.randn(4, 6, requires_grad=True)
    with SavedTensorMeter() as meter:
        x = a + 1
        loss = (x[:, :2].sin().sum() + x[:, 2:].cos().sum() +
                x.t().sin().sum())
    assert meter.packed >= 3
    assert meter.activation_bytes() == 4 * 6 * F32
    breakdown = saved_breakdown(loss)
    assert breakdown.activation_bytes == 4 * 6 * F32
    assert sum(v.storages for v in breakdown.by_op.values()) == 1
    loss.backward()


def test_the_meter_holds_nothing_alive():
    conv, x = conv_relu()
    meter = SavedTensorMeter(conv.parameters())
    with meter:
        loss = F.relu(conv(x)).sum()
    # the meter only holds weak references to what autograd holds: when
    # backward frees the saved tensors, nothing of them is left alive
    held = [ref for s in meter.storages() for ref in s._refs]
    assert len(held) == 3 and all(ref() is not None for ref in held)
    assert meter.activation_bytes() == 3584
    loss.backward()
    gc.collect()
    assert all(ref() is None for ref in held)
    assert meter.activation_bytes() == 0
    assert meter.parameter_bytes() == 0
    # what was saved is still reported when asked for
    assert meter.summary(live_only=False)['activation_bytes'] == 3584


def test_meter_is_a_context_manager_and_stops_recording():
    with SavedTensorMeter() as meter:
        a = torch.randn(5, requires_grad=True)
        b = (a + 1).sin()
    with pytest.raises(RuntimeError, match='already active'):
        with meter:
            with meter:
                pass
    c = (a + 1).cos()  # outside the context: not recorded
    assert meter.activation_bytes() == 5 * F32
    meter.reset()
    assert meter.storages(live_only=False) == []
    (b.sum() + c.sum()).backward()


class Scale(Function):
    """Saves a factor with save_for_backward and a tensor as ctx attribute."""

    @staticmethod
    def forward(ctx, x, factor):
        ctx.save_for_backward(factor)
        ctx.extra = factor.new_zeros(7)
        return x * factor

    @staticmethod
    def backward(ctx, grad):
        (factor, ) = ctx.saved_tensors
        return grad * factor, None


def test_custom_function_and_graph_order():
    conv, x = conv_relu()
    factor = torch.full((1, 4, 1, 1), 2.0)
    state = list(conv.parameters())
    with SavedTensorMeter(state) as meter:
        h = torch.relu(conv(x))
        loss = Scale.apply(h, factor).sum()
    nodes = [n.name() for n in graph_nodes(loss)]
    # forward execution order; AccumulateGrad (no sequence number) last
    assert nodes[:4] == ['ConvolutionBackward0', 'ReluBackward0',
                         'ScaleBackward', 'SumBackward0']
    saved = dict(node_saved_tensors(graph_nodes(loss)[2]))
    assert set(saved) == {'saved_tensors[0]', 'ctx.extra'}
    breakdown = saved_breakdown(loss, state)
    assert breakdown.by_op['ScaleBackward'].bytes == 4 * F32 + 7 * F32
    assert breakdown.by_saved['ScaleBackward.saved_tensors[0]'].bytes == 16
    assert breakdown.by_saved['ScaleBackward.ctx.extra'].bytes == 28
    # the meter sees save_for_backward, not ctx attributes
    assert meter.activation_bytes() == (
        breakdown.activation_bytes - 7 * F32)
    as_dict = breakdown.to_dict(unit=2**10)
    assert list(as_dict['by_op'])[0] == 'ReluBackward0'  # largest first
    assert as_dict['parameter_bytes'] == 432 / 1024
    loss.backward()


def test_walking_after_backward_says_so():
    conv, x = conv_relu()
    loss = F.relu(conv(x)).sum()
    saved_breakdown(loss)  # fine before backward, and works without a meter
    loss.backward()
    with pytest.raises(RuntimeError, match='before backward'):
        saved_breakdown(loss)


def test_storage_key_distinguishes_storages_not_views():
    x = torch.randn(4, 4)
    assert storage_key(x[1:]) == storage_key(x) == storage_key(x.t())
    assert storage_key(x.clone()) != storage_key(x)
    assert PARAMETER != ACTIVATION


def test_a_graph_dropped_before_backward_no_longer_counts():
    a = torch.randn(64, requires_grad=True)
    with SavedTensorMeter() as meter:
        dropped = (a + 1).sin()  # saves a+1 (256 bytes)
        del dropped  # graph and saved tensor freed; the address may be reused
        kept = (a + 2).sin()
    assert meter.packed == 2
    assert meter.activation_bytes() == 64 * F32
    assert meter.activation_bytes(live_only=False) in (64 * F32, 128 * F32)
    kept.sum().backward()
