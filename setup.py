"""Install the mmseg_hosvd plugin.

Dependencies are pinned to a set that installs from PyPI alone on a fresh
machine. ``mmcv`` is provided by ``mmcv-lite`` (no compiled ops); see
``mmseg_hosvd/compat/mmcv_ops.py`` for the fallback that lets
``mmseg.models`` import without ``mmcv._ext``. ``openmim`` is installed with
``--no-deps`` by ``tools/setup_env.sh`` (its ``opendatalab`` dependency is not
needed for ``mim train``); its direct needs are listed under ``mim``.
"""
from setuptools import find_packages, setup

INSTALL_REQUIRES = [
    'torch==2.13.0',
    'setuptools<82',
    'numpy<2.5',
    'mmengine==0.10.7',
    'mmcv-lite==2.1.0',
    'mmsegmentation==1.2.2',
    'ftfy',
    'regex',
    'tensorboard',
    'matplotlib',
    'tqdm',
]

EXTRAS_REQUIRE = {
    # direct needs of openmim 0.3.9, which itself is installed with --no-deps
    'mim': ['click', 'colorama', 'model-index', 'pandas', 'requests', 'rich',
            'tabulate'],
    'tests': ['pytest'],
}

setup(
    name='mmseg_hosvd',
    version='0.1.0',
    description='Activation-map compression (HOSVD, SVD, Gradient Filter) '
    'for memory-cheap fine-tuning in MMSegmentation 1.x',
    packages=find_packages(include=['mmseg_hosvd', 'mmseg_hosvd.*']),
    python_requires='>=3.9',
    install_requires=INSTALL_REQUIRES,
    extras_require=EXTRAS_REQUIRE,
    zip_safe=False,
)
