# Runtime shared by every config of this project (fine-tuning and
# calibration). Hooks live in the schedules' ``default_hooks`` (see
# configs/README.md).
_base_ = 'mmseg::_base_/default_runtime.py'

# Registers the plugin's hooks and the mmcv.ops fallback before any
# mmseg model is imported.
custom_imports = dict(imports=['mmseg_hosvd.engine'], allow_failed_imports=False)

vis_backends = [
    dict(type='LocalVisBackend'),
    dict(type='TensorboardVisBackend'),
]
visualizer = dict(
    type='SegLocalVisualizer', vis_backends=vis_backends, name='visualizer')

# DDP (distributed launches only): the compression hook wraps the model
# again after freezing it, so only the trainable parameters are in DDP's
# gradient buckets and each of them gets a gradient every step; no
# ``find_unused_parameters`` (a graph traversal per step) is needed.
model_wrapper_cfg = dict(
    type='MMDistributedDataParallel', find_unused_parameters=False)

randomness = dict(seed=233)
