"""Shared-memory segments that workers leave are reused by the next workers, never while
a batch still views them."""
from __future__ import annotations

import gc
import os

import torch
import torch.utils.data as tud

import fastloader
from fastloader import _shm

from _loader_data import SquareDataset


class Rows(tud.Dataset):
    """Batches of 64 KB, so each batch takes a segment of its own."""

    def __len__(self):
        return 64

    def __getitem__(self, i):
        return torch.full((4096,), i, dtype=torch.float32)


def _kept_inodes() -> set[int]:
    return {os.fstat(fd).st_ino for fd, _ in _shm._spares}


def test_the_next_epochs_workers_write_into_the_segments_the_last_ones_left():
    loader = fastloader.DataLoader(Rows(), batch_size=4, num_workers=2)
    list(loader)
    gc.collect()
    first = _kept_inodes()
    assert first, "an ended epoch kept no segment"
    it = iter(loader)
    assert not _shm._spares  # dealt to the new workers
    got = list(it)
    assert all(torch.equal(a, b) for a, b in zip(got, tud.DataLoader(Rows(), batch_size=4)))
    del it, got
    gc.collect()
    assert first & _kept_inodes(), "the new workers did not reuse the segments"


def test_batches_still_held_are_never_handed_to_new_workers():
    loader = fastloader.DataLoader(Rows(), batch_size=4, num_workers=2)
    expected = list(tud.DataLoader(Rows(), batch_size=4))
    held = list(loader)  # every batch of epoch 1 stays alive
    for _ in range(3):
        got = list(loader)  # new workers each epoch
        assert all(torch.equal(a, b) for a, b in zip(got, expected))
        assert all(torch.equal(a, b) for a, b in zip(held, expected)), "a held batch was overwritten"
        del got
        gc.collect()
    held_some = held[::3]  # drop the others: their segments become spares
    del held
    gc.collect()
    for _ in range(2):
        assert all(torch.equal(a, b) for a, b in zip(list(loader), expected))
        assert all(torch.equal(a, b) for a, b in zip(held_some, expected[::3]))


def test_kept_segments_stay_within_the_cap(monkeypatch):
    monkeypatch.setattr(_shm, "SPARE_CAP", 3 << 20)
    for _ in range(3):
        list(fastloader.DataLoader(Rows(), batch_size=16, num_workers=2))
        gc.collect()
        assert sum(size for _, size in _shm._spares) <= 3 << 20


def test_spawned_workers_leave_the_kept_segments_for_forked_ones():
    list(fastloader.DataLoader(SquareDataset(40), batch_size=4, num_workers=1))
    gc.collect()
    kept = _kept_inodes()
    assert kept
    loader = fastloader.DataLoader(SquareDataset(40), batch_size=4, num_workers=1, multiprocessing_context="spawn")
    assert [b.tolist() for b in loader] == [b.tolist() for b in tud.DataLoader(SquareDataset(40), batch_size=4)]
    gc.collect()
    assert kept <= _kept_inodes()  # an fd cannot reach a spawned process: nothing was dealt


class Const(tud.Dataset):
    def __init__(self, value):
        self.value = value

    def __len__(self):
        return 8

    def __getitem__(self, i):
        return torch.full((16384,), float(self.value))


def test_a_process_forked_by_user_code_never_reuses_the_parents_segments():
    list(fastloader.DataLoader(Const(0), batch_size=4, num_workers=1))  # leaves kept segments
    gc.collect()
    assert _shm._spares
    go, done = os.pipe(), os.pipe()
    pid = os.fork()
    if pid == 0:  # e.g. an evaluation process that runs a loader of its own
        ok = not _shm._spares
        os.read(go[0], 1)
        for _ in fastloader.DataLoader(Const(2), batch_size=4, num_workers=1):
            pass
        os.write(done[1], b"x")
        os._exit(0 if ok else 1)
    held = next(iter(fastloader.DataLoader(Const(1), batch_size=4, num_workers=1)))
    gc.collect()
    os.write(go[1], b"x")
    os.read(done[0], 1)
    _, status = os.waitpid(pid, 0)
    assert os.waitstatus_to_exitcode(status) == 0, "the child inherited the kept segments"
    assert held.unique().tolist() == [1.0], "the child's workers wrote into the parent's batch"


class HoldsBatches(tud.Dataset):
    """Keeps batches it is given, and reads them back in its workers (a replay buffer)."""

    def __init__(self):
        self.kept = []

    def __len__(self):
        return 4

    def __getitem__(self, i):
        return self.kept[0].sum() if self.kept else torch.tensor(0.0)


def test_batches_alive_when_workers_fork_are_never_reused():
    data = HoldsBatches()
    data.kept = [next(iter(fastloader.DataLoader(Const(3), batch_size=4, num_workers=1)))]
    expected = float(data.kept[0].sum())
    reader = iter(fastloader.DataLoader(data, batch_size=None, num_workers=1, persistent_workers=True))
    assert float(next(reader)) == expected  # its worker views the kept batch
    data.kept.clear()  # the main process lets go of it; the worker still holds its copy
    gc.collect()
    for _ in range(2):
        list(fastloader.DataLoader(Const(9), batch_size=4, num_workers=2))
        gc.collect()
    assert all(float(next(reader)) == expected for _ in range(3))
