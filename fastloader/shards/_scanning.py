"""Whole-buffer and streamed tar scanning with recovery: after a damaged header the scan
resumes at the next block that is a valid header, so one bad member loses one member."""
from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass, field

import numpy as np

from .._heap import keep_freed_memory
from . import _members, _tar

BLOCK = 512
_ZERO_BLOCK = bytes(BLOCK)


@dataclass
class Damage:
    """Something in a shard that could not be delivered, at an archive offset."""

    offset: int
    reason: str
    key: str | None = None   # the sample, when known
    lost_samples: int = 0    # whole samples left out because of it


def _fatal(reason: str) -> bool:
    """Damage after which nothing more can be read: the data ends, or it was never tar."""
    return reason.startswith("truncated") or reason.startswith("not a tar file")


def _is_header(view, at: int, max_member_size: int) -> bool:
    block = view[at:at + BLOCK]
    # A zero block reads as the end of the archive; inside a damaged member's data it is
    # just data (the real end is reached at the end of the file).
    return block != _ZERO_BLOCK and _tar.scan(block, at, False, max_member_size).error == ""


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

    def extend(self, other: Scanned) -> None:
        self.names += other.names
        self.header += other.header
        self.offset += other.offset
        self.size += other.size
        self.damage += other.damage

    def arrays(self) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        cat = (lambda xs: np.concatenate(xs) if xs else np.zeros(0, np.int64))
        return cat(self.header), cat(self.offset), cat(self.size)

    def group(self) -> _members.Samples:
        return _members.group(self.names, *self.arrays())


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


def _events(samples: _members.Samples, emit: int, damage: list[tuple[int, str]], upto: float
            ) -> Iterator[tuple[int, int] | Damage]:
    """In archive order: runs (a, b) of samples to deliver, and damage, up to offset `upto`."""
    items = [(off, Damage(off, reason)) for off, reason in damage if off < upto]
    items += [(p.offset, Damage(p.offset, p.reason, p.key, 1)) for p in samples.problems if p.offset < upto]
    items.sort(key=lambda it: it[0])
    heads = samples.header[:emit]
    start = 0
    for off, d in items:
        cut = int(np.searchsorted(heads, off))
        if cut > start:
            yield start, cut
            start = cut
        yield d
    if emit > start:
        yield start, emit


def stream_samples(url: str, chunks: Iterator[memoryview], max_member_size: int
                   ) -> Iterator[tuple[_members.Samples, memoryview] | Damage]:
    """Scans a shard as it streams in. Yields (samples, buffer) with offsets into buffer,
    and Damage, in archive order. A sample is only yielded once the next one has begun (or
    the archive ended), so a chunk boundary never cuts it."""
    keep_freed_memory()  # buffers of chunk_size, made and freed chunk after chunk: ~2.5x faster
    pending = bytearray()  # archive bytes [base, base + len(pending)); replaced, never resized
    base = 0
    scan_from = 0          # archive offset where scanning goes on
    resyncing = False
    kept = Scanned()       # members (and damage) scanned but not yet delivered
    incoming: list = []
    waiting = 0            # bytes to gather before scanning again (grows when a scan stalls)
    chunks = iter(chunks)
    while True:
        chunk = next(chunks, None)
        final = chunk is None
        if not final:
            incoming.append(chunk)
            if sum(len(c) for c in incoming) < waiting:
                continue
        # A new buffer of what is still needed plus what came in (views handed out over
        # the old one stay valid).
        kept_headers = kept.arrays()[0]
        keep_from = int(kept_headers[0]) if len(kept_headers) else scan_from
        keep = memoryview(pending)[keep_from - base:]
        fresh = bytearray(len(keep) + sum(len(c) for c in incoming))
        fresh[:len(keep)] = keep
        at = len(keep)
        for c in incoming:
            fresh[at:at + len(c)] = c
            at += len(c)
        base += len(pending) - len(keep)
        pending, incoming = fresh, []
        scanned = scan_buffer(memoryview(pending)[scan_from - base:], scan_from, final, max_member_size, resyncing)
        stalled = scanned.consumed == scan_from and not scanned.names and not scanned.damage
        scan_from, resyncing = scanned.consumed, scanned.resyncing
        kept.extend(scanned)
        samples = kept.group()
        done = final or scanned.at_end
        # The last group of members may go on in the next chunk: it, and damage after its
        # start, wait for the next round.
        upto = float("inf") if done else _last_group_start(kept, scan_from)
        emit = int(np.searchsorted(samples.header, upto))
        data = memoryview(pending).toreadonly()
        for event in _events(samples, emit, kept.damage, upto):
            if isinstance(event, Damage):
                yield event
            else:
                yield _slice(samples, *event, base), data
        if done:
            return
        # keep the members (and damage) from `upto` on
        header, offset, size = kept.arrays()
        stay = header >= upto
        kept = Scanned(names=[n for n, s in zip(kept.names, stay.tolist()) if s], header=[header[stay]],
                       offset=[offset[stay]], size=[size[stay]], damage=[d for d in kept.damage if d[0] >= upto])
        # a scan that found nothing waits for as many bytes again as it holds: linear, not
        # quadratic, copying for members much larger than a chunk
        waiting = len(pending) if stalled else 0


def _last_group_start(kept: Scanned, default: int) -> int:
    """Archive offset of the first member of the last key among kept members."""
    header = kept.arrays()[0]
    last, start = None, default
    for i in range(len(kept.names) - 1, -1, -1):
        key, _ = _members.split_name(kept.names[i])
        if key is None:
            continue  # skipped names do not end a group
        if last is not None and key != last:
            break
        last, start = key, int(header[i])
    return start


def _slice(s: _members.Samples, a: int, b: int, base: int) -> _members.Samples:
    """Samples a..b, with data offsets made relative to the buffer start (base)."""
    m0, m1 = int(s.first[a]), int(s.first[b])
    return _members.Samples(
        keys=s.keys[a:b], exts=s.exts, member_ext=s.member_ext[m0:m1],
        offset=s.offset[m0:m1] - base, size=s.size[m0:m1],
        first=s.first[a:b + 1] - m0, header=s.header[a:b],
    )
