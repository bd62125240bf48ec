"""Writing WebDataset shards: `TarWriter` (one tar) and `ShardWriter` (a numbered series)."""
from __future__ import annotations

import io
import json
import os
import time
from typing import Any, BinaryIO

import numpy as np
import torch

from ._members import split_name

BLOCK = 512


def encode_value(key: str, ext: str, value: Any) -> bytes:
    """A member's bytes: bytes as they are, str as UTF-8, numbers as text, dict/list as
    JSON, arrays and tensors as .npy (an extension ending in "npy", any case)."""
    if isinstance(value, (bytes, bytearray, memoryview)):
        return bytes(value)
    if isinstance(value, str):
        return value.encode("utf-8")
    if isinstance(value, (bool, int, float, np.bool_, np.integer, np.floating)):
        return str(value).encode()  # np.float32(0.1) as "0.1", as webdataset writes it
    if isinstance(value, (dict, list, tuple)):
        return json.dumps(value).encode("utf-8")
    if isinstance(value, (np.ndarray, torch.Tensor)) and ext.lower().endswith("npy"):
        buf = io.BytesIO()
        np.save(buf, value.numpy() if isinstance(value, torch.Tensor) else value, allow_pickle=False)
        return buf.getvalue()
    raise TypeError(f"sample {key!r}: cannot write a {type(value).__name__} as .{ext} "
                    "(give bytes, str, a number, a dict/list, or an array under an .npy extension)")


def _octal(value: int, width: int) -> bytes:
    return f"{value:0{width - 1}o}".encode() + b"\0"


def _header(name: bytes, size: int, mtime: int, typeflag: bytes = b"0") -> bytes:
    prefix = b""
    if len(name) > 100:
        cut = name.rfind(b"/", 0, 156)
        if 0 < cut and len(name) - cut - 1 <= 100:
            prefix, name = name[:cut], name[cut + 1:]
        else:
            raise ValueError("name needs a pax header")
    h = bytearray(BLOCK)
    h[0:len(name)] = name
    h[100:108] = _octal(0o444, 8)
    h[108:116] = _octal(0, 8)
    h[116:124] = _octal(0, 8)
    h[124:136] = _octal(size, 12) if size < 8**11 else b"\x80" + size.to_bytes(11, "big")
    h[136:148] = _octal(mtime, 12)
    h[156:157] = typeflag
    h[257:263] = b"ustar\0"
    h[263:265] = b"00"
    h[345:345 + len(prefix)] = prefix
    h[148:156] = b" " * 8
    h[148:156] = f"{sum(h):06o}".encode() + b"\0 "
    return bytes(h)


def _pax_record(key: str, value: bytes) -> bytes:
    body = f" {key}=".encode() + value + b"\n"
    n = len(body) + 1
    while len(str(n)) + len(body) != n:
        n = len(str(n)) + len(body)
    return str(n).encode() + body


def member_bytes(name: str, data: bytes, mtime: int) -> bytes:
    """The tar blocks of one regular-file member (a pax header first for long names)."""
    raw = name.encode("utf-8", "surrogateescape")
    out = []
    try:
        header = _header(raw, len(data), mtime)
    except ValueError:
        pax = _pax_record("path", raw)
        out += [_header(b"././@PaxHeader", len(pax), mtime, b"x"), pax, b"\0" * (-len(pax) % BLOCK)]
        header = _header(raw[-100:].lstrip(b"/"), len(data), mtime)
    out += [header, data, b"\0" * (-len(data) % BLOCK)]
    return b"".join(out)


class TarWriter:
    """Writes samples (dicts with `__key__` and one value per extension) to one tar."""

    def __init__(self, fileobj: BinaryIO, mtime: int | None = None) -> None:
        self.fileobj = fileobj
        self.mtime = int(time.time()) if mtime is None else int(mtime)
        self.count = 0
        self.size = 0

    def encode(self, sample: dict[str, Any]) -> bytes:
        key = sample.get("__key__")
        if not isinstance(key, str) or not key:
            raise ValueError(f"a sample needs a non-empty string __key__, got {key!r}")
        if "\0" in key:
            raise ValueError(f"sample key {key!r} has a NUL character: a tar member name ends at one")
        if "." in key.rsplit("/", 1)[-1]:
            raise ValueError(f"sample key {key!r} has a dot in its file name part: readers would split it")
        parts = []
        seen: set[str] = set()
        for ext, value in sample.items():
            if ext.startswith("_"):  # `__key__`, and metadata webdataset's writer leaves out too
                continue
            if ext.lower() in seen:
                raise ValueError(f"sample {key!r}: extensions {ext!r} and another differ only in case: readers "
                                 "lowercase them, and would find the sample's member twice")
            seen.add(ext.lower())
            if not ext or "/" in ext or "\0" in ext:
                raise ValueError(f"sample {key!r}: bad extension {ext!r}")
            name = f"{key}.{ext}"
            read_as = split_name(name)[0]
            if read_as != key:
                how = "skip it as metadata" if read_as is None else f"read it as key {read_as!r}"
                raise ValueError(f"sample key {key!r}: readers would {how} ({name!r})")
            parts.append(member_bytes(name, encode_value(key, ext, value), self.mtime))
        if not parts:
            raise ValueError(f"sample {key!r} has no data members")
        return b"".join(parts)

    def write(self, sample: dict[str, Any]) -> int:
        """Writes one sample; returns the bytes written."""
        return self.write_encoded(self.encode(sample))

    def write_encoded(self, blob: bytes) -> int:
        self.fileobj.write(blob)
        self.count += 1
        self.size += len(blob)
        return len(blob)

    def close(self) -> None:
        self.fileobj.write(b"\0" * (2 * BLOCK))  # end-of-archive marker
        self.fileobj.close()

    def __enter__(self) -> TarWriter:
        return self

    def __exit__(self, *exc) -> None:
        self.close()


class ShardWriter:
    """Writes samples to a series of shards named by `pattern % shard_number`
    (e.g. "out/train-%06d.tar"), starting a new one after `maxcount` samples or before
    `maxsize` bytes would be passed. A shard appears under its name once complete."""

    def __init__(self, pattern: str, maxcount: int = 100_000, maxsize: float = 3e9, start_shard: int = 0,
                 mtime: int | None = None) -> None:
        try:
            pattern % 0
        except TypeError:
            raise ValueError(f"pattern must hold a %-format for the shard number, like 'train-%06d.tar'; "
                             f"got {pattern!r}") from None
        if maxcount < 1 or maxsize < 1:
            raise ValueError("maxcount and maxsize must be positive")
        self.pattern = pattern
        self.maxcount = maxcount
        self.maxsize = maxsize
        self.mtime = mtime
        self.shard = start_shard
        self.shards: list[str] = []  # completed shard paths
        self.total = 0
        self._tar: TarWriter | None = None
        self._path = ""

    def _next(self) -> None:
        self._finish()
        self._path = self.pattern % self.shard
        self.shard += 1
        os.makedirs(os.path.dirname(self._path) or ".", exist_ok=True)
        self._tar = TarWriter(open(self._path + ".part", "wb"), self.mtime)

    def _finish(self) -> None:
        if self._tar is not None:
            self._tar.close()
            os.replace(self._path + ".part", self._path)
            self.shards.append(self._path)
            self._tar = None

    def write(self, sample: dict[str, Any]) -> None:
        if self._tar is None:
            self._next()
        blob = self._tar.encode(sample)
        if self._tar.count and (self._tar.count >= self.maxcount or self._tar.size + len(blob) > self.maxsize):
            self._next()
        self._tar.write_encoded(blob)
        self.total += 1

    def close(self) -> None:
        self._finish()

    def __enter__(self) -> ShardWriter:
        return self

    def __exit__(self, exc_type, *exc) -> None:
        if exc_type is not None and self._tar is not None:  # keep only complete shards
            self._tar.fileobj.close()
            os.unlink(self._path + ".part")
            self._tar = None
            return
        self.close()
