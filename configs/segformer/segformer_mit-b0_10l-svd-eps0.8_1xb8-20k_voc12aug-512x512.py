_base_ = './_base_/segformer_mit-b0_10l_1xb8-20k_voc12aug-512x512.py'
default_hooks = dict(compression=dict(method='svd', eps=0.8))
