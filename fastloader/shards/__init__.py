"""WebDataset shards: reading (`WebDataset`), writing (`ShardWriter`) and URL handling."""
from .dataset import WebDataset
from .urls import expand_urls
from .writer import ShardWriter, TarWriter

__all__ = ["ShardWriter", "TarWriter", "WebDataset", "expand_urls"]
