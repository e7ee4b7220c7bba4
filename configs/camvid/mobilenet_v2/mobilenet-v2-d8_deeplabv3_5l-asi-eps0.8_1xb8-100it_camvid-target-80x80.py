_base_ = './_base_/mobilenet-v2-d8_deeplabv3_5l_1xb8-100it_camvid-target-80x80.py'
default_hooks = dict(compression=dict(method='asi', eps=0.8))
