_base_ = './_base_/segformer_mit-b0_10l_1xb8-20k_voc12aug-512x512.py'
# The Gradient Filter is defined for convs only: this setup's one linear,
# the last MiT block's attention out-projection
# (backbone.layers.3.1.1.attn.attn), is counted with method='vanilla' (it
# trains on its full input); its nine convs are filtered
# (configs/_base_/layers/segformer_mit-b0_10l.py, gradient_filter_layers).
default_hooks = dict(
    compression=dict(
        method='gradient_filter',
        layers={{_base_.gradient_filter_layers}}))
