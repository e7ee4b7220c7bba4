"""Generated datasets (tests, demos, smoke runs)."""
from .tiny_voc import make_tiny_camvid, make_tiny_voc

__all__ = ['make_tiny_camvid', 'make_tiny_voc']
