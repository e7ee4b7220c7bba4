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

# The compression hook freezes parameters in ``before_train``, i.e. after
# the model has been wrapped by DDP, so DDP must tolerate parameters that
# never receive a gradient (only used by distributed launches).
model_wrapper_cfg = dict(
    type='MMDistributedDataParallel', find_unused_parameters=True)

randomness = dict(seed=233)
