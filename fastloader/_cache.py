"""Where fastloader keeps what it builds once: shard indexes, benchmark datasets."""
from __future__ import annotations

import os


def cache_root() -> str:
    """$FASTLOADER_CACHE, else ~/.cache/fastloader."""
    return os.environ.get("FASTLOADER_CACHE") or os.path.join(os.path.expanduser("~"), ".cache", "fastloader")
