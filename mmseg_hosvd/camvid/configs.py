"""Config editing for the CamVid daytime -> dusk experiment.

The leaf configs live under ``configs/camvid/<folder>/`` of the repository;
every function takes that folder explicitly.
"""
import glob
import os.path as osp
import time
from typing import Optional, Tuple

from ..bench.configs import parse_leaf_tag
from ..ops import Method

#: model choice -> (config folder, config prefix, label in tables)
MODELS = {
    'deeplabv3-m': ('mobilenet_v2', 'mobilenet-v2-d8_deeplabv3', 'DLV3-M'),
    'fcn': ('fcn', 'fcn_r18-d8', 'FCN'),
    'segformer': ('segformer', 'segformer_mit-b0', 'SegFormer-B0'),
}
DEPTHS = ('5l', '10l')
#: the experiment's methods: the tags of their leaf configs
TAGS = ('vanilla', 'gradient-filter', 'svd-eps0.8', 'hosvd-eps0.8',
        'hosvd-eps0.9', 'asi-eps0.8',
        # the plugin's leanest mode: lean_backward='all' (trainable
        # BatchNorms after compressed convs folded too) and lean_loss=True
        'hosvd-eps0.8-lean-all')
#: method choice (leaf tag) -> (hook method, eps), read from the method
#: registry (:func:`mmseg_hosvd.bench.parse_leaf_tag`)
METHODS = {tag: parse_leaf_tag(tag) for tag in TAGS}
#: the evaluation splits: dusk (the target) and daytime (what is forgotten)
SPLITS = ('target_val', 'val')
#: smoke sizes: a handful of images, 2 iterations per run
SMOKE = dict(images=4, iters=2, batch=2, crop=(64, 64), scale=(96, 72))


def find_config(configs: str, folder: str, pattern: str) -> str:
    """The one config matching ``configs/folder/pattern``.

    Raises:
        FileNotFoundError: none or several match.
    """
    found = sorted(glob.glob(osp.join(configs, folder, pattern)))
    if len(found) != 1:
        raise FileNotFoundError(f'expected one config {folder}/{pattern} '
                                f'under {configs}, found {len(found)}: '
                                f'{found}')
    return found[0]


def pretrain_config(configs: str, model: str) -> str:
    folder, prefix, _ = MODELS[model]
    return find_config(configs, folder, f'{prefix}_pretrain_*.py')


def finetune_config(configs: str, model: str, depth: str, tag: str) -> str:
    folder, prefix, _ = MODELS[model]
    return find_config(configs, folder, f'{prefix}_{depth}-{tag}_*.py')


def stem(path: str) -> str:
    """File name without folder and extension."""
    return osp.splitext(osp.basename(path))[0]


def set_schedule(cfg, iters: int) -> None:
    """Set the iterations of a config (``[warm-up LinearLR, cosine]``),
    scaling the warm-up proportionally, and its checkpoint interval."""
    old = cfg.train_cfg.max_iters
    warmup, cosine = cfg.param_scheduler
    warm = round(warmup.end * iters / old)
    # mmengine's LinearLR over a single iteration never leaves its start
    # factor: 2 iterations at least, and the cosine needs one
    warm = max(1, min(max(warm, 2), iters - 1))
    warmup.begin, warmup.end = 0, warm
    cosine.begin, cosine.end = warm, iters
    cfg.train_cfg.max_iters = iters
    cfg.train_cfg.val_interval = iters
    cfg.default_hooks.checkpoint.interval = iters


def set_micro_batch(cfg, micro_batch: int) -> None:
    """Train with micro-batches of ``micro_batch`` samples through
    gradient accumulation: the dataloader's batch ``B`` becomes
    ``micro_batch``, ``optim_wrapper.accumulative_counts`` ``B /
    micro_batch``, and every iteration count (``max_iters``, the
    schedulers' bounds, validation and checkpoint intervals) is multiplied
    by it, so that the optimizer takes the same steps on the same
    effective batches.

    Raises:
        ValueError: ``micro_batch`` does not divide ``B``.
    """
    batch = cfg.train_dataloader.batch_size
    if micro_batch < 1 or batch % micro_batch:
        raise ValueError(f'micro_batch {micro_batch} does not divide the '
                         f'batch of {batch}')
    counts = batch // micro_batch
    cfg.train_dataloader.batch_size = micro_batch
    cfg.optim_wrapper.accumulative_counts = counts
    cfg.train_cfg.max_iters *= counts
    cfg.train_cfg.val_interval *= counts
    cfg.default_hooks.checkpoint.interval *= counts
    for scheduler in cfg.param_scheduler:
        scheduler.begin *= counts
        scheduler.end *= counts


def set_data(cfg, data_root: str, smoke: bool = False,
             ann_file: Optional[str] = None) -> None:
    """Point every dataloader at ``data_root`` (absolute, so that the
    config dumped to the work_dir runs from anywhere); shrink to
    :data:`SMOKE` sizes if ``smoke``; ``ann_file``: the test split file."""
    for key in ('train_dataloader', 'val_dataloader', 'test_dataloader'):
        loader = cfg.get(key)
        if not loader:
            continue
        loader.dataset.data_root = data_root
        if smoke:
            loader.dataset.indices = SMOKE['images']
            loader.batch_size = SMOKE['batch']
            for transform in loader.dataset.pipeline:
                if transform.type in ('RandomResize', 'Resize'):
                    transform.scale = SMOKE['scale']
                elif transform.type == 'RandomCrop':
                    transform.crop_size = SMOKE['crop']
    if ann_file is not None:
        cfg.test_dataloader.dataset.ann_file = ann_file
    if smoke:
        cfg.model.data_preprocessor.size = SMOKE['crop']


def run_cfg(path: str, data_root: str, work_dir: str, seed: int,
            iters: Optional[int], smoke: bool = False,
            micro_batch: Optional[int] = None):
    """The training config of one run: data, schedule (``iters``; smoke:
    :data:`SMOKE`'s), micro-batches (:func:`set_micro_batch`), work_dir,
    seed; validation only after training."""
    from mmengine.config import Config
    cfg = Config.fromfile(path)
    set_data(cfg, data_root, smoke)
    if smoke:
        iters = SMOKE['iters']
    if iters is not None:
        set_schedule(cfg, iters)
    if micro_batch is not None:
        set_micro_batch(cfg, micro_batch)
    cfg.work_dir = work_dir
    cfg.randomness = dict(seed=seed)
    cfg.resume = False
    # validation happens after training, from the saved checkpoint
    cfg.train_cfg.val_interval = cfg.train_cfg.max_iters + 1
    if smoke:
        cfg.default_hooks.logger.interval = 1
    compression = cfg.default_hooks.get('compression')
    if compression is not None and compression.method == Method.ASI:
        compression.seed = seed  # the random starting bases
    isolate(cfg, work_dir)
    return cfg


def eval_cfg(config: str, checkpoint: str, split: str, work_dir: str):
    """``mim test``'s config: the dumped ``config`` with ``load_from =
    checkpoint``, testing on ``split``."""
    from mmengine.config import Config
    cfg = Config.fromfile(config)
    cfg.load_from = checkpoint
    cfg.work_dir = work_dir
    cfg.test_dataloader.dataset.ann_file = (
        f'ImageSets/Segmentation/{split}.txt')
    isolate(cfg, work_dir)
    return cfg


def isolate(cfg, work_dir: str) -> None:
    """Per-run names for mmengine's process-wide instances (logger, message
    hub, visualizer): several runners live in this process."""
    cfg.experiment_name = (f'{osp.basename(work_dir)}_'
                           f'{time.strftime("%Y%m%d_%H%M%S")}_'
                           f'{time.monotonic_ns()}')
    cfg.visualizer.name = f'visualizer:{cfg.experiment_name}'
    cfg.env_cfg = dict(cudnn_benchmark=False,
                       mp_cfg=dict(mp_start_method='fork',
                                   opencv_num_threads=0),
                       dist_cfg=dict(backend='gloo'))


def method_of(tag: str) -> Tuple[str, Optional[float]]:
    """(hook method, eps) of a method tag."""
    return METHODS[tag]
