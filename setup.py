"""Install the mmseg_hosvd plugin.

``install_requires`` states what the plugin is compatible with, as ranges,
so that ``pip install`` into an existing MMSegmentation environment keeps
the user's torch and mmcv (docs/install.md, "Into an existing
MMSegmentation environment"; lower bounds justified there). No mmcv distribution is listed:
as with mmseg itself, the user installs the full ``mmcv`` (compiled ops, GPU)
or ``mmcv-lite`` (CPU); ``mmseg_hosvd/compat/mmcv_version.py`` checks at
import that one in mmseg 1.2's range is there.

The exact set known to work on a CPU machine (torch 2.13.0 CPU wheel,
mmcv-lite, ...) is the lock file ``requirements/cpu.txt``, which
``tools/setup_env.sh`` installs before ``pip install -e '.[mim,tests]'``.
``openmim`` is installed with ``--no-deps`` by that script (its
``opendatalab`` dependency is not needed for ``mim train``); its direct
needs are the ``mim`` extra.
"""
from setuptools import find_packages, setup

INSTALL_REQUIRES = [
    'torch>=2.0,<3',
    'numpy>=1.22',
    'mmengine>=0.10.0,<1.0.0',
    'mmsegmentation>=1.2.0,<1.3.0',
    # imported by mmseg.models (its CLIP tokenizer) but not declared by mmseg
    'ftfy',
    'regex',
]

#: what the configs (TensorBoard backend) and tools/ (plots, progress,
#: tables) use
TOOLS_REQUIRE = ['tensorboard', 'matplotlib', 'tqdm', 'tabulate']

EXTRAS_REQUIRE = {
    'tools': TOOLS_REQUIRE,
    # direct needs of openmim 0.3.9, which itself is installed with --no-deps
    'mim': ['click', 'colorama', 'model-index', 'pandas', 'requests', 'rich',
            'tabulate'],
    # import-linter checks the layer contracts (.importlinter); it needs
    # Python >= 3.11, like the lock file; the test command runs two
    # pytest-xdist workers (pytest -n 2)
    'tests': ['pytest', 'pytest-xdist',
              'import-linter>=2.1; python_version>="3.11"'] +
    TOOLS_REQUIRE,
}

setup(
    name='mmseg_hosvd',
    version='0.1.0',
    description='Activation-map compression (HOSVD, SVD, Gradient Filter) '
    'for memory-cheap fine-tuning in MMSegmentation 1.x',
    packages=find_packages(include=['mmseg_hosvd', 'mmseg_hosvd.*']),
    # the plugin's code compiles under 3.9; the lock file
    # requirements/cpu.txt (tools/setup_env.sh) needs 3.11, and the tested
    # environments ran 3.11 (docs/install.md)
    python_requires='>=3.9',
    install_requires=INSTALL_REQUIRES,
    extras_require=EXTRAS_REQUIRE,
    zip_safe=False,
)
