"""Shared-memory transport of batches from process workers to the main process.

Each worker owns an arena of memfd segments. Tensors of a batch live in (or are copied
once into) the arena, as do large `bytes` objects, unless read from a local file (shard
members): those go as (file, offset, size) and the main process reads them itself
(`_origins`). The batch itself is pickled with the tensors replaced by
(segment, dtype, shape, stride, offset) references, so only a few hundred bytes cross
the socket. The main process maps each segment once and builds the tensors as views of
it. When every tensor of a batch is gone, the main process hands the batch's segments
back to the worker, which reuses them: no per-batch shm_open/mmap/unlink, no fd passing
after a segment's first use, and memfds vanish with the processes (nothing can leak).
memfd pages are not capped by /dev/shm's size (the usual cause of "bus error" in
containers), and a batch larger than the memory available is refused with a clear error.

Workers end with each epoch (unless persistent_workers). Their segments, once no tensor
views them, are kept (up to SPARE_CAP bytes) for the next forked workers: a first batch
written into pages that already exist skips the kernel's allocation and zeroing of fresh
ones, which on a VM costs ~4 us a page (~10 ms for a 10 MB batch).
"""
from __future__ import annotations

import io
import mmap
import os
import pickle
import threading
import weakref
from collections import OrderedDict
from dataclasses import dataclass, field

import numpy as np
import torch

from . import _C, _origins
from .errors import ShardError
from ._heap import keep_freed_memory
from ._storage import storage_users

_ALIGN = 64
_MIN_SEGMENT = 1 << 20
_POPULATE_MIN = 256 << 10
_BYTES_IN_ARENA = _origins.MIN_SIZE
_FILES_PER_WORKER = 16  # fds of local files a worker's main side holds at most
_MADV_POPULATE_READ = getattr(mmap, "MADV_POPULATE_READ", 22)  # Linux 5.14
_MADV_POPULATE_WRITE = getattr(mmap, "MADV_POPULATE_WRITE", 23)


def _advise(mm: mmap.mmap, advice: int, start: int, nbytes: int, minimum: int) -> None:
    lo = start // mmap.PAGESIZE * mmap.PAGESIZE
    hi = _round_up(start + nbytes, mmap.PAGESIZE)
    if hi - lo >= minimum:
        try:
            mm.madvise(advice, lo, hi - lo)
        except OSError:  # kernel < 5.14: page faults do the same, slower
            pass


SPARE_CAP = int(os.environ.get("FASTLOADER_KEEP_SHM_MB", "256")) << 20
_spares: list[tuple[int, int]] = []  # (fd, size) of segments no process writes any more
_spares_lock = threading.Lock()
_all_main_segments: weakref.WeakSet = weakref.WeakSet()


def keep_spare(fd: int, size: int) -> None:
    """Keeps a retired segment for the next workers, or closes it when the cap is reached."""
    with _spares_lock:
        if sum(n for _, n in _spares) + size <= SPARE_CAP:
            _spares.append((fd, size))
            return
    os.close(fd)


def deal_spares(num_workers: int) -> list[list[tuple[int, int]]]:
    """Takes every kept segment and deals them out, largest first, one list per worker."""
    with _spares_lock:
        taken = sorted(_spares, key=lambda s: -s[1])
        _spares.clear()
    return [taken[i::num_workers] for i in range(num_workers)]


def _before_fork() -> None:
    # A forked process may keep viewing any batch alive now (through the dataset, say):
    # those segments must never be written again, so they are not kept for reuse.
    for segments in list(_all_main_segments):
        segments.taint_leased()


def _after_fork_in_child() -> None:
    # The segments kept and received belong to the parent: a child that reused them (a
    # DataLoader of its own) would write into the parent's batches. Its copies of the
    # fds are closed; the locks are new (another thread may have held them at the fork).
    global _spares_lock
    _spares_lock = threading.Lock()
    for fd, _ in _spares:
        os.close(fd)
    _spares.clear()
    for segments in list(_all_main_segments):
        segments.forget_in_child()


os.register_at_fork(before=_before_fork, after_in_child=_after_fork_in_child)


class SharedMemoryError(RuntimeError):
    """A worker could not get shared memory for a batch."""


def _round_up(n: int, to: int) -> int:
    return (n + to - 1) // to * to


def _is_plain_cpu_tensor(obj) -> bool:
    return (
        type(obj) is torch.Tensor
        and obj.device.type == "cpu"
        and obj.layout == torch.strided
        and not obj.requires_grad
        and not obj.is_quantized
        and not obj.is_nested
    )


def _span(t: torch.Tensor) -> int:
    """Elements of storage t reaches from its offset (torch strides are never negative)."""
    if t.numel() == 0:
        return 0
    return 1 + sum((n - 1) * st for n, st in zip(t.shape, t.stride()))


def _available_bytes() -> int:
    with open("/proc/meminfo") as f:
        for line in f:
            if line.startswith("MemAvailable:"):
                return int(line.split()[1]) * 1024
    return 1 << 62


@dataclass
class _Segment:
    id: int
    fd: int
    size: int
    mm: mmap.mmap
    bytes: torch.Tensor  # uint8 view of the whole segment
    used: int = 0
    mapped: int = 0  # bytes from the start this process has mapped (pages stay mapped)
    busy: bool = False
    sent: bool = False  # the fd already went to the main process


@dataclass
class WorkerArena:
    """Worker side: allocates tensors in shared segments and pickles batches over them."""

    worker_id: int
    segments: dict[int, _Segment] = field(default_factory=dict)
    _touched: list[int] = field(default_factory=list)
    _with_tensors: set[int] = field(default_factory=set)  # segments of this batch holding tensors
    _next_id: int = 0
    # Files whose fd the main process holds (`_origins`), by source; their ids are
    # negative, beside the segments' (an fd message may carry both).
    _files: OrderedDict = field(default_factory=OrderedDict)
    _new_files: list = field(default_factory=list)  # (source, id) first sent with this batch
    _closed_files: list[int] = field(default_factory=list)  # for the main process to close

    def adopt(self, spares: list[tuple[int, int]]) -> None:
        """Takes over segments a previous worker left (inherited fds), as free ones."""
        for fd, size in spares:
            try:
                self._add_segment(fd, size)
            except (OSError, ValueError):  # unmappable: let it go
                os.close(fd)

    # -- allocation --------------------------------------------------------------------
    def _add_segment(self, fd: int, size: int) -> _Segment:
        mm = mmap.mmap(fd, size)
        seg = _Segment(self._next_id, fd, size, mm, torch.frombuffer(mm, dtype=torch.uint8))
        self.segments[seg.id] = seg
        self._next_id += 1
        return seg

    def _new_segment(self, nbytes: int) -> _Segment:
        size = _round_up(max(nbytes + nbytes // 16, _MIN_SEGMENT), mmap.PAGESIZE)
        if size > _MIN_SEGMENT and size > _available_bytes():
            self._fail(nbytes, "more than the memory available")
        fd = -1
        try:
            fd = os.memfd_create(f"fastloader-w{self.worker_id}", os.MFD_CLOEXEC)
            os.ftruncate(fd, size)
            return self._add_segment(fd, size)
        except OSError as e:
            if fd >= 0:
                os.close(fd)
            self._fail(nbytes, e.strerror)

    def _fail(self, size: int, why: str):
        raise SharedMemoryError(
            f"DataLoader worker {self.worker_id}: could not reserve {size / 2**20:.1f} MiB of "
            f"shared memory for a batch ({why}). Free memory, or lower batch_size / "
            "prefetch_factor / num_workers."
        )

    def _room_in(self, seg: _Segment, nbytes: int) -> int | None:
        start = _round_up(seg.used, _ALIGN)
        return start if start + nbytes <= seg.size else None

    def alloc(self, nbytes: int) -> tuple[_Segment, int]:
        """Reserves nbytes in a segment of the current batch; returns (segment, offset)."""
        for sid in reversed(self._touched):
            seg = self.segments[sid]
            start = self._room_in(seg, nbytes)
            if start is not None:
                seg.used = start + nbytes
                return seg, start
        free = [s for s in self.segments.values() if self._reusable(s) and s.size >= nbytes]
        if free:
            seg = min(free, key=lambda s: s.size)
        else:  # grow with the batch: a batch of many tensors takes few segments
            taken = sum(self.segments[sid].size for sid in self._touched)
            seg = self._new_segment(max(nbytes, taken))
        seg.busy, seg.used = True, nbytes
        self._touched.append(seg.id)
        return seg, 0

    @staticmethod
    def _populate(seg: _Segment, start: int, nbytes: int, minimum: int = _POPULATE_MIN) -> None:
        """Maps the pages about to be written in one call, not one fault per page."""
        _advise(seg.mm, _MADV_POPULATE_WRITE, start, nbytes, minimum)

    def reserve(self, size, dtype: torch.dtype) -> tuple[torch.Tensor, _Segment, int]:
        """An uninitialised contiguous tensor in the arena, its segment and byte offset. Its
        pages are not mapped here: write them through the segment's fd, or populate them."""
        numel = 1
        for s in size:
            numel *= s
        itemsize = dtype.itemsize
        seg, offset = self.alloc(max(numel, 1) * itemsize)
        self._with_tensors.add(seg.id)
        start = offset // itemsize
        return seg.bytes.view(dtype)[start : start + numel].view(size), seg, offset

    def empty(self, size, dtype: torch.dtype) -> torch.Tensor:
        """An uninitialised contiguous tensor living in the arena, its pages mapped."""
        t, seg, offset = self.reserve(size, dtype)
        self._populate(seg, offset, t.nbytes)
        return t

    def stack(self, batch: list, fast: bool) -> torch.Tensor:
        """torch.stack(batch) into the arena. With fast, where `_C.stack_plain`'s case holds,
        the items are written through the segment's fd by one pwritev: none of its pages is
        mapped here (no faults, nothing counted twice in RSS). Else mapped, and torch stacks."""
        elem = batch[0]
        out, seg, offset = self.reserve((len(batch), *elem.shape), elem.dtype)
        stacked = _C.stack_plain(batch, out, seg.fd, offset) if fast else None
        if stacked is not None:
            return stacked
        self._populate(seg, offset, out.nbytes)
        return torch.stack(batch, 0, out=out)

    @staticmethod
    def _reusable(seg: _Segment) -> bool:
        """Free, and no tensor of this worker still views it (a dataset may keep what
        it collated): only the segment's own byte view holds its storage."""
        if seg.busy:
            return False
        users = storage_users(seg.bytes)
        return users is None or users <= 2  # unknown: trust the main process's release

    def release(self, segment_ids) -> None:
        for sid in segment_ids:
            seg = self.segments.get(sid)
            if seg is not None:
                seg.busy, seg.used = False, 0

    def abandon_batch(self) -> None:
        """Frees what a failed batch had taken."""
        self.release(self._touched)
        self._touched = []
        self._with_tensors.clear()
        for source, _ in self._new_files:  # never sent
            del self._files[source]
        self._new_files = []

    def _find(self, t: torch.Tensor) -> _Segment | None:
        ptr = t.untyped_storage().data_ptr()
        for sid in self._touched:
            seg = self.segments[sid]
            if seg.bytes.data_ptr() == ptr:
                return seg
        return None

    # -- pickling ------------------------------------------------------------------------
    def _bytes_ref(self, data: bytes) -> tuple:
        """Large bytes go as (file, offset, size) when read from a local file, for the
        main process to read itself (`_origins`); else through the arena, one copy in
        and one out, instead of pickle's copies through the socket."""
        n = len(data)
        origin = _origins.take(data)
        if origin is not None:
            source, offset = origin
            return ("f", self._file_id(source), source.url, offset, n)
        seg, offset = self.alloc(n)
        if offset + n > seg.mapped:  # members are laid out from the start of a segment
            self._populate(seg, seg.mapped, offset + n - seg.mapped, minimum=0)
            seg.mapped = offset + n
        seg.mm[offset:offset + n] = data
        return ("b", seg.id, offset, n)

    def _file_id(self, source) -> int:
        fid = self._files.get(source)
        if fid is not None:
            self._files.move_to_end(source)
            return fid
        if len(self._files) >= _FILES_PER_WORKER:
            _, old = self._files.popitem(last=False)
            self._closed_files.append(old)
        fid = self._files[source] = -1 - self._next_id
        self._next_id += 1
        self._new_files.append((source, fid))
        return fid

    def pack(self, obj) -> tuple[tuple[bytes, list[tuple], list[int]], list[int], list[tuple[int, int]]]:
        """Pickles obj; returns ((payload, refs to its large bytes, file ids the main
        process may close), segment ids it uses, new (id, fd) to send: segments, files)."""
        buf = io.BytesIO()
        try:
            wrapped: dict[int, bytes] = {}
            if _holds_large_bytes(obj):
                # Large bytes become PickleBuffers, which pickle hands out of band (sent
                # apart from the payload, put back in place when unpickled): one pass, far
                # cheaper than pickle's persistent_id hook, called for every object. The
                # dataset's own containers are left as they are.
                obj = _C.wrap_large_bytes(obj, 5, _BYTES_IN_ARENA, wrapped)
            out_of_band: list[bytes] = []

            def keep_out(buffer: pickle.PickleBuffer) -> bool:  # False: out of band
                data = wrapped.get(id(buffer))
                if data is None:  # a buffer the batch itself holds (numpy's): in band, as before
                    return True
                out_of_band.append(data)  # once per occurrence: pickle does not memoize buffers
                return False

            _ArenaPickler(buf, self, keep_out if wrapped else None).dump(obj)
            ref_of: dict[int, tuple] = {}  # a bytes object in several places is sent once
            for data in out_of_band:
                if id(data) not in ref_of:
                    ref_of[id(data)] = self._bytes_ref(data)
            refs = [ref_of[id(data)] for data in out_of_band]
            _origins.sent(sum(ref[-1] for ref in refs if ref[0] == "f"))
        except BaseException:
            self.abandon_batch()
            raise
        used, self._touched = self._touched, []
        with_tensors, self._with_tensors = self._with_tensors, set()
        new = []
        for sid in used:
            seg = self.segments[sid]
            # The pages stay in the segment for the main process to read. Where tensors
            # live, which the main process maps for as long as the batch lives, this
            # worker drops its mapping, as torch's worker drops its fresh shm per batch
            # (keeping them mapped is ~15% faster on 10 MB batches, but each page would
            # then count twice in the processes' RSS). Bytes are copied out by the
            # main process at once: both processes keep those pages mapped, and so do
            # not pay to map them again for every batch (~1 us a page on a VM).
            if sid in with_tensors:
                seg.mm.madvise(mmap.MADV_DONTNEED, 0, _round_up(seg.used, mmap.PAGESIZE))
                seg.mapped = 0
            if not seg.sent:
                seg.sent = True
                new.append((sid, seg.fd))
        new += [(fid, source.fd) for source, fid in self._new_files]
        closed, self._new_files, self._closed_files = self._closed_files, [], []
        return (buf.getvalue(), refs, closed), used, new


class _ArenaPickler(pickle.Pickler):
    """Tensors go by reference to the arena; wrapped large bytes out of band (see
    `_C.wrap_large_bytes`). `reducer_override` is only consulted for objects pickle has no
    fast path for, so plain data (dicts, str, small bytes) costs nothing extra."""

    def __init__(self, file, arena: WorkerArena, buffer_callback=None):
        super().__init__(file, protocol=5, buffer_callback=buffer_callback)
        self.arena = arena

    def reducer_override(self, obj):
        if not _is_plain_cpu_tensor(obj):
            return NotImplemented
        seg = self.arena._find(obj)
        if seg is None:
            # Not made in the arena: copy the storage span it views, strides kept (a
            # row of a big tensor copies the row; an expanded tensor stays small).
            span = _span(obj)
            flat = self.arena.empty((span,), obj.dtype)
            flat.copy_(obj.as_strided((span,), (1,), obj.storage_offset()))
            seg = self.arena._find(flat)
            return _arena_tensor, (seg.id, obj.dtype, tuple(obj.shape), obj.stride(), flat.storage_offset())
        return _arena_tensor, (seg.id, obj.dtype, tuple(obj.shape), obj.stride(), obj.storage_offset())


def _holds_large_bytes(obj, depth: int = 4) -> bool:
    """A cheap look (first items only) for large bytes in a batch's structure."""
    kind = type(obj)
    if kind is bytes:
        return len(obj) >= _BYTES_IN_ARENA
    if depth == 0:
        return False
    if kind is dict:
        return any(_holds_large_bytes(v, depth - 1) for v in list(obj.values())[:16])
    if kind is list or kind is tuple:
        return bool(obj) and _holds_large_bytes(obj[0], depth - 1)
    return False


_unpacking = threading.local()  # the batch being unpickled in this thread: its leases


def _arena_tensor(sid, dtype, shape, stride, offset) -> torch.Tensor:
    _unpacking.viewed.add(sid)
    return _unpacking.leases[sid].view(dtype).as_strided(shape, stride, offset)


class MainSegments:
    """Main side: the segments of one worker, mapped once; batches unpickled over them.
    Once the worker has ended (`retire`), each segment no tensor views any more is kept
    as a spare for later workers, unless a process was forked while a batch viewed it."""

    def __init__(self, on_release):
        self._arrays: dict[int, np.ndarray] = {}
        self._maps: dict[int, mmap.mmap] = {}
        self._fds: dict[int, int] = {}
        self._leases: dict[int, int] = {}  # batches (tensors) still viewing each segment
        self._mapped: dict[int, int] = {}  # bytes from a segment's start mapped here
        self._files: dict[int, int] = {}  # file id (negative) -> fd, as the worker sent them
        self._tainted: set[int] = set()  # viewed by a batch when some process was forked
        self._lock = threading.Lock()
        self._retired = False
        self._keep_on_retire = True
        self._pid = os.getpid()
        self._on_release = on_release  # called with a segment id, from any thread
        _all_main_segments.add(self)

    def add(self, segment_id: int, fd: int) -> None:
        """Takes over fd: a segment's, or (negative id) a file's the worker reads."""
        if segment_id < 0:
            os.set_inheritable(fd, False)  # kept open now: no exec'd program gets it
            self._files[segment_id] = fd
            return
        try:
            os.set_inheritable(fd, False)
            mm = mmap.mmap(fd, os.fstat(fd).st_size)
        except BaseException:
            os.close(fd)
            raise
        self._arrays[segment_id] = np.frombuffer(mm, dtype=np.uint8)
        self._maps[segment_id] = mm
        self._fds[segment_id] = fd
        self._leases[segment_id] = 0
        self._mapped[segment_id] = 0

    def _release(self, segment_id: int, viewed: set[int]) -> None:
        # Where tensors lived, drop this process's page-table entries (the data stays
        # in the worker's segment): a batch's memory is then counted once, by its
        # worker, not twice. A segment that carried only bytes (copied out at once)
        # stays mapped, as in its worker: mapping its pages again for every batch
        # costs more than copying them (~1 us a page on a VM).
        mm = self._maps.get(segment_id)
        if mm is not None and segment_id in viewed:
            mm.madvise(mmap.MADV_DONTNEED)
            self._mapped[segment_id] = 0
        if os.getpid() != self._pid:  # a batch inherited by a forked process
            return
        with self._lock:
            self._leases[segment_id] -= 1
            spare = self._retired and self._leases[segment_id] == 0
        if spare:
            self._keep(segment_id)
        self._on_release(segment_id)

    def retire(self, keep: bool = True) -> None:
        """The worker has ended: nothing writes the segments any more. With keep=False
        (workers that are not forked could never use them) they are let go."""
        with self._lock:
            self._retired = True
            self._keep_on_retire = keep
            free = [sid for sid, n in self._leases.items() if n == 0]
        for sid in free:
            self._keep(sid)
        self.close_files()  # every batch of the worker was read at once

    def _keep(self, segment_id: int) -> None:
        self._arrays.pop(segment_id, None)  # unmapped once no view is left
        mm = self._maps.pop(segment_id, None)
        fd = self._fds.pop(segment_id, None)
        self._mapped.pop(segment_id, None)
        if fd is None:
            return
        if self._keep_on_retire and segment_id not in self._tainted:
            keep_spare(fd, len(mm))
        else:
            os.close(fd)

    def taint_leased(self) -> None:
        with self._lock:
            self._tainted.update(sid for sid, n in self._leases.items() if n > 0)

    def close_fds(self) -> None:
        """Lets go of the segments without keeping them, and of the files."""
        for fd in self._fds.values():
            os.close(fd)
        self._fds.clear()
        self.close_files()

    def close_files(self) -> None:
        for fd in self._files.values():
            os.close(fd)
        self._files.clear()

    def forget_in_child(self) -> None:
        """In a forked process: close the inherited copies of the fds; keep nothing."""
        self._lock = threading.Lock()
        self.close_fds()
        self._retired, self._keep_on_retire = True, False

    def unpack(self, payload: bytes, segment_ids: list[int]):
        leases = {}
        viewed: set[int] = set()  # segments this batch's tensors view, filled while unpickling
        for sid in segment_ids:
            # A fresh ndarray per batch: when the last tensor viewing it dies, the
            # finalizer hands the segment back to its worker.
            lease = self._arrays[sid][:]
            with self._lock:
                self._leases[sid] += 1
            weakref.finalize(lease, self._release, sid, viewed)
            leases[sid] = torch.from_numpy(lease)
        data, refs, closed = payload
        _unpacking.leases, _unpacking.viewed = leases, viewed
        try:
            # large bytes: copies, so their segments go back to the worker at once
            read: dict[tuple, bytes] = {}  # one bytes object per ref: a shared one stays shared
            for ref in refs:
                if ref not in read:
                    read[ref] = self.read_file(*ref[1:]) if ref[0] == "f" else self.copy_out(*ref[1:])
            return pickle.loads(data, buffers=[read[ref] for ref in refs])
        finally:
            _unpacking.leases = _unpacking.viewed = None
            for fid in closed:
                os.close(self._files.pop(fid))
            if refs:
                keep_freed_memory()  # large bytes objects, made and freed batch after batch

    def copy_out(self, segment_id: int, offset: int, n: int) -> bytes:
        mm, mapped = self._maps[segment_id], self._mapped[segment_id]
        if offset + n > mapped:  # members are laid out from the start of a segment
            _advise(mm, _MADV_POPULATE_READ, mapped, offset + n - mapped, 0)
            self._mapped[segment_id] = offset + n
        return mm[offset:offset + n]  # slicing an mmap copies into a new bytes

    def read_file(self, file_id: int, url: str, offset: int, n: int) -> bytes:
        """Bytes a worker read from a local file, read again here (from the page cache)
        through the worker's fd: the same file even if renamed or deleted since."""
        data = _origins.read_range(self._files[file_id], offset, n)
        if len(data) != n:
            raise ShardError(f"the file was cut short while being read ({len(data)} of {n} bytes)",
                             url=url, offset=offset)
        return data
