"""Shard URLs: brace patterns, globs, local paths, file://, fsspec schemes and pipe:."""
from __future__ import annotations

import fcntl
import glob
import gzip
import os
import re
import select
import subprocess
import time
from collections.abc import Iterable, Iterator

from ..errors import ShardError
from ._braces import expand_braces
from ._index import INDEX_SUFFIX

_PIECE = 64 << 10
PIPE_NOT_ALLOWED = "pipe: URLs run a shell command; pass allow_pipe=True to allow them"
_PIPE_SIZE = 1 << 20  # Linux's default pipe-max-size
_GZIP_MAGIC = b"\x1f\x8b"
_NOT_SHARDS = (INDEX_SUFFIX, ".part")  # and ShardWriter's unfinished shards
_EXIT_WAIT_S = 10  # for a command whose output has ended, to exit
_DRAIN_BYTES, _DRAIN_S = 4 << 20, 0.2  # what is left of a pipe read at close, and how long it may take


def scheme_of(url: str) -> str:
    if url.startswith("pipe:"):
        return "pipe"
    m = re.match(r"^([a-zA-Z][a-zA-Z0-9+.-]*)://", url)
    return m.group(1).lower() if m else "file"


def local_path(url: str) -> str | None:
    """The filesystem path of a local URL, else None."""
    s = scheme_of(url)
    if s != "file":
        return None
    return url[len("file://"):] if url.startswith("file://") else url


def is_compressed(url: str) -> bool:
    """A gzipped tar (`.tar.gz`, `.tgz`): read as a stream, like a remote shard."""
    return url.lower().endswith((".gz", ".tgz"))


def indexable_path(url: str) -> str | None:
    """The path of a shard that can be mapped and indexed (local, not compressed)."""
    return None if is_compressed(url) else local_path(url)


def expand_urls(urls: str | os.PathLike | Iterable[str | os.PathLike]) -> list[str]:
    """A flat list of shard URLs from a pattern, a "::"-joined string or a list of them.
    Local glob patterns (`*`, `?`, `[..]`) expand to the sorted matches. The index files
    fastloader writes beside local shards are left out, named or matched, so that a list
    made by a shell glob works on the second run as on the first."""
    if isinstance(urls, (str, os.PathLike)):
        items = str(urls).split("::")
    else:
        items = [str(u) for u in urls]
    out: list[str] = []
    for item in items:
        for url in expand_braces(item):
            path = local_path(url)
            if path is not None and glob.has_magic(path):
                # not the files fastloader writes beside shards: indexes, unfinished shards
                matches = sorted(m for m in glob.glob(path) if not m.endswith(_NOT_SHARDS))
                if not matches:
                    raise ShardError("no file matches this pattern", url=url)
                out.extend(matches)
            elif not (path is not None and path.endswith(INDEX_SUFFIX)):
                out.append(url)
    if not out:
        raise ValueError("no shard URLs given")
    return out


def open_stream(url: str, allow_pipe: bool = False):
    """A readable binary stream (readinto, close) for any shard URL: a local file, a pipe:
    command, another scheme through fsspec. Gunzipped when its bytes are gzip's, whatever
    its name, as the webdataset library does."""
    source = _Peeked(_open_raw(url, allow_pipe))
    try:
        gzipped = source.starts_with(_GZIP_MAGIC)
    except BaseException as e:  # the first read; a network or file error is named as a read's
        try:
            source.close()
        except ShardError:
            pass
        if isinstance(e, Exception):
            raise ShardError(f"read failed: {e}", url=url) from e
        raise
    return _Gunzipped(source) if gzipped else source


class _Peeked:
    """A raw stream whose first bytes can be looked at before they are read."""

    def __init__(self, raw):
        self.raw = raw
        self.head = b""

    def starts_with(self, prefix: bytes) -> bool:
        while len(self.head) < len(prefix):
            buf = bytearray(len(prefix) - len(self.head))
            got = self.raw.readinto(buf)
            if not got:
                break
            self.head += buf[:got]
        return self.head == prefix

    def readinto(self, b) -> int:
        if self.head:
            n = min(len(b), len(self.head))
            b[:n] = self.head[:n]
            self.head = self.head[n:]
            return n
        return self.raw.readinto(b)

    def read(self, n: int = -1) -> bytes:  # what gzip reads through
        if n is None or n < 0:
            chunks = []
            while chunk := self.read(_PIECE):
                chunks.append(chunk)
            return b"".join(chunks)
        buf = bytearray(n)
        return bytes(buf[:self.readinto(buf) or 0])

    def close(self) -> None:
        self.raw.close()


class _Gunzipped:
    """The gunzipped bytes of a source; closing it closes the source too (GzipFile alone
    leaves a file object it was given open)."""

    def __init__(self, source: _Peeked):
        self.source = source
        self.gz = gzip.GzipFile(fileobj=source, mode="rb")

    def readinto(self, b) -> int:
        return self.gz.readinto(b)

    def close(self) -> None:
        try:
            self.gz.close()
        finally:
            self.source.close()  # a pipe's exit status is checked here


def _open_raw(url: str, allow_pipe: bool):
    s = scheme_of(url)
    if s == "pipe":
        if not allow_pipe:
            raise ShardError(PIPE_NOT_ALLOWED, url=url)
        return _PipeStream(url[len("pipe:"):], url)
    if s == "file":
        try:
            return open(local_path(url), "rb")
        except OSError as e:
            raise ShardError(f"cannot open: {e.strerror or e}", url=url) from e
    try:
        import fsspec
    except ImportError:
        raise ShardError(f"reading {s}:// URLs needs fsspec (pip install fsspec)", url=url) from None
    try:
        return fsspec.open(url, "rb").open()
    except Exception as e:  # the protocol's own error types vary
        raise ShardError(f"cannot open: {e}", url=url) from e


class _PipeStream:
    """stdout of a shell command; a non-zero exit status is an error at close."""

    def __init__(self, command: str, url: str):
        self.url = url
        self.proc = subprocess.Popen(command, shell=True, stdout=subprocess.PIPE, bufsize=0)
        try:  # a larger pipe: the command and the reader take turns 16x less often
            fcntl.fcntl(self.proc.stdout.fileno(), fcntl.F_SETPIPE_SZ, _PIPE_SIZE)
        except (OSError, AttributeError):  # over /proc/sys/fs/pipe-max-size, or not Linux
            pass
        self.ended = False  # its output was read to the end

    def readinto(self, b) -> int:
        got = self.proc.stdout.readinto(b)
        self.ended = self.ended or (got == 0 and len(b) > 0)
        return got

    def close(self) -> None:
        # Output read to the end: the command is exiting, and its status counts (it may
        # still be running for a moment after closing its output). Stopped earlier: the
        # rest is not wanted, and the command is killed.
        if not self.ended:
            self._drain()
        killed = False
        if self.ended:
            try:
                self.proc.wait(timeout=_EXIT_WAIT_S)
            except subprocess.TimeoutExpired:
                pass
        if self.proc.poll() is None:
            self.proc.kill()
            killed = True
        self.proc.stdout.close()
        status = self.proc.wait()
        if status != 0 and not killed:
            raise ShardError(f"pipe command exited with status {status}", url=self.url)

    def _drain(self) -> None:
        """Reads what is left while it comes at once, up to a limit: a reader that stopped
        at the archive's end marker leaves only its padding, and the command's exit status
        is then read rather than killed."""
        fd = self.proc.stdout.fileno()
        ready = select.poll()  # (select.select cannot take descriptors past 1023)
        ready.register(fd, select.POLLIN)
        left, deadline = _DRAIN_BYTES, time.monotonic() + _DRAIN_S
        while left > 0:
            wait = deadline - time.monotonic()
            if wait <= 0 or not ready.poll(wait * 1000):
                return
            got = os.read(fd, min(left, _PIECE))
            if not got:
                self.ended = True
                return
            left -= len(got)


def read_chunks(stream, chunk_size: int) -> Iterator[memoryview]:
    """Fills and yields a buffer of up to chunk_size bytes at a time (short only at EOF).
    Reads go in pieces of at most 64 KiB, and a read error comes after the bytes read
    before it (a damaged gzip stream still gives what it held up to the damage)."""
    while True:
        buf = bytearray(chunk_size)
        view = memoryview(buf)
        n = 0
        try:
            while n < chunk_size:
                got = stream.readinto(view[n:min(chunk_size, n + _PIECE)])
                if not got:
                    break
                n += got
        except Exception:
            if n:
                yield view[:n]
            raise
        if n == 0:
            return
        yield view[:n]
        if n < chunk_size:
            return
