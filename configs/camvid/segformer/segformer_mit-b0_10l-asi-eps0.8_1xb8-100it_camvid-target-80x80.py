_base_ = './_base_/segformer_mit-b0_10l_1xb8-100it_camvid-target-80x80.py'
default_hooks = dict(compression=dict(method='asi', eps=0.8))
