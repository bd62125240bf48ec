"""Member names to samples, by the webdataset convention.

A sample is a run of consecutive members sharing a key: the path up to the first dot of
the file name; the rest (lowercased) is the extension under which its bytes appear.
Names without an extension and `__meta__` entries are skipped, as webdataset does.
"""
from __future__ import annotations

import re
from dataclasses import dataclass, field
from typing import Callable

import numpy as np

from .. import _C, _origins
from . import _local
from .._heap import keep_freed_memory
from .._origins import read_range

# A span read may take this many times the tar records of the members it is for: a shard
# read in order by up to 4 loader partitions (ranks x workers), each taking every 4th sample.
_SPAN_SLACK = 4

_NO_RANGE = np.zeros(0, np.int64)  # keys given as a list: no ranges into a blob
_META = re.compile(r"__[^/]*__($|/)")
_KEY_EXT = re.compile(r"^((?:.*/|)[^.]+)[.]([^/]*)$")  # webdataset's base_plus_ext


def split_name(name: str) -> tuple[str | None, str | None]:
    """("dir/abc", "seg.png") for "dir/abc.seg.PNG"'s key and extension; (None, None) to skip."""
    if _META.match(name):
        return None, None
    slash = name.rfind("/") + 1
    dot = name.find(".", slash)
    if dot > slash:  # the usual case, what webdataset's pattern gives too
        return name[:dot], name[dot + 1:].lower()
    m = _KEY_EXT.match(name)  # e.g. "dir/.x.jpg": key "dir/", as webdataset splits it
    return (m.group(1), m.group(2).lower()) if m else (None, None)


@dataclass
class Problem:
    """A sample that cannot be delivered as it is (duplicate member, missing extension)."""

    offset: int
    key: str
    reason: str


class KeyTable:
    """Sample keys as one UTF-8 blob and end offsets: a few bytes per key, not a Python
    str each (every worker holds the index of every local shard)."""

    def __init__(self, blob: bytes, ends: np.ndarray):
        self.blob = blob
        self.ends = ends

    @classmethod
    def from_list(cls, keys: list[str]) -> KeyTable:
        raw = [k.encode("utf-8", "surrogateescape") for k in keys]
        return cls(b"".join(raw), np.cumsum([len(k) for k in raw], dtype=np.int64))

    def __len__(self) -> int:
        return len(self.ends)

    def take(self, idx: list[int]) -> list[str]:
        blob, ends = self.blob, self.ends
        i = np.asarray(idx, dtype=np.int64)
        starts = np.where(i > 0, ends[i - 1], 0)
        return [blob[a:b].decode("utf-8", "surrogateescape") for a, b in zip(starts.tolist(), ends[i].tolist())]

    def __getitem__(self, i: int) -> str:
        return self.take([i])[0]

    def __iter__(self):
        return iter(self.take(list(range(len(self)))))


@dataclass
class Samples:
    """Members grouped into samples: sample i has members first[i]..first[i+1]."""

    keys: list[str] | KeyTable
    exts: list[str]              # distinct extensions; member_ext indexes this list
    member_ext: np.ndarray       # int32
    offset: np.ndarray           # int64 data offset of each member
    size: np.ndarray             # int64 data size of each member
    first: np.ndarray            # int64, len(keys) + 1
    header: np.ndarray           # int64 offset of each sample's first header
    problems: list[Problem] = field(default_factory=list)

    def __len__(self) -> int:
        return len(self.keys)


def group(names: list[str], header: np.ndarray, offset: np.ndarray, size: np.ndarray) -> Samples:
    """Groups scanned members into samples; a sample with a duplicate extension is left
    out and reported in `problems`. The pass is compiled (`_C.group_members`); names it
    does not split itself (non-ASCII, dotfiles, no extension...) come back to `split_name`."""
    keys, exts, member_ext, kept, first, start_member, duplicates = _C.group_members(names, split_name)
    idx = np.frombuffer(kept, dtype=np.int64)
    header = np.asarray(header, dtype=np.int64)
    return Samples(
        keys=keys,
        exts=exts,
        member_ext=np.frombuffer(member_ext, dtype=np.int32).copy(),
        offset=np.asarray(offset, dtype=np.int64)[idx],
        size=np.asarray(size, dtype=np.int64)[idx],
        first=np.frombuffer(first, dtype=np.int64).copy(),
        header=header[np.frombuffer(start_member, dtype=np.int64)],
        problems=[Problem(int(header[i]), key, _duplicate(names[i])) for i, key in duplicates],
    )


def _duplicate(name: str) -> str:
    if name.lower().endswith((".__key__", ".__url__")):
        return f"member {name!r} would replace the sample's own {name[name.rindex('.') + 1:].lower()}"
    return f"duplicate member {name!r} in one sample"


def _worth_a_span(off: np.ndarray, end: np.ndarray) -> tuple[int, int] | None:
    """(lo, hi) of the shard bytes to read at once for members [off, end), or None.

    Small members close together (a shard read in order) come from one pread of their
    span: that costs less than a process's first touch of a mapping (a page fault per 64
    KiB, each page mapped: 256 MB took 30-42 ms so, 23 ms by pread), and the samples are
    copied out of a buffer still in cache. Not for large members (a pread each, noted for
    `_origins`) nor members far apart (a shard shared by many loader partitions)."""
    if not len(off):
        return None
    sizes = end - off
    if int(sizes.max()) >= _origins.MIN_SIZE:
        return None
    lo, hi = int(off.min()), int(end.max())
    records = int((512 + (sizes + 511) // 512 * 512).sum())  # each member's header and padded data
    return (lo, hi) if hi - lo <= max(_SPAN_SLACK * records, 1 << 16) else None


def large_samples(samples: Samples) -> bool:
    """Whether a shard's samples average _origins.MIN_SIZE bytes or more."""
    return int(samples.size.sum()) >= _origins.MIN_SIZE * max(len(samples), 1)


class SampleMaker:
    """Builds sample dicts (`__key__`, `__url__`, each member's bytes under its
    extension) from grouped samples and the buffer their offsets index."""

    def __init__(self, samples: Samples, data, url: str, views: bool = False,
                 open_reader: Callable[[], _local.PreadShard] | None = None):
        self.samples = samples
        self.url = url
        # beside a mapping, for runs of small members close together: opened when first needed
        self.open_reader = open_reader
        self.reader: _local.PreadShard | None = None
        # views: memoryview slices of data (no copy), built here; else bytes, the dicts
        # built in C++: read with a PreadShard's pread, or copied out of a buffer in
        # memory (an mmap, bytes, a memoryview)
        self.data = memoryview(data) if views and not isinstance(data, memoryview) else data
        self.compiled = not views
        self.ext = [samples.exts[e] for e in range(len(samples.exts))]
        self.end = samples.offset + samples.size

    def make_many(self, idx: np.ndarray) -> tuple[list[dict], list[int]]:
        """Samples idx (in that order) and the member bytes of each, gathered at once."""
        s = self.samples
        lo = s.first[idx]
        counts = s.first[idx + 1] - lo
        total = int(counts.sum())
        # the member numbers of every sample, concatenated
        starts = np.cumsum(counts) - counts
        members = np.arange(total) + np.repeat(lo - starts, counts)
        nbytes = np.add.reduceat(s.size[members], starts).tolist() if total else [0] * len(idx)
        url, data, exts = self.url, self.data, self.ext
        if not isinstance(data, memoryview) and total and int(s.size[members].max()) >= _origins.MIN_SIZE:
            keep_freed_memory()  # large bytes objects, made and freed batch after batch
        if self.compiled:
            i = np.asarray(idx, dtype=np.int64)
            if isinstance(s.keys, KeyTable):
                keys, key_ends = s.keys.blob, s.keys.ends[i]
                key_starts = np.where(i > 0, s.keys.ends[i - 1], 0)
            else:
                keys, key_starts, key_ends = [s.keys[k] for k in i.tolist()], _NO_RANGE, _NO_RANGE
            where = (keys, key_starts, key_ends, counts, s.member_ext[members], s.offset[members],
                     self.end[members], exts, url)
            pread = isinstance(data, _local.PreadShard)
            span = _worth_a_span(where[5], where[6]) if pread or self.open_reader is not None else None
            if span is not None:
                return self._span_read(data if pread else self._reader(), where, *span), nbytes
            return (self._read_many(data, where) if pread else _C.build_samples(data, *where)), nbytes
        ext = s.member_ext[members].tolist()
        off, end = s.offset[members].tolist(), self.end[members].tolist()
        wanted = idx.tolist()
        keys = s.keys.take(wanted) if isinstance(s.keys, KeyTable) else [s.keys[i] for i in wanted]
        out = []
        m = 0
        for key, c in zip(keys, counts.tolist()):
            sample = {"__key__": key, "__url__": url}
            for j in range(m, m + c):
                sample[exts[ext[j]]] = data[off[j]:end[j]]
            m += c
            out.append(sample)
        return out, nbytes

    def _reader(self) -> _local.PreadShard:
        if self.reader is None:
            self.reader = self.open_reader()
        return self.reader

    @staticmethod
    def _span_read(shard: _local.PreadShard, where: tuple, lo: int, hi: int) -> list[dict]:
        """The samples' members out of one pread of the shard's bytes [lo, hi)."""
        off, end = where[5], where[6]
        data = read_range(shard.fd, lo, hi - lo)
        if len(data) != hi - lo:
            raise shard.cut_short(lo + len(data))
        return _C.build_samples(data, *where[:5], off - lo, end - lo, *where[7:])

    @staticmethod
    def _read_many(shard: _local.PreadShard, where: tuple) -> list[dict]:
        """The samples' members read with pread; large ones noted for `_origins`."""
        note = shard.local and _origins.enabled()
        noted: list = []
        try:
            out = _C.build_samples_pread(shard.fd, *where, _origins.MIN_SIZE if note else -1, noted)
        except EOFError as e:
            raise shard.cut_short(e.args[0]) from None
        for k in range(0, len(noted), 2):
            _origins.note(noted[k], shard, noted[k + 1])
        return out
