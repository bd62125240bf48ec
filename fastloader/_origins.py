"""Where the large `bytes` a worker process read from local files came from.

A shard member yielded as `bytes` is a copy of a byte range of a local file. When a
worker's batch still holds that very object, the worker sends the file's descriptor
(once per file) and (offset, size) in its place, and the main process reads the range
from the page cache itself: one copy in all, where going through shared memory takes two
(into the segment, out of it). Only worker processes note origins (`enable`), and only
for files on local disks (a network file system would be read twice over the network).

Noted objects are held (so an id cannot be reused by another object) until a batch sends
them, up to a cap, oldest dropped first: 8 MiB, or 4x the largest batch of noted bytes
sent so far. A dataset whose batches do not carry the raw bytes (decoded in the worker,
say) thus keeps at most 8 MiB of them alive a little longer.
"""
from __future__ import annotations

import os
from collections import OrderedDict

MIN_SIZE = 32 << 10  # smaller bytes travel inside the pickled batch
MIN_HELD_CAP = 8 << 20
_PREAD_MAX = 0x7FFFF000  # Linux reads at most this much at once

_enabled = False
_held: OrderedDict[int, tuple[bytes, object, int]] = OrderedDict()  # id -> (obj, source, offset)
_held_bytes = 0
_cap = MIN_HELD_CAP


def enable() -> None:
    global _enabled
    _enabled = True


def enabled() -> bool:
    return _enabled


def note(obj: bytes, source, offset: int) -> None:
    """obj is a copy of bytes [offset, offset + len(obj)) of source, an open local file
    with `fd` and `url` attributes, which stays open while held here."""
    global _held_bytes
    if not _enabled:
        return
    _held[id(obj)] = (obj, source, offset)
    _held_bytes += len(obj)
    while _held_bytes > _cap:
        _, (old, _, _) = _held.popitem(last=False)
        _held_bytes -= len(old)


def take(obj: bytes) -> tuple[object, int] | None:
    """(source, offset) of obj if it was noted; it is then forgotten."""
    global _held_bytes
    entry = _held.pop(id(obj), None)
    if entry is None:
        return None
    _held_bytes -= len(obj)  # the same object: held, its id was never reused
    return entry[1], entry[2]


def sent(nbytes: int) -> None:
    """A batch sent nbytes of noted bytes by reference: hold enough for a few such."""
    global _cap
    _cap = max(_cap, 4 * nbytes)


def read_range(fd: int, offset: int, n: int) -> bytes:
    """Bytes [offset, offset + n) of the file; shorter only where the file ends."""
    if n <= _PREAD_MAX:
        return os.pread(fd, n, offset)
    out = bytearray(n)
    view, done = memoryview(out), 0
    while done < n:
        got = os.preadv(fd, [view[done:done + _PREAD_MAX]], offset + done)
        if got == 0:
            break
        done += got
    return bytes(view[:done])
