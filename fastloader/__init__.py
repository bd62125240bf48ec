"""fastloader: high-throughput data loading for PyTorch."""
from ._version import __version__
from .errors import DecodeError
from .vision import decode_jpeg

__all__ = ["__version__", "DecodeError", "decode_jpeg"]
