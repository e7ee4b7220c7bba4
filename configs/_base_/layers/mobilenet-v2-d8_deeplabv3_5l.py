# DLV3-M 5L (docs/paper_setup.md, "Which layers"): "as DLV3 5L", the same
# freeze and compressed-layer lists (the decode head's paths are the same).
_base_ = './deeplabv3_r18-d8_5l.py'
