"""The method registry: one table, the old tuples derived from it, one
place where a method name is checked."""
import dataclasses

import pytest
import torch
import torch.nn as nn

from mmseg_hosvd.ops import (ASI, LINEAR_METHODS, LOW_RANK_METHODS,
                             METHOD_SPECS, METHODS, MODULE_METHODS, VANILLA,
                             CompressedConv2d, CompressedLinear, ConvGeometry,
                             Method, MethodSpec, compressed_conv2d,
                             method_spec)


def test_names_are_str_enum_members():
    assert [m.value for m in Method] == [
        'vanilla', 'gradient_filter', 'svd', 'hosvd', 'asi']
    assert Method.HOSVD == 'hosvd' and isinstance(Method.ASI, str)
    assert set(METHOD_SPECS) == set(Method)
    for method, spec in METHOD_SPECS.items():
        assert spec.name is method
        assert method_spec(method.value) is spec
        assert method_spec(method) is spec


def test_specs_are_frozen_and_say_what_each_method_is():
    spec = method_spec('hosvd')
    assert isinstance(spec, MethodSpec)
    with pytest.raises(dataclasses.FrozenInstanceError):
        spec.low_rank = False
    with pytest.raises(TypeError):
        spec.defaults['eps'] = 0.5
    assert spec.decomposition == 'tucker' and spec.low_rank
    assert method_spec('asi').stateful and method_spec('asi').low_rank
    assert method_spec('svd').decomposition == 'svd'
    assert not method_spec('gradient_filter').takes_linear
    assert method_spec('gradient_filter').config_tag == 'gradient-filter'
    assert method_spec('gradient_filter').defaults == {'radius': 2}
    assert not method_spec('vanilla').low_rank


def test_old_tuples_are_views_of_the_table():
    assert MODULE_METHODS == ('vanilla', 'hosvd', 'svd', 'gradient_filter',
                              'asi')
    assert LINEAR_METHODS == ('vanilla', 'hosvd', 'svd', 'asi')
    assert LOW_RANK_METHODS == ('hosvd', 'svd', 'asi')
    assert METHODS == ('hosvd', 'svd', 'gradient_filter')
    assert (VANILLA, ASI) == ('vanilla', 'asi')
    assert LOW_RANK_METHODS == tuple(
        m.value for m, s in METHOD_SPECS.items() if s.low_rank)


def test_unknown_names_raise_naming_the_allowed_values():
    with pytest.raises(ValueError, match=r"one of \('vanilla', 'hosvd'.*"
                       r"got method='tucker'"):
        method_spec('tucker')
    with pytest.raises(ValueError, match='one of'):
        CompressedConv2d(3, 4, 1, method='HOSVD')
    with pytest.raises(ValueError, match='convolutions only'):
        CompressedLinear(3, 4, method='gradient_filter')
    with pytest.raises(ValueError, match=r"one of \('hosvd', 'svd', "
                       r"'gradient_filter'"):
        method_spec('asi', METHODS)


def test_layers_accept_enum_members():
    conv = CompressedConv2d.from_conv(nn.Conv2d(3, 4, 1), Method.SVD)
    assert conv.method == 'svd' and type(conv.method) is str
    linear = CompressedLinear.from_linear(nn.Linear(3, 4), Method.ASI)
    assert linear.method == 'asi'
    with pytest.raises(ValueError, match='per-layer state'):
        compressed_conv2d(*_conv_args(), method='asi')


def _conv_args():
    return (torch.randn(1, 3, 4, 4), torch.randn(4, 3, 1, 1), None,
            ConvGeometry((1, 1), (0, 0), (1, 1), 1))
