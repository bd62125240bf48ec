"""fastloader: high-throughput data loading for PyTorch."""
from ._shm import SharedMemoryError
from ._version import __version__
from ._worker_info import get_worker_info
from .errors import DecodeError, ShardError
from .loader import DataLoader
from .shards import ShardWriter, WebDataset
from .vision import decode_jpeg

__all__ = [
    "__version__",
    "DataLoader",
    "DecodeError",
    "ShardError",
    "ShardWriter",
    "SharedMemoryError",
    "WebDataset",
    "decode_jpeg",
    "get_worker_info",
]
