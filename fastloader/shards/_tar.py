"""The compiled tar scanner's Python face: member names and positions, damage reported."""
from __future__ import annotations

from typing import NamedTuple

import numpy as np

from .. import _C

DEFAULT_MAX_MEMBER_SIZE = 1 << 30  # 1 GiB: a header claiming more is damage, not data


class TarScan(NamedTuple):
    names: list[str]       # regular-file members, in archive order
    header: np.ndarray     # int64 offset of each member's first header
    offset: np.ndarray     # int64 offset of each member's data
    size: np.ndarray       # int64 data size of each member
    consumed: int          # archive offset up to which the buffer was parsed
    at_end: bool           # the end-of-archive marker was reached
    error: str             # "" unless the archive is damaged at error_offset
    error_offset: int


def scan(buffer, base: int = 0, final: bool = True, max_member_size: int = DEFAULT_MAX_MEMBER_SIZE) -> TarScan:
    """Scans the tar bytes in `buffer` (which start at archive offset `base`).

    With `final=False` the buffer is a prefix of a stream: the scan stops cleanly before a
    member whose data is not all there. Nothing is copied; positions index the archive.
    """
    names, where, consumed, at_end, error, error_offset = _C.scan_tar(buffer, base, final, max_member_size)
    w = where.numpy()
    return TarScan(names, w[:, 0], w[:, 1], w[:, 2], consumed, at_end, error, error_offset)
