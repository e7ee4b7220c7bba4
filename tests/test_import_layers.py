"""The package's layer contracts (``.importlinter``) hold."""
import os.path as osp
import subprocess
import sys

REPO = osp.dirname(osp.dirname(osp.abspath(__file__)))


def test_layer_contracts_are_kept():
    lint_imports = osp.join(osp.dirname(sys.executable), 'lint-imports')
    result = subprocess.run([lint_imports, '--no-cache'], cwd=REPO,
                            capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stdout[-4000:] + result.stderr
    assert 'Contracts: 2 kept, 0 broken.' in result.stdout
