"""The loop a DataLoader worker runs, the same for worker processes and worker threads.

It mirrors torch's `_worker_loop` (seeding, `get_worker_info`, `worker_init_fn`, the
fetcher, errors wrapped with the worker's traceback) and adds what exact resume needs:
each result carries the worker's state after producing it, and an epoch can start from a
saved state (RNG states, the dataset's own `state_dict`, or a number of batches to replay).
"""
from __future__ import annotations

import copy
import ctypes
import random
import sys
import time
from dataclasses import dataclass
from typing import Any, Callable

import numpy as np
import numpy.random  # noqa: F401  (imported here once, not in each forked worker)
import torch
from torch._utils import ExceptionWrapper
from torch.utils.data._utils import worker as torch_worker
from torch.utils.data.dataloader import _DatasetKind

from . import _worker_info
from ._stream_collate import create_fetcher


@dataclass
class WorkerSetup:
    dataset_kind: int
    dataset: Any
    auto_collation: bool
    collate_fn: Callable
    drop_last: bool
    base_seed: int
    worker_init_fn: Callable | None
    worker_id: int
    num_workers: int
    in_process: bool


def rng_state() -> tuple:
    # Plain bytes and tuples: unpickling a tensor goes through torch.load (~0.4 ms), and
    # torch.load(weights_only=True) of a saved loader state refuses numpy arrays.
    name, keys, pos, has_gauss, gauss = np.random.get_state()
    return (
        torch.get_rng_state().numpy().tobytes(),
        random.getstate(),
        (name, keys.tobytes(), pos, has_gauss, gauss),
    )


SAME_RNG = "same"  # in a batch's state: the RNG states are those of this worker's previous batch
_MT19937_STATE_BYTES = 624 * 4 + 4  # numpy's mt19937_state: key[624], pos
# CPython's random.Random object: PyObject_HEAD, then int index, uint32_t state[624].
_PY_STATE_OFFSET = 2 * ctypes.sizeof(ctypes.c_void_p)
_PY_STATE_BYTES = 4 + 624 * 4


def _raw_python_state(inst: random.Random) -> bytes:
    return ctypes.string_at(id(inst) + _PY_STATE_OFFSET, _PY_STATE_BYTES)


def _raw_python_state_works() -> bool:
    """Whether random's generator state can be read raw (as `_raw_python_state`): CPython
    with the layout above, checked on a private generator before and after a draw."""
    base = next((t for t in type(random._inst).__mro__ if t.__module__ == "_random"), None)
    if sys.implementation.name != "cpython" or base is None or base.__basicsize__ < _PY_STATE_OFFSET + _PY_STATE_BYTES:
        return False
    probe = random.Random(12345)
    for _ in range(2):
        raw = _raw_python_state(probe)
        words = np.frombuffer(raw, dtype=np.uint32, offset=4).tolist()
        index = int.from_bytes(raw[:4], sys.byteorder, signed=True)
        if probe.getstate()[1] != (*words, index):
            return False
        probe.random()
    return True


_RAW_PYTHON_STATE = _raw_python_state_works()


class RngCapture:
    """`rng_state()` after each batch, cheap when nothing drew: numpy's legacy
    get_state() alone costs ~90 us and Python's random.getstate() ~12 us, while their
    raw generator states read in ~1 us."""

    def __init__(self) -> None:
        self._np_raw: bytes | None = None
        self._np_state: tuple | None = None
        self._py_raw: tuple | None = None
        self._py_state: tuple | None = None
        self.last: tuple | None = None

    def _numpy_state(self) -> tuple:
        bitgen = np.random.mtrand._rand._bit_generator
        raw = ctypes.string_at(bitgen.ctypes.state_address, _MT19937_STATE_BYTES) + id(bitgen).to_bytes(8, "little")
        # Unchanged raw state and no cached gaussian: nothing drew (a draw that uses
        # the cached gaussian leaves the raw state as it was, so that case re-reads).
        if raw != self._np_raw or self._np_state is None or self._np_state[3]:
            name, keys, pos, has_gauss, gauss = np.random.get_state()
            self._np_state, self._np_raw = (name, keys.tobytes(), pos, has_gauss, gauss), raw
        return self._np_state

    def _python_state(self) -> tuple:
        # random.getstate() builds 625 ints (~12 us), and comparing them costs as much.
        # A draw that takes random.gauss's kept value changes only gauss_next.
        inst = random._inst
        if not _RAW_PYTHON_STATE:
            return inst.getstate()
        raw = (id(inst), _raw_python_state(inst), inst.gauss_next)
        if raw != self._py_raw or self._py_state is None:
            self._py_state, self._py_raw = inst.getstate(), raw
        return self._py_state

    def __call__(self) -> tuple:
        """The states; the very object returned last time when none changed."""
        state = (torch.get_rng_state().numpy().tobytes(), self._python_state(), self._numpy_state())
        if state != self.last:
            self.last = state
        return self.last


def set_rng_state(state: tuple) -> None:
    torch.set_rng_state(torch.frombuffer(bytearray(state[0]), dtype=torch.uint8))
    random.setstate(state[1])
    name, keys, pos, has_gauss, gauss = state[2]
    np.random.set_state((name, np.frombuffer(keys, dtype=np.uint32), pos, has_gauss, gauss))


def _seed_process(base_seed: int, worker_id: int) -> int:
    seed = base_seed + worker_id
    torch.set_num_threads(1)
    random.seed(seed)
    # torch.manual_seed, minus the CUDA lazy-seed queueing that formats a stack trace
    # (~2 ms per worker start); same generator states.
    torch.default_generator.manual_seed(seed)
    if torch.cuda.is_available():
        torch.cuda.manual_seed_all(seed)
    np.random.seed(torch_worker._generate_state(base_seed, worker_id))
    return seed


def _is_stateful(dataset) -> bool:
    return callable(getattr(dataset, "state_dict", None)) and callable(
        getattr(dataset, "load_state_dict", None)
    )


class Worker:
    """State of one worker; `handle(msg)` returns the reply messages to send."""

    def __init__(self, setup: WorkerSetup, pack=None, release=None, abandon=None):
        self.setup = setup
        self.pack = pack or (lambda data: data)
        self.release = release or (lambda ids: None)
        self.abandon = abandon or (lambda: None)
        self.fetcher = None
        self.ended = False
        self.init_error: ExceptionWrapper | None = None
        self.rng_capture = RngCapture()
        where = f"in DataLoader worker {'process' if setup.in_process else 'thread'} {setup.worker_id}"
        self.where = where
        if not setup.in_process and setup.dataset_kind == _DatasetKind.Iterable:
            # Threads share the interpreter: give each its own stream object, as a
            # process would have (a shallow copy, like the attributes a fork copies).
            setup.dataset = copy.copy(setup.dataset)
        seed = (
            _seed_process(setup.base_seed, setup.worker_id)
            if setup.in_process
            else setup.base_seed + setup.worker_id
        )
        _worker_info.set_current(
            torch_worker.WorkerInfo(
                id=setup.worker_id,
                num_workers=setup.num_workers,
                seed=seed,
                dataset=setup.dataset,
                worker_method="multiprocessing" if setup.in_process else "thread",
            ),
            in_process=setup.in_process,
        )
        try:
            if setup.worker_init_fn is not None:
                setup.worker_init_fn(setup.worker_id)
        except Exception:
            self.init_error = ExceptionWrapper(where=where)

    def _state_after_batch(self) -> dict:
        state: dict = {}
        ds = self.setup.dataset
        if self.setup.dataset_kind == _DatasetKind.Iterable and _is_stateful(ds):
            state["dataset"] = ds.state_dict()
        if self.setup.in_process:  # last: once captured, the state is sent
            sent = self.rng_capture.last
            rng = self.rng_capture()
            state["rng"] = SAME_RNG if rng is sent else rng  # the main process fills it in
        return state

    def start_epoch(self, restore: dict | None) -> None:
        s = self.setup
        self.ended = False
        self.fetcher = None
        if self.init_error is not None:
            return
        restore = restore or {}
        replay = restore.get("replay", 0)
        try:
            if s.in_process:
                # A replayed stream redraws what it drew, from the epoch's starting RNG;
                # otherwise the RNG is the one after this worker's last yielded batch.
                rng = restore.get("start_rng") if replay else restore.get("rng") or restore.get("start_rng")
                if rng is not None:
                    set_rng_state(rng)
            if restore.get("dataset") is not None:
                s.dataset.load_state_dict(restore["dataset"])
            self.fetcher = create_fetcher(
                s.dataset_kind, s.dataset, s.auto_collation, s.collate_fn, s.drop_last
            )
            for _ in range(replay):
                try:
                    self.fetcher.fetch(restore["replay_index"])
                except StopIteration:
                    self.ended = True
                    break
                finally:
                    self.abandon()
        except Exception:
            self.init_error = ExceptionWrapper(where=self.where)

    def run_task(self, task_id: int, index) -> tuple:
        if self.init_error is not None:
            error, self.init_error = self.init_error, None
            return ("error", task_id, error)
        if self.ended:
            return ("stop", task_id)
        start = time.perf_counter()
        try:
            data = self.fetcher.fetch(index)
        except StopIteration:
            if self.setup.dataset_kind != _DatasetKind.Iterable:
                self.abandon()
                return ("error", task_id, ExceptionWrapper(where=self.where))
            self.ended = True
            self.abandon()
            return ("stop", task_id)
        except Exception:
            self.abandon()
            return ("error", task_id, ExceptionWrapper(where=self.where))
        fetch_s = time.perf_counter() - start
        try:
            payload = self.pack(data)
            state = self._state_after_batch()  # after the pack: a failed batch sends no state
        except Exception:
            self.abandon()
            return ("error", task_id, ExceptionWrapper(where=self.where))
        return ("data", task_id, payload, state, fetch_s)

    def handle(self, msg: tuple):
        """Messages (the last item: segment ids the main process released): ("epoch",
        restore, _), ("task", task_id, index, _), ("free", _), ("sync", _)."""
        kind = msg[0]
        self.release(msg[-1])
        if kind == "epoch":
            self.start_epoch(msg[1])
            return None
        if kind == "task":
            return self.run_task(msg[1], msg[2])
        if kind == "free":
            return None
        if kind == "sync":  # every reply before this one has been sent
            return ("synced", None, rng_state() if self.setup.in_process else None)
        raise AssertionError(f"unknown worker message {kind!r}")
