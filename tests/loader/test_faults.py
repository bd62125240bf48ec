"""Worker faults: clear errors, quickly, and nothing left behind."""
from __future__ import annotations

import os
import signal
import subprocess
import sys
import textwrap
import time

import pytest
import torch
import torch.utils.data as tud

import fastloader

from _loader_data import FailingDataset, SquareDataset


def _children() -> set[int]:
    me = str(os.getpid())
    kids = set()
    for pid in os.listdir("/proc"):
        if pid.isdigit():
            try:
                with open(f"/proc/{pid}/stat") as f:
                    fields = f.read().rsplit(")", 1)[1].split()
            except OSError:
                continue
            if fields[1] == me and fields[0] != "Z":
                kids.add(int(pid))
    return kids


def _wait_gone(pids, seconds=5.0) -> set[int]:
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        alive = {p for p in pids if os.path.exists(f"/proc/{p}") and _state(p) != "Z"}
        if not alive:
            return set()
        time.sleep(0.05)
    return alive


def _state(pid):
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().rsplit(")", 1)[1].split()[0]
    except OSError:
        return "gone"


class KillSelf(tud.Dataset):
    def __init__(self, at: int, sig=signal.SIGKILL):
        self.at, self.sig = at, sig

    def __len__(self):
        return 100

    def __getitem__(self, i):
        if i == self.at:
            os.kill(os.getpid(), self.sig)
        return torch.tensor(i)


@pytest.mark.parametrize("sig", [signal.SIGKILL, signal.SIGSEGV, signal.SIGTERM])
def test_worker_killed_by_a_signal_is_named_quickly(sig):
    it = iter(fastloader.DataLoader(KillSelf(9, sig), batch_size=2, num_workers=2))
    start = time.monotonic()
    with pytest.raises(RuntimeError, match=rf"DataLoader worker \d \(pid \d+\) was killed by signal {sig.name}"):
        for _ in it:
            pass
    assert time.monotonic() - start < 5
    assert not _wait_gone(it._pool.pids)  # the other worker is ended too


@pytest.mark.parametrize("worker_type,num_workers", [("process", 0), ("process", 2), ("thread", 2)])
def test_dataset_exception_is_reraised_with_the_worker_traceback(worker_type, num_workers):
    loader = fastloader.DataLoader(FailingDataset(bad=5), batch_size=2, num_workers=num_workers,
                                   worker_type=worker_type)
    got = []
    with pytest.raises(KeyError) as err:
        for b in loader:
            got.append(b)
    assert len(got) == 2  # batches before the bad one arrived
    text = str(err.value)
    assert "item 5 is broken" in text
    if num_workers:
        kind = "process" if worker_type == "process" else "thread"
        assert f"Caught KeyError in DataLoader worker {kind}" in text
        assert "Original Traceback" in text and "__getitem__" in text


def test_exception_message_matches_torch():
    def message(cls):
        with pytest.raises(KeyError) as err:
            list(cls(FailingDataset(bad=3), batch_size=2, num_workers=1))
        return str(err.value)

    ours, theirs = message(fastloader.DataLoader), message(tud.DataLoader)
    assert ours.splitlines()[0] == theirs.splitlines()[0]
    assert ours.splitlines()[-1] == theirs.splitlines()[-1]


def test_iteration_continues_after_a_worker_exception_like_torch():
    def run(cls):
        it = iter(cls(FailingDataset(bad=4), batch_size=2, num_workers=2))
        out = []
        while True:
            try:
                out.append(next(it).tolist())
            except KeyError:
                out.append("error")
            except StopIteration:
                return out

    assert run(fastloader.DataLoader) == run(tud.DataLoader)


class Slow(tud.Dataset):
    def __len__(self):
        return 10

    def __getitem__(self, i):
        time.sleep(3 if i >= 2 else 0)
        return i


def test_timeout_is_honoured():
    loader = fastloader.DataLoader(Slow(), batch_size=2, num_workers=1, timeout=0.5)
    it = iter(loader)
    next(it)
    start = time.monotonic()
    with pytest.raises(RuntimeError, match=r"DataLoader timed out after 0.5 seconds"):
        next(it)
    assert time.monotonic() - start < 2


def test_timeout_without_workers_is_refused_like_torch():
    with pytest.raises(AssertionError, match="timeout == 0"):
        iter(fastloader.DataLoader(Slow(), timeout=1))
    with pytest.raises(AssertionError, match="timeout == 0"):
        iter(tud.DataLoader(Slow(), timeout=1))


class HugeView(tud.Dataset):
    """Items view a sparse 256 GiB file: far more than this machine could share."""

    def __init__(self, path):
        self.path = path

    def __len__(self):
        return 4

    def __getitem__(self, i):
        return torch.from_file(self.path, shared=True, size=1 << 38, dtype=torch.uint8)


def test_shared_memory_exhausted_is_a_clear_error(tmp_path):
    path = tmp_path / "sparse.bin"
    with open(path, "wb") as f:
        f.truncate(1 << 38)
    loader = fastloader.DataLoader(HugeView(str(path)), batch_size=None, num_workers=1)
    with pytest.raises(fastloader.SharedMemoryError, match=r"could not reserve 262144\.0 MiB of shared memory"):
        next(iter(loader))


def test_no_shared_memory_at_all_is_a_clear_error():
    def no_memfd(worker_id):
        def refuse(name, flags=0):
            raise OSError(24, "Too many open files")

        os.memfd_create = refuse  # in the worker process only

    loader = fastloader.DataLoader(SquareDataset(), batch_size=4, num_workers=1, worker_init_fn=no_memfd)
    with pytest.raises(fastloader.SharedMemoryError, match="shared memory for a batch \\(Too many open files\\)"):
        next(iter(loader))


def _fds() -> int:
    return len(os.listdir("/proc/self/fd"))


@pytest.mark.parametrize("persistent", [False, True])
def test_abandoned_iterator_and_deleted_loader_leave_nothing(persistent):
    from fastloader import _shm

    before_kids, before_shm = _children(), set(os.listdir("/dev/shm"))
    before_fds = _fds() - len(_shm._spares)
    fds_after = []
    for _ in range(3):
        loader = fastloader.DataLoader(SquareDataset(400), batch_size=4, num_workers=2,
                                       persistent_workers=persistent)
        it = iter(loader)
        batches = [next(it) for _ in range(5)]
        pids = set(it._pool.pids)
        assert pids <= _children()
        del it
        if not persistent:  # no gc.collect(): dropping the iterator alone must end them
            assert not _wait_gone(pids), "workers outlived their iterator"
        del loader, batches
        import gc

        gc.collect()
        assert not _wait_gone(pids), "workers outlived their loader"
        fds_after.append(_fds() - len(_shm._spares))
    assert _children() <= before_kids
    # Segments the workers leave are kept for the next ones (bounded); beyond those,
    # no round leaves an fd behind.
    assert max(fds_after) <= before_fds + 2, (before_fds, fds_after)
    assert set(os.listdir("/dev/shm")) <= before_shm  # (memfds never appear there anyway)


def test_memory_is_reused_batch_after_batch():
    it = iter(fastloader.DataLoader(SquareDataset(4000), batch_size=8, num_workers=2))
    for _ in it:
        pass
    segments = [len(s._arrays) for s in it._pool.segments]
    # prefetch_factor (2) batches in flight, plus the one the loop holds and one being
    # freed: a bounded set of segments, not one per batch (there were 500 batches)
    assert max(segments) <= 2 + 3, segments


def test_batches_kept_by_the_user_stay_intact():
    loader = fastloader.DataLoader(SquareDataset(400), batch_size=8, num_workers=2)
    kept = list(loader)
    expected = list(tud.DataLoader(SquareDataset(400), batch_size=8))
    assert all(torch.equal(a, b) for a, b in zip(kept, expected))


SCRIPT = textwrap.dedent(
    """
    import sys, torch, fastloader
    class DS(torch.utils.data.Dataset):
        def __len__(self): return 1000
        def __getitem__(self, i): return torch.full((64,), i)
    loader = fastloader.DataLoader(DS(), batch_size=4, num_workers=2,
                                   persistent_workers=sys.argv[1] == "1")
    it = iter(loader)
    next(it); next(it)
    print(" ".join(map(str, it._pool.pids)), flush=True)
    """
)


@pytest.mark.parametrize("persistent", ["0", "1"])
def test_interpreter_exit_ends_the_workers(tmp_path, persistent):
    script = tmp_path / "exit.py"
    script.write_text(SCRIPT)
    out = subprocess.run([sys.executable, str(script), persistent], capture_output=True, text=True,
                         timeout=60)
    assert out.returncode == 0, out.stderr
    pids = {int(p) for p in out.stdout.split()}
    assert len(pids) == 2
    assert not _wait_gone(pids), "workers outlived the interpreter"
    assert "Traceback" not in out.stderr, out.stderr


class BigRows(tud.Dataset):
    def __len__(self):
        return 140

    def __getitem__(self, i):
        return torch.full((160_000,), i, dtype=torch.float32)  # 640 KB each


def test_batch_of_many_separate_tensors():
    # collate_fn keeps the list: 70 tensors to share, more than fit one fd message
    loader = fastloader.DataLoader(BigRows(), batch_size=70, num_workers=1, collate_fn=lambda items: items)
    for k, batch in enumerate(loader):
        assert len(batch) == 70
        assert all(int(t[0]) == 70 * k + j and int(t[-1]) == 70 * k + j for j, t in enumerate(batch))


class KeepsWhatItCollates(tud.Dataset):
    """Collates a buffer once in the worker (default_collate goes to shared memory
    there) and keeps slicing it: the worker must not hand that memory out again."""

    def __init__(self):
        self.buffer = None

    def __len__(self):
        return 64

    def __getitem__(self, i):
        if self.buffer is None:
            self.buffer = tud.default_collate([torch.full((1000,), k) for k in range(64)])
        return self.buffer[63 - i].clone()  # the first rows, where batches would go, last


def test_memory_a_dataset_keeps_is_not_reused():
    loader = fastloader.DataLoader(KeepsWhatItCollates(), batch_size=4, num_workers=1)
    for k, batch in enumerate(loader):
        rows = torch.arange(63 - 4 * k, 59 - 4 * k, -1)
        assert torch.equal(batch[:, 0], rows) and torch.equal(batch[:, -1], rows)


def test_device_prefetch_keeps_errors_in_their_place():
    loader = fastloader.DataLoader(FailingDataset(bad=4), batch_size=2, num_workers=2, device="cpu")
    it = iter(loader)
    assert next(it).tolist() == [0, 1]
    assert next(it).tolist() == [2, 3]
    with pytest.raises(KeyError, match="item 4 is broken"):
        next(it)
    assert next(it).tolist() == [6, 7]


class BadState(tud.IterableDataset):
    def __iter__(self):
        yield from range(10)

    def state_dict(self):
        raise RuntimeError("cannot save my position")

    def load_state_dict(self, state):
        pass


def test_failing_dataset_state_dict_is_reraised_not_a_dead_worker():
    with pytest.raises(RuntimeError, match="cannot save my position"):
        next(iter(fastloader.DataLoader(BadState(), batch_size=2, num_workers=1)))


def test_a_fork_of_the_main_process_leaves_its_workers_alone():
    loader = fastloader.DataLoader(SquareDataset(400), batch_size=4, num_workers=2)
    it = iter(loader)
    next(it)
    pid = os.fork()
    if pid == 0:  # e.g. another library's worker: drops its copy of everything
        try:
            it._shutdown()
        finally:
            os._exit(0)
    os.waitpid(pid, 0)
    assert len(list(it)) == 99  # the workers still serve this process
