"""Image decoding and fused batch augmentation."""
from .decode import DEFAULT_MAX_PIXELS, add_restart_markers, decode_jpeg
from .pipeline import Compose, ImagePipeline
from .transforms import CenterCrop, Normalize, RandomHorizontalFlip, RandomResizedCrop, Resize, ToDtype

__all__ = [
    "DEFAULT_MAX_PIXELS", "add_restart_markers", "decode_jpeg", "Compose", "ImagePipeline", "CenterCrop", "Normalize",
    "RandomHorizontalFlip", "RandomResizedCrop", "Resize", "ToDtype",
]
