"""Large bytes in batches from process workers: by (file, offset) when read from a local
file, through the arena otherwise; the batch's structure kept; the heap kept warm."""
from __future__ import annotations

import os
import subprocess
import sys
from collections import OrderedDict

import pytest

from fastloader import _heap, _origins, _shm
from fastloader.errors import ShardError


@pytest.fixture(autouse=True)
def fresh_origins(monkeypatch):
    """Origins as in a new worker process (noting on), restored afterwards."""
    monkeypatch.setattr(_origins, "_enabled", True)
    monkeypatch.setattr(_origins, "_held", OrderedDict())
    monkeypatch.setattr(_origins, "_held_bytes", 0)
    monkeypatch.setattr(_origins, "_dropped_bytes", 0)
    monkeypatch.setattr(_origins, "_sent", 0)


def _file_with(tmp_path, data: bytes, name: str = "shard.tar") -> tuple[str, _origins.Origin]:
    path = str(tmp_path / name)
    with open(path, "wb") as f:
        f.write(data)
    st = os.stat(path)
    return path, (path, st.st_dev, st.st_ino)


def _round_trip(batch):
    """batch packed by a worker arena and unpacked by the main side, in this process."""
    arena = _shm.WorkerArena(0)
    main = _shm.MainSegments(on_release=lambda sid: None)
    payload, used, new = arena.pack(batch)
    for sid, fd in new:
        main.add(sid, os.dup(fd))
    try:
        return main.unpack(payload, used), [arena.segments[sid].used for sid in used]
    finally:
        main.close_fds()


def test_bytes_read_from_a_file_go_by_reference_and_arrive_equal(tmp_path):
    data = os.urandom(300_000)
    path, origin = _file_with(tmp_path, data)
    members = [data[1000:101_000], data[150_000:290_000]]  # copies, as a shard reader makes
    _origins.note(members[0], origin, 1000)
    _origins.note(members[1], origin, 150_000)
    unnoted = os.urandom(50_000)
    batch = [{"__key__": "a", "bin": members[0], "cls": b"1"}, {"__key__": "b", "bin": members[1], "x": unnoted}]
    got, used = _round_trip(batch)
    assert got == batch and type(got[0]["bin"]) is bytes
    # only the bytes not read from a file went through shared memory: the main side
    # read the others from the file
    assert used == [50_000] and not _origins._held


def test_a_file_replaced_or_cut_short_before_the_main_side_reads_it_is_a_clear_error(tmp_path):
    data = os.urandom(200_000)
    path, origin = _file_with(tmp_path, data)
    member = data[100_000:200_000]
    _origins.note(member, origin, 100_000)
    os.truncate(path, 150_000)
    with pytest.raises(ShardError, match="cut short") as err:
        _round_trip([member])
    assert err.value.url == path and err.value.offset == 100_000

    member = data[:100_000]
    _origins.note(member, origin, 0)
    _file_with(tmp_path, data, "new.tar")
    os.replace(tmp_path / "new.tar", path)  # same path, another file
    with pytest.raises(ShardError, match="replaced") as err:
        _round_trip([member])
    assert err.value.url == path


def test_the_batch_structure_is_kept_and_the_workers_objects_are_left_alone():
    big = os.urandom(40_000)
    shared = {"bin": big, "n": 1}
    batch = ([shared, shared], (big, b"small"), {"deep": [[{"bin": big}]]})
    got, _ = _round_trip(batch)
    assert got == batch and type(got[1]) is tuple
    assert got[0][0] is got[0][1]  # one dict twice, as pickle keeps it
    assert batch[0][0]["bin"] is big  # the dataset's own dicts are not rewritten


def test_noting_holds_at_most_the_cap_and_stops_when_batches_never_carry_the_bytes(monkeypatch):
    monkeypatch.setattr(_origins, "HELD_CAP", 1 << 20)
    origin = ("/nowhere", 0, 0)
    blobs = [os.urandom(100_000) for _ in range(12)]
    for i, b in enumerate(blobs):
        _origins.note(b, origin, i)
    assert _origins._held_bytes <= 1 << 20 and _origins.take(blobs[-1]) == (origin, 11)
    assert _origins.take(blobs[0]) is None  # dropped as the oldest
    # a dataset whose batches never send what it read (decoded in the worker, say)
    monkeypatch.setattr(_origins, "_sent", 0)
    for i in range(30):
        _origins.note(os.urandom(100_000), origin, i)
    assert not _origins.enabled() and not _origins._held


_HEAP_PROBE = r"""
import ctypes, importlib.util, sys
spec = importlib.util.spec_from_file_location("_heap", sys.argv[2])  # alone: no torch in this process
_heap = importlib.util.module_from_spec(spec)
spec.loader.exec_module(_heap)

class Mallinfo2(ctypes.Structure):
    _fields_ = [(n, ctypes.c_size_t) for n in
                ("arena", "ordblks", "smblks", "hblks", "hblkhd", "usmblks", "fsmblks", "uordblks", "fordblks", "keepcost")]

libc = ctypes.CDLL("libc.so.6")
libc.mallinfo2.restype = Mallinfo2

def heap_kept_after_a_batch():
    start = libc.mallinfo2().arena
    batch = [bytes(100_000) for _ in range(64)]  # below the mmap threshold: from the heap
    del batch
    return libc.mallinfo2().arena - start

if sys.argv[1] == "keep":
    _heap.keep_freed_memory()
print(heap_kept_after_a_batch())
"""


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="glibc's malloc")
def test_the_heap_keeps_a_freed_batch_for_the_next_one():
    def kept(mode):
        out = subprocess.run([sys.executable, "-c", _HEAP_PROBE, mode, _heap.__file__], capture_output=True,
                             text=True, check=True)
        return int(out.stdout)

    assert kept("plain") < 1 << 20  # glibc gave the freed batch back to the kernel
    assert kept("keep") >= 56 * 100_000  # kept (most of it) for the next batch
