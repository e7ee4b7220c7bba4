"""The weights-only encoding of mmengine checkpoint metadata."""
import pickle

import numpy as np
import pytest
import torch
from mmengine.logging import HistoryBuffer

from mmseg_hosvd.engine.weights_only import (from_weights_only,
                                             to_weights_only)


def _hub_state():
    buffer = HistoryBuffer([1.5, 2.5, 3.0], [1, 1, 2], max_length=7)
    return dict(
        log_scalars={'train/loss': buffer},
        runtime_info={'iter': 3, 'mean': np.float32(0.25),
                      'palette': np.arange(6).reshape(2, 3)},
        resumed_keys={'train/loss': True})


def test_plain_mmengine_metadata_is_refused_by_weights_only(tmp_path):
    torch.save({'message_hub': _hub_state()}, tmp_path / 'plain.pth')
    with pytest.raises(pickle.UnpicklingError):
        torch.load(tmp_path / 'plain.pth', weights_only=True)


def test_round_trip_through_weights_only_load(tmp_path):
    torch.save({'message_hub': to_weights_only(_hub_state())},
               tmp_path / 'safe.pth')
    loaded = torch.load(tmp_path / 'safe.pth', weights_only=True)
    state = from_weights_only(loaded['message_hub'])
    buffer = state['log_scalars']['train/loss']
    assert isinstance(buffer, HistoryBuffer)
    assert buffer.max_length == 7
    np.testing.assert_array_equal(buffer.data[0], [1.5, 2.5, 3.0])
    np.testing.assert_array_equal(buffer.data[1], [1, 1, 2])
    assert buffer.mean() == _hub_state()["log_scalars"]["train/loss"].mean()
    info = state['runtime_info']
    assert info['iter'] == 3 and info['mean'] == pytest.approx(0.25)
    np.testing.assert_array_equal(info['palette'],
                                  np.arange(6).reshape(2, 3))
    assert state['resumed_keys'] == {'train/loss': True}
