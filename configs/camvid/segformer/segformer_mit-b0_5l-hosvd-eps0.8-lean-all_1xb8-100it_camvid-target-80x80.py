_base_ = './_base_/segformer_mit-b0_5l_1xb8-100it_camvid-target-80x80.py'
# HOSVD eps 0.8 in the plugin's leanest mode: lean_backward='all' also folds
# the trainable BatchNorms after compressed convs (their scale gradient then
# comes from the compressed input, like the convs' weight gradients), and
# lean_loss=True (loss and gradients unchanged)
default_hooks = dict(
    compression=dict(
        method='hosvd', eps=0.8, lean_backward='all', lean_loss=True))
