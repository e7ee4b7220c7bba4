_base_ = './_base_/upernet_swin-t_5l_1xb8-20k_voc12aug-512x512.py'
default_hooks = dict(compression=dict(method='asi', eps=0.8))
