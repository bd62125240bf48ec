"""Where the large `bytes` a worker process read from local files came from.

A shard member yielded as `bytes` is a copy of a byte range of a local file, which the
main process can read as well. When a worker's batch still holds that very object, the
worker sends (file, offset, size) in its place and the main process reads the range from
the page cache itself: one copy in all, where going through shared memory takes two
(into the segment, out of it). Only worker processes note origins (`enable`).

Noted objects are held (so an id cannot be reused by another object) until a batch
sends them, up to HELD_CAP bytes, oldest dropped first. A dataset whose batches do not
carry the raw bytes (decoded in the worker, say) would only make the worker hold them
longer, so noting stops once that much has been dropped without any being sent.
"""
from __future__ import annotations

from collections import OrderedDict

HELD_CAP = 64 << 20
MIN_SIZE = 32 << 10  # smaller bytes travel inside the pickled batch

Origin = tuple  # (absolute path, st_dev, st_ino): which file, for the main process to reopen

_enabled = False
_held: OrderedDict[int, tuple[bytes, Origin, int]] = OrderedDict()  # id -> (obj, origin, offset)
_held_bytes = 0
_dropped_bytes = 0  # noted, then dropped unsent
_sent = 0


def enable() -> None:
    global _enabled
    _enabled = True


def enabled() -> bool:
    return _enabled


def note(obj: bytes, origin: Origin, offset: int) -> None:
    """obj is a copy of the file's bytes [offset, offset + len(obj))."""
    global _held_bytes, _dropped_bytes, _enabled
    if not _enabled:
        return
    _held[id(obj)] = (obj, origin, offset)
    _held_bytes += len(obj)
    while _held_bytes > HELD_CAP:
        _, (old, _, _) = _held.popitem(last=False)
        _held_bytes -= len(old)
        _dropped_bytes += len(old)
    if _sent == 0 and _dropped_bytes > 2 * HELD_CAP:  # the batches do not carry them
        _enabled = False
        _held.clear()
        _held_bytes = 0


def take(obj: bytes) -> tuple[Origin, int] | None:
    """(origin, offset) of obj if it was noted; it is then forgotten."""
    global _held_bytes, _sent
    entry = _held.pop(id(obj), None)
    if entry is None:
        return None
    _held_bytes -= len(obj)  # the same object: held, its id was never reused
    _sent += 1
    return entry[1], entry[2]
