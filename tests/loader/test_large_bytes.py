"""Large bytes in batches from process workers: by (file, offset) when read from a local
file, through the arena otherwise; the batch's structure kept; the heap kept warm."""
from __future__ import annotations

import os
import pickle
import subprocess
import sys
from collections import OrderedDict

import pytest
import torch.utils.data as tud

import fastloader
from fastloader import _heap, _origins, _shm
from fastloader.errors import ShardError
from fastloader.shards import _local

# Tests of glibc's heap behaviour: not where AddressSanitizer's allocator replaces it (.ci/sanitize).
glibc_malloc = pytest.mark.skipif(
    not sys.platform.startswith("linux") or "libasan" in os.environ.get("LD_PRELOAD", ""), reason="glibc's malloc"
)


@pytest.fixture(autouse=True)
def fresh_origins(monkeypatch):
    """Origins as in a new worker process (noting on), restored afterwards."""
    monkeypatch.setattr(_origins, "_enabled", True)
    monkeypatch.setattr(_origins, "_held", OrderedDict())
    monkeypatch.setattr(_origins, "_held_bytes", 0)
    monkeypatch.setattr(_origins, "_cap", _origins.MIN_HELD_CAP)


def _shard_with(tmp_path, data: bytes, name: str = "shard.tar") -> tuple[str, _local.PreadShard]:
    path = str(tmp_path / name)
    with open(path, "wb") as f:
        f.write(data)
    return path, _local.open_shard(path, f"file://{path}", mapped=False)


def _round_trip(batch, arena=None, main=None):
    """batch packed by a worker arena and unpacked by the main side, in this process;
    also the bytes each segment the batch used holds."""
    arena = arena or _shm.WorkerArena(0)
    main = main or _shm.MainSegments(on_release=lambda sid: None)
    payload, used, new = arena.pack(batch)
    for sid, fd in new:
        main.add(sid, os.dup(fd))  # as a passed fd arrives: a new descriptor
    return main.unpack(payload, used), [arena.segments[sid].used for sid in used]


def test_bytes_read_from_a_local_file_go_by_reference_and_arrive_equal(tmp_path):
    data = os.urandom(300_000)
    _, shard = _shard_with(tmp_path, data)
    assert shard.local  # tmp_path is on a local disk here
    members = [shard[1000:101_000], shard[150_000:290_000]]
    _origins.note(members[0], shard, 1000)
    _origins.note(members[1], shard, 150_000)
    unnoted = os.urandom(50_000)
    batch = [{"__key__": "a", "bin": members[0], "cls": b"1"}, {"__key__": "b", "bin": members[1], "x": unnoted}]
    got, used = _round_trip(batch)
    assert got == batch and type(got[0]["bin"]) is bytes
    # only the bytes not read from a file went through shared memory: the main side
    # read the others from the file
    assert used == [50_000] and not _origins._held


def test_the_main_side_reads_the_workers_file_even_once_deleted_or_replaced(tmp_path):
    data = os.urandom(200_000)
    path, shard = _shard_with(tmp_path, data)
    member = shard[0:100_000]
    _origins.note(member, shard, 0)
    _shard_with(tmp_path, os.urandom(200_000), "new.tar")
    os.replace(tmp_path / "new.tar", path)  # a shard cache replacing or deleting what was read
    got, used = _round_trip([member])
    assert got == [member] and used == []


def test_a_file_cut_short_before_the_main_side_reads_it_is_a_clear_error(tmp_path):
    data = os.urandom(200_000)
    path, shard = _shard_with(tmp_path, data)
    member = shard[100_000:200_000]
    _origins.note(member, shard, 100_000)
    os.truncate(path, 150_000)
    with pytest.raises(ShardError, match="cut short") as err:
        _round_trip([member])
    assert err.value.url == f"file://{path}" and err.value.offset == 100_000


def test_the_main_side_holds_a_bounded_number_of_the_workers_files(tmp_path):
    arena, main = _shm.WorkerArena(0), _shm.MainSegments(on_release=lambda sid: None)
    for i in range(_shm._FILES_PER_WORKER + 9):
        _, shard = _shard_with(tmp_path, os.urandom(40_000), f"{i}.tar")
        member = shard[0:40_000]
        _origins.note(member, shard, 0)
        got, _ = _round_trip([member], arena, main)
        assert got == [member]
        assert len(main._files) <= _shm._FILES_PER_WORKER
    main.close_fds()
    assert not main._files


def test_the_batch_structure_is_kept_and_the_workers_objects_are_left_alone():
    big = os.urandom(40_000)
    shared = {"bin": big, "n": 1}
    batch = ([shared, shared], (big, b"small"), {"deep": [{"bin": big}]})
    got, used = _round_trip(batch)
    assert got == batch and type(got[1]) is tuple
    assert got[0][0] is got[0][1]  # one dict twice, as pickle keeps it
    assert got[0][0]["bin"] is got[1][0] is got[2]["deep"][0]["bin"]  # one bytes, sent once
    assert used == [40_000]  # out of band, through the arena
    assert batch[0][0]["bin"] is big  # the dataset's own dicts are not rewritten


def test_large_bytes_are_marked_for_pickle_in_plain_containers_four_levels_deep():
    from collections import namedtuple

    big, other, small = os.urandom(40_000), os.urandom(50_000), b"s" * 100
    pair = namedtuple("pair", "a b")
    shared = {"bin": big, "small": small}
    deep3, deep4 = [[[other]]], [[[[other]]]]  # in the batch: 4 and 5 containers deep
    odict, nt = OrderedDict(bin=big), pair(big, 1)
    batch = [shared, shared, (big, small), deep3, deep4, odict, nt]
    wrapped: dict = {}
    got = _shm._C.wrap_large_bytes(batch, 5, _shm._BYTES_IN_ARENA, wrapped)

    def data_of(x):
        assert isinstance(x, pickle.PickleBuffer)
        return wrapped[id(x)]

    assert data_of(got[0]["bin"]) is big and got[0]["small"] is small
    assert got[0] is got[1] and got[0] is not shared  # one copy of the shared dict, twice
    assert got[2][0] is got[0]["bin"] and type(got[2]) is tuple  # one buffer per bytes object
    assert data_of(got[3][0][0][0]) is other  # the fourth level is marked...
    assert got[4][0][0][0] is deep4[0][0][0]  # ...deeper ones go in band, as they are
    assert got[5] is odict and got[6] is nt  # other containers too
    assert sorted(map(id, wrapped.values())) == sorted([id(big), id(other)])
    assert batch == [shared, shared, (big, small), deep3, deep4, odict, nt] and shared["bin"] is big
    assert _shm._C.wrap_large_bytes(big, 5, 1 << 20, {}) is big  # below min_size
    with pytest.raises(TypeError):
        _shm._C.wrap_large_bytes(batch, 5, 1, [])


def test_an_error_while_marking_large_bytes_is_raised_not_a_crash():
    class HashesOnce:  # a dict key whose hash fails when the dict is copied
        hashed = 0

        def __hash__(self):
            HashesOnce.hashed += 1
            if HashesOnce.hashed > 1:
                raise RuntimeError("no second hash")
            return 1

    big = os.urandom(40_000)
    batch = [{HashesOnce(): big, "after": big, "more": [big]}]
    with pytest.raises(RuntimeError, match="no second hash"):
        _shm._C.wrap_large_bytes(batch, 5, _shm._BYTES_IN_ARENA, {})
    with pytest.raises(RuntimeError, match="no second hash"):
        _shm.WorkerArena(0).pack(batch)


def test_a_batch_holding_itself_is_marked_as_the_python_walk_did_and_nothing_leaks():
    big = os.urandom(40_000)
    loop = [big]
    loop.append(loop)
    refs = sys.getrefcount(big)
    for _ in range(50):
        wrapped: dict = {}
        got = _shm._C.wrap_large_bytes([loop, loop], 5, _shm._BYTES_IN_ARENA, wrapped)
        # one copy per level the list is met at; the outermost stands for it everywhere
        assert got[0] is got[1] and got[0][1] is not got[0] and got[0][1][1][1][1] is loop
        assert list(wrapped.values()) == [big] and got[0][0] is got[0][1][0]
        del got, wrapped
    assert sys.getrefcount(big) == refs
    with pytest.raises(RecursionError):  # not a crash, whatever the depth asked for
        _shm._C.wrap_large_bytes(loop, 2**31 - 1, 1, {})


def test_noting_holds_a_few_batches_at_most():
    blobs = [os.urandom(100_000) for _ in range(120)]  # 12 MB
    for i, b in enumerate(blobs):
        _origins.note(b, None, i)
    assert _origins._held_bytes <= _origins.MIN_HELD_CAP and _origins.take(blobs[-1]) == (None, 119)
    assert _origins.take(blobs[0]) is None  # dropped as the oldest
    _origins.sent(3_000_000)  # batches of 3 MB are sent: room for four
    for i, b in enumerate(blobs):
        _origins.note(b, None, i)
    assert _origins._held_bytes > _origins.MIN_HELD_CAP and _origins.take(blobs[0]) == (None, 0)


class _FileBytes(tud.Dataset):
    """Each sample read from a file of its own, noted as a shard reader notes it; the
    file of sample 1 is cut short once read, before the main process reads it."""

    def __init__(self, directory):
        self.paths = []
        for i in range(4):
            self.paths.append(os.path.join(directory, f"{i}.bin"))
            with open(self.paths[-1], "wb") as f:
                f.write(bytes([i]) * 50_000)

    def __len__(self):
        return len(self.paths)

    def __getitem__(self, i):
        shard = _local.open_shard(self.paths[i], self.paths[i], mapped=False)
        data = shard[0:50_000]
        _origins.note(data, shard, 0)
        if i == 1:
            os.truncate(self.paths[i], 10)
        return data


def test_a_batch_the_main_process_cannot_read_raises_in_turn_and_the_loader_goes_on(tmp_path, monkeypatch):
    monkeypatch.setattr(_origins, "_enabled", False)  # the workers turn it on themselves
    it = iter(fastloader.DataLoader(_FileBytes(str(tmp_path)), batch_size=None, num_workers=1, timeout=20))
    assert next(it) == bytes([0]) * 50_000
    with pytest.raises(ShardError, match="cut short"):
        next(it)
    assert list(it) == [bytes([2]) * 50_000, bytes([3]) * 50_000]


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


@glibc_malloc
def test_the_heap_keeps_a_freed_batch_for_the_next_one():
    def kept(mode):
        out = subprocess.run([sys.executable, "-c", _HEAP_PROBE, mode, _heap.__file__], capture_output=True,
                             text=True, check=True)
        return int(out.stdout)

    assert kept("plain") < 1 << 20  # glibc gave the freed batch back to the kernel
    assert kept("keep") >= 56 * 100_000  # kept (most of it) for the next batch


_LOADER_HEAP_PROBE = r"""
import resource, sys
import torch, fastloader

def faults_of_a_batch(_=None):
    start = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
    batch = [bytes(100_000) for _ in range(64)]  # 6.4 MB written, then freed
    del batch
    return resource.getrusage(resource.RUSAGE_SELF).ru_minflt - start

def huge_heap_mappings(_=None):
    with open("/proc/self/smaps") as f:
        blocks = f.read().split("\n")
    eligible, name = 0, None
    for line in blocks:
        if line[:1].isdigit() or line[:1] in "abcdef":  # a mapping's first line
            name = line.split()[5] if len(line.split()) > 5 else ""
        elif line.startswith("THPeligible:") and name == "[heap]":
            eligible += int(line.split()[1])
    return eligible

kind, workers = sys.argv[1], int(sys.argv[2])
cls = torch.utils.data.DataLoader if kind == "torch" else fastloader.DataLoader
extra = {"worker_type": "thread"} if kind == "thread" else {}
faults_of_a_batch()
print(faults_of_a_batch(), *cls(range(4), batch_size=None, num_workers=workers, collate_fn=faults_of_a_batch,
                                **extra),
      *cls(range(1), batch_size=None, num_workers=workers, collate_fn=huge_heap_mappings, **extra))
"""


def _loader_heap_probe(kind: str, workers: int, env: dict | None = None) -> tuple[int, list[int], int]:
    out = subprocess.run([sys.executable, "-c", _LOADER_HEAP_PROBE, kind, str(workers)], capture_output=True,
                         text=True, check=True, env={**os.environ, **(env or {})})
    before, *during, huge = map(int, out.stdout.split())
    return before, during, huge


@glibc_malloc
def test_worker_processes_keep_a_freed_batch_for_the_next_one():
    """A dataset's per-sample arrays freed after each batch stay in a worker's heap, where
    glibc would give them back and every later batch would fault each page in again."""
    in_main, in_worker, _ = _loader_heap_probe("process", 1)
    assert in_main > 500  # the main process's malloc is left as it is: its pages faulted in again
    assert len(in_worker) == 4 and max(in_worker[2:]) < 50  # no new pages once the heap has grown


@glibc_malloc
@pytest.mark.parametrize("kind, workers", [("process", 0), ("thread", 1)])
def test_fetching_in_the_main_process_keeps_a_freed_batch_for_the_next_one(kind, workers):
    before, during, _ = _loader_heap_probe(kind, workers)
    assert before > 500  # before the loader, glibc gave each freed batch back
    assert len(during) == 4 and max(during[2:]) < 50  # no new pages once the heap has grown


@glibc_malloc
def test_torch_loader_leaves_the_heap_as_it_is():
    """The reference for the tests above: the same batches fault in again under torch."""
    _, during, huge = _loader_heap_probe("torch", 0)
    assert min(during) > 500 and huge == 0


def _thp_mode() -> str:
    try:
        with open("/sys/kernel/mm/transparent_hugepage/enabled") as f:
            return f.read().split("[")[1].split("]")[0]
    except (OSError, IndexError):
        return "never"


@glibc_malloc
@pytest.mark.skipif(_thp_mode() != "madvise", reason="transparent huge pages not in madvise mode")
def test_worker_processes_back_their_heap_with_huge_pages():
    """The first batches of large arrays fault in 2 MiB at a time (only where asked for,
    in madvise mode): a worker's heap has a huge-page region, the main process's not."""
    _, _, huge_in_worker = _loader_heap_probe("process", 1)
    _, _, huge_in_main = _loader_heap_probe("process", 0)
    assert huge_in_worker >= 1 and huge_in_main == 0
    _, _, huge_when_off = _loader_heap_probe("process", 1, {"FASTLOADER_WORKER_HUGE_PAGES": "0"})
    assert huge_when_off == 0
