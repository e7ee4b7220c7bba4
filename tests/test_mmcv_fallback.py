"""The mmcv.ops fallback: used only when mmcv's compiled ops are missing."""
import subprocess
import sys
import textwrap

WITHOUT_EXT = textwrap.dedent('''
    import torch, mmcv
    import mmseg_hosvd.engine
    import mmseg.models  # needs mmcv.ops
    import mmcv.ops
    from mmseg_hosvd.compat.mmcv_ops import (MMCVOpsUnavailableError,
                                             is_fallback_active)
    assert is_fallback_active()
    # pure-torch op served from mmcv's own file
    feats = torch.arange(16.).reshape(1, 1, 4, 4)
    points = torch.tensor([[[0.5, 0.5]]])
    out = mmcv.ops.point_sample(feats, points, align_corners=False)
    assert out.shape == (1, 1, 1), out.shape
    try:
        mmcv.ops.sigmoid_focal_loss(torch.zeros(1), torch.zeros(1))
    except MMCVOpsUnavailableError as error:
        assert 'mmcv.ops.sigmoid_focal_loss needs mmcv compiled ops' in str(error)
    else:
        raise AssertionError('compiled op placeholder did not raise')
    try:
        mmcv.ops.CrissCrossAttention(8)
    except MMCVOpsUnavailableError as error:
        assert 'CrissCrossAttention' in str(error)
    else:
        raise AssertionError('compiled class placeholder did not raise')
    print('fallback ok')
''')

WITH_FAKE_EXT = textwrap.dedent('''
    import sys, types
    # a stand-in for mmcv's compiled extension: every op name resolves
    ext = types.ModuleType('mmcv._ext')
    def op(name):
        if name.startswith('__'):
            raise AttributeError(name)
        return lambda *args, **kwargs: name
    ext.__getattr__ = op
    sys.modules['mmcv._ext'] = ext
    import mmseg_hosvd.engine
    import mmcv.ops
    from mmseg_hosvd.compat.mmcv_ops import is_fallback_active
    assert not is_fallback_active()
    assert mmcv.ops.__file__.endswith('mmcv/ops/__init__.py'), mmcv.ops.__file__
    assert mmcv.ops.SigmoidFocalLoss.__module__ == 'mmcv.ops.focal_loss'
    assert mmcv.ops.CrissCrossAttention.__module__ == 'mmcv.ops.cc_attention'
    import mmseg.models
    print('real ops kept')
''')


def _run(code: str) -> str:
    result = subprocess.run([sys.executable, '-c', code],
                            capture_output=True, text=True)
    assert result.returncode == 0, result.stderr[-3000:]
    return result.stdout


def test_fallback_without_compiled_ops():
    assert 'fallback ok' in _run(WITHOUT_EXT)


def test_real_compiled_ops_are_never_hidden():
    assert 'real ops kept' in _run(WITH_FAKE_EXT)
