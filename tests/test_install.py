"""What the plugin requires: ranges, no mmcv distribution, a clear mmcv error.

The metadata test reads the *installed* distribution's requirements
(``importlib.metadata``), i.e. what ``pip install`` would impose on an
existing environment; the mmcv tests check the import-time version check
(:mod:`mmseg_hosvd.compat.mmcv_version`) in-process and, for the import of
``mmseg_hosvd`` itself, in a subprocess whose ``mmcv`` is missing or fake.
"""
import importlib.metadata
import subprocess
import sys
import textwrap

import pytest
from packaging.requirements import Requirement

from mmseg_hosvd.compat.mmcv_version import (MMCV_MAX, MMCV_MIN,
                                             check_mmcv_version,
                                             installed_mmcv_version)

MMCV_DISTRIBUTIONS = {'mmcv', 'mmcv-lite', 'mmcv-full'}


def _requirements() -> list:
    return [Requirement(r) for r in importlib.metadata.requires('mmseg_hosvd')]


def _name(req: Requirement) -> str:
    return req.name.lower().replace('_', '-')


def test_installed_metadata_pins_no_torch_and_names_no_mmcv():
    reqs = _requirements()
    assert reqs, 'mmseg_hosvd declares no requirement at all'
    for req in reqs:
        assert _name(req) not in MMCV_DISTRIBUTIONS, (
            f'{req}: mmseg_hosvd must not install an mmcv distribution (the '
            'user chooses mmcv or mmcv-lite)')
    core = {_name(r): r for r in reqs if r.marker is None}
    for name in ('torch', 'mmengine', 'mmsegmentation', 'numpy'):
        assert name in core, f'{name} missing from install_requires'
        operators = {spec.operator for spec in core[name].specifier}
        assert '>=' in operators, f'{core[name]}: no lower bound'
        assert not operators & {'==', '==='}, f'{core[name]}: an exact pin'
        # a range, not one release: the next patch release is accepted too
        lower = next(s.version for s in core[name].specifier
                     if s.operator == '>=')
        assert core[name].specifier.contains(lower)


def test_installed_metadata_accepts_the_tested_versions():
    core = {_name(r): r for r in _requirements() if r.marker is None}
    for name in ('torch', 'mmengine', 'mmsegmentation', 'numpy'):
        installed = importlib.metadata.version(name)
        assert core[name].specifier.contains(installed.split('+')[0]), (
            f'{name} {installed} (installed) is outside {core[name]}')


@pytest.mark.parametrize('version', [MMCV_MIN, '2.1.0', '2.1.1'])
def test_mmcv_versions_mmseg_accepts_pass(version):
    check_mmcv_version(version)


@pytest.mark.parametrize('version', ['1.7.2', '2.0.0rc3', MMCV_MAX, '2.2.1'])
def test_mmcv_versions_outside_mmseg_range_raise(version):
    with pytest.raises(ImportError) as info:
        check_mmcv_version(version)
    message = str(info.value)
    assert f'mmcv {version} is installed' in message
    assert f'{MMCV_MIN} <= mmcv < {MMCV_MAX}' in message
    assert 'mim install' in message and 'mmcv-lite' in message


def test_missing_mmcv_raises_and_says_what_to_install():
    with pytest.raises(ImportError, match='mmcv, which is not installed'):
        check_mmcv_version(None)


def test_unparsable_mmcv_version_raises():
    with pytest.raises(ImportError, match="cannot parse mmcv.__version__ 'x'"):
        check_mmcv_version('x')


def test_this_environment_has_an_accepted_mmcv():
    version = installed_mmcv_version()
    assert version is not None
    check_mmcv_version(version)


def _import_with_fake_mmcv(setup: str) -> subprocess.CompletedProcess:
    code = textwrap.dedent(f'''
        import sys, types
        {setup}
        try:
            import mmseg_hosvd.engine
        except ImportError as error:
            print('IMPORT-ERROR:', error)
        else:
            print('IMPORTED')
    ''')
    return subprocess.run([sys.executable, '-c', code], capture_output=True,
                          text=True, timeout=300)


def test_import_without_mmcv_raises_clear_error():
    result = _import_with_fake_mmcv("sys.modules['mmcv'] = None")
    assert result.returncode == 0, result.stderr[-2000:]
    assert 'IMPORT-ERROR: mmseg_hosvd needs mmcv' in result.stdout
    assert 'mim install' in result.stdout
    assert 'mmcv-lite' in result.stdout


def test_import_with_mmcv_1x_raises_clear_error():
    result = _import_with_fake_mmcv(
        "fake = types.ModuleType('mmcv'); fake.__version__ = '1.7.2'\n"
        "        sys.modules['mmcv'] = fake")
    assert result.returncode == 0, result.stderr[-2000:]
    assert ('IMPORT-ERROR: mmseg_hosvd: mmcv 1.7.2 is installed'
            in result.stdout)
