"""Per-shard index of samples (member offsets), built by scanning once and cached.

The cache file sits beside the shard (`<shard>.fidx`) or, where that directory is not
writable, in a cache directory; it records the shard's size, times and inode (and the
member size limit) and is rebuilt when they change. With it, local shards are random-access.
"""
from __future__ import annotations

import hashlib
import io
import json
import mmap
import os
import tempfile
from dataclasses import dataclass

import numpy as np

from .._cache import cache_root
from . import _members, _scanning, _tar

INDEX_VERSION = 2
INDEX_SUFFIX = ".fidx"


def default_cache_dir() -> str:
    return os.path.join(cache_root(), "index")


@dataclass
class ShardIndex:
    """The samples of one local shard, and the damage found while scanning it."""

    path: str
    samples: _members.Samples
    damage: list[tuple[int, str]]  # (byte offset, reason) of each damaged part, in order

    def __len__(self) -> int:
        return len(self.samples)


def open_mmap(path: str) -> mmap.mmap | bytes:
    with open(path, "rb") as f:
        if os.fstat(f.fileno()).st_size == 0:
            return b""
        return mmap.mmap(f.fileno(), 0, access=mmap.ACCESS_READ)


def build(path: str, data=None, max_member_size: int = _tar.DEFAULT_MAX_MEMBER_SIZE) -> ShardIndex:
    """Scans the shard at `path` (or its bytes `data`) into an index."""
    if data is None:
        data = open_mmap(path)
    scanned = _scanning.scan_buffer(data, 0, True, max_member_size)
    samples = scanned.group()
    samples.keys = _members.KeyTable.from_list(samples.keys)
    return ShardIndex(path, samples, scanned.damage)


def _cache_paths(path: str, cache_dir: str | None) -> list[str]:
    absolute = os.path.abspath(path)
    digest = hashlib.sha1(absolute.encode("utf-8", "surrogateescape")).hexdigest()[:20]
    in_cache = os.path.join(cache_dir or default_cache_dir(), f"{os.path.basename(path)}-{digest}{INDEX_SUFFIX}")
    return [in_cache] if cache_dir else [absolute + INDEX_SUFFIX, in_cache]


def _stamp(path: str, max_member_size: int) -> np.ndarray:
    """What the index was built from: the file (size, times, inode) and the member limit
    (a member over it was recorded as damage)."""
    st = os.stat(path)
    return np.asarray([INDEX_VERSION, st.st_size, st.st_mtime_ns, st.st_ctime_ns, st.st_ino, max_member_size],
                      dtype=np.int64)


def _save(index: ShardIndex, stamp: np.ndarray, target: str) -> bool:
    s = index.samples
    exts = [e.encode("utf-8", "surrogateescape") for e in s.exts]
    arrays = dict(
        stamp=stamp,
        keys=np.frombuffer(s.keys.blob, dtype=np.uint8),
        key_ends=s.keys.ends,
        exts=np.frombuffer(b"".join(exts), dtype=np.uint8),
        ext_len=np.asarray([len(e) for e in exts], dtype=np.int64),
        member_ext=s.member_ext, offset=s.offset, size=s.size, first=s.first, header=s.header,
        damage=np.frombuffer(json.dumps(index.damage).encode(), dtype=np.uint8),
        problems=np.frombuffer(json.dumps([[p.offset, p.key, p.reason] for p in s.problems]).encode(
            "utf-8", "surrogateescape"), dtype=np.uint8),
    )
    tmp = None
    try:
        os.makedirs(os.path.dirname(target) or ".", exist_ok=True)
        fd, tmp = tempfile.mkstemp(dir=os.path.dirname(target) or ".", prefix=".fidx-")
        with os.fdopen(fd, "wb") as f:
            np.savez(f, **arrays)
        os.replace(tmp, target)  # readers never see a half-written index
        return True
    except OSError:
        if tmp is not None:
            try:
                os.unlink(tmp)
            except OSError:
                pass
        return False


def _split(blob: np.ndarray, lengths: np.ndarray) -> list[str]:
    raw = blob.tobytes()
    ends = np.cumsum(lengths).tolist()
    starts = [0] + ends[:-1]
    return [raw[a:b].decode("utf-8", "surrogateescape") for a, b in zip(starts, ends)]


def _load(path: str, target: str, stamp: np.ndarray) -> ShardIndex | None:
    try:
        with open(target, "rb") as f:
            z = np.load(io.BytesIO(f.read()), allow_pickle=False)
            if not np.array_equal(z["stamp"], stamp):
                return None
            samples = _members.Samples(
                keys=_members.KeyTable(z["keys"].tobytes(), z["key_ends"]), exts=_split(z["exts"], z["ext_len"]),
                member_ext=z["member_ext"], offset=z["offset"], size=z["size"], first=z["first"],
                header=z["header"],
                problems=[_members.Problem(o, k, r) for o, k, r in json.loads(
                    z["problems"].tobytes().decode("utf-8", "surrogateescape"))],
            )
            damage = [(int(o), str(r)) for o, r in json.loads(z["damage"].tobytes().decode())]
    except Exception:  # missing, unreadable, torn or not an index (numpy's errors vary): rebuild
        return None
    return ShardIndex(path, samples, damage)


def load_or_build(path: str, cache_dir: str | None | bool = None,
                  max_member_size: int = _tar.DEFAULT_MAX_MEMBER_SIZE, data=None) -> ShardIndex:
    """The shard's cached index, or a fresh scan (then cached). `cache_dir=False`: no cache."""
    if cache_dir is False:
        return build(path, data, max_member_size)
    stamp = _stamp(path, max_member_size)
    targets = _cache_paths(path, cache_dir or None)
    for target in targets:
        index = _load(path, target, stamp)
        if index is not None:
            return index
    index = build(path, data, max_member_size)
    for target in targets:
        if _save(index, stamp, target):
            break
    return index
