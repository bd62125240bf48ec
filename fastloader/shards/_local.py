"""A local shard opened for reading its members: mapped, or read with pread.

A mapping gives zero-copy views and cheap slices of small members. For large members
(~100 KiB and more) pread is the faster way to make `bytes`: one copy from the page
cache with no page mapped, where a fresh mapping takes a page fault every 64 KiB
(~1.4x faster from a new worker process here).
"""
from __future__ import annotations

import functools
import mmap
import os

from .._origins import read_range
from ..errors import ShardError

# File systems whose pages a second read finds in this machine's page cache
_LOCAL_FS = frozenset({"ext2", "ext3", "ext4", "xfs", "btrfs", "f2fs", "jfs", "reiserfs", "bcachefs", "zfs",
                       "tmpfs", "ramfs", "overlay"})


@functools.lru_cache(maxsize=64)
def on_local_disk(st_dev: int) -> bool:
    """Whether the file system of device st_dev is a local one (per /proc/self/mountinfo)."""
    want = f"{os.major(st_dev)}:{os.minor(st_dev)}"
    try:
        with open("/proc/self/mountinfo") as f:
            for line in f:
                fields = line.split()
                if fields[2] == want and " - " in line:
                    return line.split(" - ", 1)[1].split()[0] in _LOCAL_FS
    except OSError:
        pass
    return False


class PreadShard:
    """`shard[start:stop]` is that byte range as new bytes, read with pread. `local`: on
    a local disk, where the main process may read members again by offset (`_origins`)."""

    def __init__(self, fd: int, url: str, local: bool):
        self.fd = fd
        self.url = url
        self.local = local

    def __getitem__(self, span: slice) -> bytes:
        data = read_range(self.fd, span.start, span.stop - span.start)
        if len(data) != span.stop - span.start:
            raise self.cut_short(span.start)
        return data

    def cut_short(self, offset: int) -> ShardError:
        return ShardError("the shard is shorter than its index says (changed since it was indexed?)",
                          url=self.url, offset=offset)

    def __del__(self):
        os.close(self.fd)


def open_shard(path: str, url: str, mapped: bool) -> mmap.mmap | PreadShard | bytes:
    """The shard mapped (b"" when empty), or as a PreadShard."""
    with open(path, "rb") as f:
        st = os.fstat(f.fileno())
        if not mapped:
            return PreadShard(os.dup(f.fileno()), url, on_local_disk(st.st_dev))
        if st.st_size == 0:
            return b""
        return mmap.mmap(f.fileno(), 0, access=mmap.ACCESS_READ)
