"""Shared fixtures: a generated tiny VOC tree and tiny-run config overrides;
two session-wide savings that change no result (see
``pytest_collection_finish`` and ``memoised_mmseg_bases``); one torch
thread per pytest-xdist worker (``pytest_configure``)."""
import copy
import gc
import os
import os.path as osp
import uuid
from typing import Optional

import pytest
from mmengine.config import Config

import mmseg_hosvd.engine  # noqa: F401  (fallback for mmcv.ops, hooks)
from mmseg_hosvd.datasets import make_tiny_camvid, make_tiny_voc

REPO = osp.dirname(osp.dirname(osp.abspath(__file__)))
CONFIGS = osp.join(REPO, 'configs')
TINY_CROP = (64, 64)


@pytest.fixture(scope='session')
def tiny_voc(tmp_path_factory) -> str:
    """A generated VOC-layout tree: 8 train and 4 val images of 80x80."""
    root = str(tmp_path_factory.mktemp('tiny_voc'))
    return make_tiny_voc(root, num_train=8, num_val=4, size=80)


@pytest.fixture(scope='session')
def tiny_camvid(tmp_path_factory) -> str:
    """A generated tree in the CamVid experiment's layout (11 classes,
    splits source_train, target_train, target_val, val), 96x96 images."""
    root = str(tmp_path_factory.mktemp('tiny_camvid'))
    return make_tiny_camvid(root)


def tiny_pipelines(crop=TINY_CROP):
    # deterministic (no random transform): resumed runs see the same data
    train = [
        dict(type='LoadImageFromFile'),
        dict(type='Resize', scale=crop, keep_ratio=False),
        dict(type='LoadAnnotations'),
        dict(type='PackSegInputs'),
    ]
    test = [
        dict(type='LoadImageFromFile'),
        dict(type='Resize', scale=crop, keep_ratio=False),
        dict(type='LoadAnnotations'),
        dict(type='PackSegInputs'),
    ]
    return train, test


def tiny_run_cfg(cfg,
                 work_dir: str,
                 data_root: str,
                 max_iters: int = 2,
                 batch_size: int = 2,
                 val: bool = True,
                 checkpoint_interval: Optional[int] = None):
    """Shrink a real config to a CPU-sized run on the tiny dataset: data,
    crop, iterations and logging change; model, hooks and optimizer stay."""
    # the same config, without yapf's formatting of its text (mmengine's
    # ``format_python_code``): the Runner dumps and logs the config text
    # four times, ~1 s of yapf per run; the text stays valid Python
    cfg = Config(copy.deepcopy(cfg.to_dict()), cfg_text=cfg.text,
                 filename=cfg.filename, format_python_code=False)
    train_pipeline, test_pipeline = tiny_pipelines()
    dataset = dict(
        type='PascalVOCDataset',
        data_root=data_root,
        data_prefix=dict(img_path='JPEGImages',
                         seg_map_path='SegmentationClass'))
    cfg.train_dataloader = dict(
        batch_size=batch_size,
        num_workers=0,
        persistent_workers=False,
        sampler=dict(type='InfiniteSampler', shuffle=False),
        dataset=dict(dataset, ann_file='ImageSets/Segmentation/train.txt',
                     pipeline=train_pipeline))
    val_loader = dict(
        batch_size=1,
        num_workers=0,
        persistent_workers=False,
        sampler=dict(type='DefaultSampler', shuffle=False),
        dataset=dict(dataset, ann_file='ImageSets/Segmentation/val.txt',
                     pipeline=test_pipeline))
    cfg.val_dataloader = val_loader
    cfg.test_dataloader = val_loader
    cfg.model.data_preprocessor.size = TINY_CROP
    cfg.train_cfg = dict(
        type='IterBasedTrainLoop',
        max_iters=max_iters,
        val_interval=max_iters if val else max_iters + 1)
    if not val:
        cfg.val_cfg = cfg.val_dataloader = cfg.val_evaluator = None
    cfg.work_dir = work_dir
    cfg.load_from = None
    cfg.resume = False
    cfg.log_level = 'WARNING'
    cfg.default_hooks.logger = dict(
        type='LoggerHook', interval=1, log_metric_by_epoch=False)
    cfg.default_hooks.checkpoint = dict(
        type='CheckpointHook',
        by_epoch=False,
        interval=checkpoint_interval or max_iters + 1,
        save_last=checkpoint_interval is not None)
    cfg.default_hooks.visualization = dict(type='SegVisualizationHook')
    cfg.visualizer.vis_backends = [dict(type='LocalVisBackend')]
    # mmengine keeps one visualizer instance per name and process: give
    # each run (a resumed one too) its own, or a later run writes to an
    # earlier run's backends (and mmengine warns)
    cfg.visualizer.name = f'visualizer:{work_dir}:{uuid.uuid4().hex}'
    # likewise the logger, message hub and default scope, named after the
    # experiment (mmengine's default: config name + start time to the
    # second, the same for two runs of one config started within a second)
    cfg.experiment_name = (
        f'{osp.splitext(osp.basename(cfg.filename or "run"))[0]}_'
        f'{uuid.uuid4().hex[:8]}')
    cfg.env_cfg = dict(cudnn_benchmark=False, dist_cfg=dict(backend='gloo'))
    return cfg


@pytest.fixture(scope='module')
def single_thread():
    """Small ops on a shared 2-core machine: one thread avoids OpenMP
    oversubscription stalls (correctness tests, not timings). Use with
    ``pytestmark = pytest.mark.usefixtures('single_thread')``."""
    import torch
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture(scope='session', autouse=True)
def memoised_mmseg_bases():
    """Every ``mmseg::`` base of a config costs mmengine ~0.2 s (it reloads
    ``pkg_resources`` to check that mmseg is installed, then re-reads every
    metafile of mmseg's model index): memoise that lookup (a pure function
    of the ``mmseg::`` path) for the session. Local bases are resolved as
    before."""
    original = Config.__dict__['_get_cfg_path']
    resolve = original.__func__
    cache = {}

    def cached(cfg_path, filename):
        if '::' not in cfg_path:
            return resolve(cfg_path, filename)
        if cfg_path not in cache:
            cache[cfg_path] = resolve(cfg_path, filename)
        return cache[cfg_path]

    Config._get_cfg_path = staticmethod(cached)
    yield
    Config._get_cfg_path = original


def pytest_collection_finish(session):
    """Move what exists after collection (the imported torch, mmengine and
    mmseg modules, the test items) to the collector's permanent generation:
    every ``gc.collect()`` of the run (mmengine calls one per dataset it
    builds) then walks only the objects the tests create, ~0.2 s less
    each. Only what is reachable right after collection is frozen (modules
    and test items, which live for the whole session anyway)."""
    gc.collect()
    gc.freeze()


def pytest_configure(config):
    """Under pytest-xdist (the test command's ``-n 2``), one thread per
    worker, for its own ops and the processes it starts (``mim train``,
    DDP ranks): two workers with two threads each would oversubscribe
    the two cores."""
    if os.environ.get('PYTEST_XDIST_WORKER'):
        import torch
        os.environ['OMP_NUM_THREADS'] = '1'
        torch.set_num_threads(1)
