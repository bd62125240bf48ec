"""Whole-buffer and streamed tar scanning with recovery: after a damaged header the scan
resumes at the next block that is a valid header, so one bad member loses one member."""
from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass, field

import numpy as np

from . import _members, _tar

BLOCK = 512


def _fatal(reason: str) -> bool:
    """Damage after which nothing more can be read: the data ends, or it was never tar."""
    return reason.startswith("truncated") or reason.startswith("not a tar file")


def _is_header(view, at: int, max_member_size: int) -> bool:
    return _tar.scan(view[at:at + BLOCK], at, False, max_member_size).error == ""


@dataclass
class Scanned:
    """Members found in a buffer, and the damage met (offset, reason) in order."""

    names: list[str] = field(default_factory=list)
    header: list[np.ndarray] = field(default_factory=list)
    offset: list[np.ndarray] = field(default_factory=list)
    size: list[np.ndarray] = field(default_factory=list)
    damage: list[tuple[int, str]] = field(default_factory=list)
    consumed: int = 0        # archive offset where a later scan must resume
    at_end: bool = False     # the end of the archive (or fatal damage) was reached
    resyncing: bool = False  # still looking for the next valid header

    def add(self, scan: _tar.TarScan) -> None:
        self.names.extend(scan.names)
        self.header.append(scan.header)
        self.offset.append(scan.offset)
        self.size.append(scan.size)

    def group(self) -> _members.Samples:
        cat = (lambda xs: np.concatenate(xs) if xs else np.zeros(0, np.int64))
        return _members.group(self.names, cat(self.header), cat(self.offset), cat(self.size))


def scan_buffer(data, base: int, final: bool, max_member_size: int, resyncing: bool = False) -> Scanned:
    """Scans data (at archive offset base), skipping damaged headers.

    With `final` false, `consumed` is where to go on once more bytes are appended (the
    start of an incomplete member, or of the next block still to be checked for a header
    when `resyncing`)."""
    view = memoryview(data)
    out = Scanned()
    pos = 0
    while True:
        if resyncing:
            while pos + BLOCK <= len(view) and not _is_header(view, pos, max_member_size):
                pos += BLOCK
            if pos + BLOCK > len(view):  # no header found in this buffer
                out.consumed, out.at_end, out.resyncing = base + pos, final, True
                return out
            resyncing = False
        scan = _tar.scan(view[pos:], base + pos, final, max_member_size)
        out.add(scan)
        if not scan.error:
            out.consumed, out.at_end = scan.consumed, scan.at_end or final
            return out
        out.damage.append((scan.error_offset, scan.error))
        if _fatal(scan.error):
            out.consumed, out.at_end = base + len(view), True
            return out
        pos = scan.error_offset - base + BLOCK
        resyncing = True


def stream_samples(url: str, chunks: Iterator[memoryview], max_member_size: int
                   ) -> Iterator[tuple[_members.Samples, object] | tuple[int, str]]:
    """Scans a shard as it streams in. Yields (samples, buffer) with offsets into buffer,
    or (offset, reason) for damage, in archive order. A sample is only yielded once the
    next one has begun (or the archive ended), so it is never cut by a chunk boundary."""
    pending = bytearray()
    base = 0  # archive offset of pending[0]
    resyncing = False
    chunks = iter(chunks)
    done = False
    while not done:
        chunk = next(chunks, None)
        final = chunk is None
        if chunk is not None:
            pending += chunk
        scanned = scan_buffer(pending, base, final, max_member_size, resyncing)
        resyncing = scanned.resyncing
        samples = scanned.group()
        n = len(samples)
        hold = 0 if (final or scanned.at_end or scanned.damage) else min(n, 1)
        emit = n - hold
        damage = list(scanned.damage)
        if emit:
            data = memoryview(pending).toreadonly()  # pending is replaced, never resized, below
            # damage is reported in order: samples before each damage point first
            cut = 0
            for off, reason in damage:
                upto = int(np.searchsorted(samples.header[:emit], off))
                if upto > cut:
                    yield _slice(samples, cut, upto, base), data
                cut = max(cut, upto)
                yield (off, reason)
            if emit > cut:
                yield _slice(samples, cut, emit, base), data
        else:
            for d in damage:
                yield d
        for p in samples.problems:
            yield (p.offset, f"{p.reason} (key {p.key!r})")
        if scanned.at_end:
            return
        keep_from = int(samples.header[emit]) if hold else scanned.consumed
        pending = bytearray(memoryview(pending)[keep_from - base:])
        base = keep_from
        done = final


def _slice(s: _members.Samples, a: int, b: int, base: int) -> _members.Samples:
    """Samples a..b, with data offsets made relative to the buffer start (base)."""
    m0, m1 = int(s.first[a]), int(s.first[b])
    return _members.Samples(
        keys=s.keys[a:b], exts=s.exts, member_ext=s.member_ext[m0:m1],
        offset=s.offset[m0:m1] - base, size=s.size[m0:m1],
        first=s.first[a:b + 1] - m0, header=s.header[a:b],
    )
