"""Importing the package or its ops layer has no side effect: neither
mmengine, mmcv nor mmseg is imported and ``mmcv.ops`` is left alone; the
configs' ``custom_imports`` target (``mmseg_hosvd.engine``) prepares mmseg
and registers the hooks."""
import subprocess
import sys
import textwrap

import pytest

FORBIDDEN = ('mmseg', 'mmcv', 'mmengine')


def run_python(code: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, '-c', textwrap.dedent(code)],
                          capture_output=True, text=True, timeout=300)


#: imported in this order in one interpreter, each checked right after its
#: import: a forbidden module found after an import came from that import
#: (the package root is imported with the first, as the parent package)
CLEAN_MODULES = ('mmseg_hosvd.decomposition', 'mmseg_hosvd.ops', 'mmseg_hosvd')


def test_import_loads_no_openmmlab_package():
    result = run_python(f'''
        import importlib
        import sys
        for module in {CLEAN_MODULES!r}:
            importlib.import_module(module)
            loaded = sorted(m for m in sys.modules
                            if m.split('.')[0] in {FORBIDDEN!r})
            assert not loaded, (module, loaded[:10])
            print('clean:', module)
        import mmseg_hosvd
        assert mmseg_hosvd.__version__
    ''')
    assert result.returncode == 0, result.stderr
    for module in CLEAN_MODULES:
        assert f'clean: {module}' in result.stdout


def test_custom_imports_target_registers_the_hooks():
    result = run_python('''
        import sys
        import mmseg_hosvd.engine
        from mmengine.registry import HOOKS
        for name in ('ActivationCompressionHook', 'ActivationMemoryHook',
                     'WeightsOnlyCheckpointHook', 'NonFiniteStepGuardHook'):
            assert HOOKS.get(name) is not None, name
        import mmseg.models  # importable: mmcv.ops is ready
        import mmseg_hosvd
        assert mmseg_hosvd.ActivationCompressionHook is HOOKS.get(
            'ActivationCompressionHook')
        print('registered')
    ''')
    assert result.returncode == 0, result.stderr
    assert 'registered' in result.stdout


@pytest.mark.parametrize('module', ['surgery', 'compression'])
def test_modules_above_ops_prepare_mmseg_themselves(module):
    """``mmseg_hosvd.surgery`` (as tests import it) or the compression API
    imported first works without ``mmseg_hosvd.engine`` (with mmcv-lite
    too): they call ``compat.prepare_mmseg()``."""
    result = run_python(f'''
        import mmseg_hosvd.{module}
        import mmseg_hosvd.lean_loss
        import mmseg.models
        from mmseg_hosvd.compat import prepare_mmseg
        prepare_mmseg()  # idempotent
        print('ok')
    ''')
    assert result.returncode == 0, result.stderr
    assert 'ok' in result.stdout
