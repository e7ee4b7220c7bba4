_base_ = './_base_/segformer_mit-b0_10l_1xb8-100it_camvid-target-80x80.py'
# The Gradient Filter is defined for convs only: the attention
# out-projection (a linear) is counted with method='vanilla'
# (configs/_base_/layers/segformer_mit-b0_10l.py, gradient_filter_layers).
default_hooks = dict(
    compression=dict(
        method='gradient_filter',
        layers={{_base_.gradient_filter_layers}}))
