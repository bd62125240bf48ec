"""One pass over a DataLoader: torch's ordering rules, plus a resumable position.

The order of work follows torch's `_MultiProcessingDataLoaderIter` exactly: the same
random draws in the same order (sampler iterator, then the workers' base seed), tasks
dealt round-robin to the workers still active, at most `prefetch_factor` per worker,
results yielded in task order (or as they come with `in_order=False`), tasks of a worker
whose iterable ran out skipped. That is what makes the batches equal to torch's.

The position is explicit: the random state the epoch started from, how many batches were
yielded, and per worker its last yielded state. `state()` returns it; a new iterator
built from it re-draws the same permutation, skips the yielded batches without loading
them, and restores each worker.
"""
from __future__ import annotations

import time
import warnings
from typing import Any

import torch
from torch.utils.data import _utils as torch_utils
from torch.utils.data.dataloader import _DatasetKind

from . import _collate_hook, _position_rng
from ._heap import keep_freed_memory
from ._stream_collate import create_fetcher
from ._worker_loop import WorkerSetup, _is_stateful
from ._workers import ProcessPool, ThreadPool, UnreadBatch, WorkerDied
from .sampling import batch_indices, safe_to_draw_before_fork

# 2: the random states are dicts (_position_rng); 1 (one tensor each) still loads.
STATE_VERSION = 2
_LOADABLE_VERSIONS = (1, 2)


def _draw_base_seed(generator) -> int:
    return torch.empty((), dtype=torch.int64).random_(generator=generator).item()


class _StageTimes:
    def __init__(self):
        self.batches = 0
        self.wait_s = 0.0
        self.fetch_s = 0.0
        self.first_batch_s: float | None = None
        self.per_worker: dict[int, int] = {}


class LoaderIterator:
    def __init__(self, loader, restore: dict | None = None):
        self._loader = loader
        self._kind = loader._dataset_kind
        self._num_workers = loader.num_workers
        self._in_order = loader.in_order
        self._timeout = loader.timeout
        self._created = time.perf_counter()
        if self._num_workers == 0 and self._timeout != 0:
            raise AssertionError("_SingleProcessDataLoaderIter requires timeout == 0")
        if self._num_workers > 0 and not loader.prefetch_factor > 0:  # torch's constructor lets 0 by
            raise AssertionError("prefetch_factor must be greater than 0 for MultiProcessingDataLoaderIter")
        self._pin_memory = loader.pin_memory and torch.accelerator.is_available()
        _warn_pin_memory(loader)
        self._pool = None
        if self._num_workers == 0 or loader.worker_type == "thread":
            keep_freed_memory()  # fetches run here: per-sample arrays, made and freed batch after batch
        self._reports = True  # leaves its state to the loader when it goes (see loader.py)
        self._times = _StageTimes()
        self._base_seed: int | None = None
        self._start_epoch(restore, first=True)

    # -- epoch set-up -----------------------------------------------------------------
    def _start_epoch(self, restore: dict | None, first: bool) -> None:
        loader = self._loader
        g = loader.generator
        n = max(self._num_workers, 1)
        # Each worker's RNG at the start of this epoch: None = freshly seeded (a first
        # epoch); a later epoch of persistent workers carries on from the last one.
        start_rngs = [None] * n if first else list(self._rng_now)
        if restore is not None:  # checked by loader.load_state_dict
            if restore["finished"] or restore["pull_rng"] is None:
                # Nothing of this epoch was drawn yet (or it ended): start it afresh,
                # from where the saved loader would have started it.
                if restore["fresh_rng"] is not None:  # the global RNG is the user's to restore
                    _position_rng.restore(loader, restore["fresh_rng"], with_global=False)
                if loader.persistent_workers and restore["finished"]:
                    # its workers lived on: no new base seed, and their RNGs carry over
                    self._base_seed, first = restore["base_seed"], False
                    start_rngs = [w.get("rng_now") for w in restore["workers"]]
                restore = None
        self._rng_now = start_rngs
        self._iter_rng = _position_rng.capture(loader)
        self._pull_rng = None
        self._peeked = None
        self._pos = 0  # epoch position of the next batch index drawn
        if restore is None:
            self._sampler_iter = batch_indices(loader._index_sampler)
            if first:  # torch draws the workers' base seed once per iterator
                self._base_seed = _draw_base_seed(g)
        else:  # resuming draws nothing from the user's random state
            self._base_seed = restore["base_seed"]
        self._done_prefix = 0
        self._done_extra: set[int] = set()
        self._len_called = loader._IterableDataset_len_called
        self._num_yielded = 0
        self._finished = False
        self._wstate = [{"batches": 0, "exhausted": False, "start_rng": r} for r in start_rngs]
        self._cycle = 0
        replay_index = None
        if restore is not None:
            self._done_extra = set(restore["yielded_extra"])  # skipped as they come up
            self._fast_forward(restore)
            self._done_prefix = restore["yielded_prefix"]
            self._num_yielded = restore["num_yielded"]
            self._cycle = restore["cycle"]
            self._wstate = [dict(w) for w in restore["workers"]]
            self._rng_now = [w.get("rng_now") for w in self._wstate]
            if self._kind == _DatasetKind.Iterable:
                replay_index = next(iter(loader._index_sampler))
        self._cycle_after = self._cycle
        if self._num_workers == 0:
            self._start_serial(restore, replay_index)
        else:
            self._start_workers(restore, replay_index)

    def _fast_forward(self, restore: dict) -> None:
        """Re-draws the saved epoch's indices and skips the batches already yielded."""
        loader = self._loader
        user_rng = torch.get_rng_state()
        try:
            _position_rng.restore(loader, restore["iter_rng"])  # samplers may draw in iter() ...
            self._sampler_iter = batch_indices(loader._index_sampler)
            _position_rng.restore(loader, restore["pull_rng"])  # ... or on their first next()
            self._pull_rng = restore["pull_rng"]
            for done in range(restore["yielded_prefix"]):
                try:
                    self._pull_index()
                except StopIteration:
                    raise ValueError(f"DataLoader state is {restore['yielded_prefix']} batches into its epoch, "
                                     f"and this loader's epoch has {done}: it was saved for another dataset "
                                     "or sampler") from None
            try:  # a lazy sampler's first draw happens here, inside the saved state
                self._peeked = self._pull_index()
            except StopIteration:
                self._peeked = StopIteration
        finally:
            torch.set_rng_state(user_rng)

    def _worker_restore(self, w: int, replay_index) -> dict:
        ws = self._wstate[w]
        out: dict[str, Any] = {"rng": ws.get("rng"), "start_rng": ws.get("start_rng")}
        if self._kind == _DatasetKind.Iterable:
            if "dataset" in ws:
                out["dataset"] = ws["dataset"]
            else:
                out["replay"], out["replay_index"] = ws["batches"], replay_index
        return out

    def _start_serial(self, restore, replay_index) -> None:
        loader = self._loader
        ds = loader.dataset
        saved = self._wstate[0] if restore is not None and self._kind == _DatasetKind.Iterable else None
        if saved is not None and "dataset" in saved:
            ds.load_state_dict(saved["dataset"])
        self._fetcher = create_fetcher(
            self._kind, ds, loader._auto_collation, loader.collate_fn, loader.drop_last
        )
        if saved is not None and "dataset" not in saved:
            try:
                for _ in range(saved["batches"]):
                    self._fetcher.fetch(replay_index)
            except StopIteration:  # the stream is shorter now: the next fetch ends it
                pass

    def _setups(self) -> list[WorkerSetup]:
        loader = self._loader
        return [
            WorkerSetup(
                dataset_kind=self._kind,
                dataset=loader.dataset,
                auto_collation=loader._auto_collation,
                collate_fn=loader.collate_fn,
                drop_last=loader.drop_last,
                base_seed=self._base_seed,
                worker_init_fn=loader.worker_init_fn,
                worker_id=i,
                num_workers=self._num_workers,
                in_process=loader.worker_type == "process",
            )
            for i in range(self._num_workers)
        ]

    def _start_workers(self, restore, replay_index) -> None:
        loader = self._loader
        if self._pool is None:
            if loader.worker_type == "thread":
                self._pool = ThreadPool(self._setups())
            else:
                ctx = loader.multiprocessing_context or torch.multiprocessing
                self._pool = ProcessPool(self._setups(), ctx)
        for w in range(self._num_workers):
            self._pool.send(w, ("epoch", self._worker_restore(w, replay_index)))
        self._prefetch = loader.prefetch_factor
        self._send_idx = 0
        self._rcvd_idx = 0
        self._task_info: dict[int, tuple] = {}
        self._active = [not w["exhausted"] for w in self._wstate]
        self._num_tasks = [0] * self._num_workers
        self._holding = isinstance(self._pool, ProcessPool) and not self._pool.procs
        # Workers are forked within iter(), so all see the dataset as it is now, as in
        # torch. Worker 0 is forked first and computes while the others are forked; on a
        # machine with few cores the others would slow it down: they get their tasks
        # once the first batch is in. Where drawing cannot change what a worker sees
        # (torch's shuffling default), the first indices are drawn before the forks:
        # worker 0 finds its task waiting, and the permutation is not built under
        # copy-on-write faults. Otherwise every worker is forked before the sampler
        # draws, as in torch (a generator it shares with the dataset stays in step).
        draw_first = not self._holding or safe_to_draw_before_fork(loader._index_sampler)
        if draw_first:
            self._put_prefetch()
        if self._holding:
            self._pool.start(0)
            self._pool.start_all(hold=True)
        if not draw_first:
            self._put_prefetch()

    def _put_prefetch(self) -> None:
        for _ in range(self._prefetch * self._num_workers):
            self._try_put_index()

    def _release_held(self) -> None:
        if self._holding:
            self._holding = False
            self._pool.release_held()

    # -- indices ----------------------------------------------------------------------
    def _pull_index(self):
        if self._peeked is not None:
            peeked, self._peeked = self._peeked, None
            if peeked is StopIteration:
                raise StopIteration
            return peeked
        if self._pull_rng is None:
            self._pull_rng = _position_rng.capture(self._loader)
        index = next(self._sampler_iter)
        pos = self._pos
        self._pos += 1
        return pos, index

    def _next_index(self):
        """(position, index) of the next batch still to load; StopIteration at the end."""
        while True:
            pos, index = self._pull_index()
            if pos not in self._done_extra:  # yielded before a resume (in_order=False)
                return pos, index

    def _try_put_index(self) -> None:
        try:
            pos, index = self._next_index()
        except StopIteration:
            return
        max_tasks = self._prefetch * self._num_workers
        for _ in range(self._num_workers):
            w = self._cycle
            self._cycle = (self._cycle + 1) % self._num_workers
            if self._active[w] and (
                self._in_order or self._num_tasks[w] < max_tasks // sum(self._active)
            ):
                break
        else:
            return
        self._pool.send(w, ("task", self._send_idx, index))
        self._task_info[self._send_idx] = (w, pos)
        self._num_tasks[w] += 1
        self._send_idx += 1

    # -- iteration --------------------------------------------------------------------
    def __iter__(self):
        return self

    def __len__(self) -> int:
        return len(self._loader._index_sampler)

    def __next__(self):
        if self._finished:
            raise StopIteration
        start = time.perf_counter()
        try:
            data = self._next_serial() if self._num_workers == 0 else self._next_worker()
        except StopIteration:
            self._finish()
            raise
        except WorkerDied:  # the pass cannot go on
            self._finished = True
            self._shutdown()
            raise
        now = time.perf_counter()
        t = self._times
        t.wait_s += now - start
        t.batches += 1
        if t.first_batch_s is None:
            t.first_batch_s = now - self._created
        self._num_yielded += 1
        self._warn_len()
        if self._pin_memory:
            data = torch_utils.pin_memory.pin_memory(data, torch.accelerator.current_accelerator().type)
        return data

    def _next_serial(self):
        pos, index = self._next_index()
        t0 = time.perf_counter()
        was_fetching = _collate_hook.mark_fetching(True)
        try:
            data = self._fetcher.fetch(index)
        finally:
            _collate_hook.mark_fetching(was_fetching)
        self._times.fetch_s += time.perf_counter() - t0
        self._mark_done(pos)
        ws = self._wstate[0]
        ws["batches"] += 1
        if self._kind == _DatasetKind.Iterable and _is_stateful(self._loader.dataset):
            ws["dataset"] = self._loader.dataset.state_dict()
        return data

    def _next_worker(self):
        while True:
            while self._rcvd_idx < self._send_idx:
                info = self._task_info.get(self._rcvd_idx)
                if info is not None:
                    w = info[0]
                    if len(info) == 3 or self._active[w]:
                        break
                    del self._task_info[self._rcvd_idx]  # its worker's stream has ended
                    self._mark_done(info[1])
                self._rcvd_idx += 1
            else:
                raise StopIteration
            if len(self._task_info[self._rcvd_idx]) == 3:
                w, pos, msg = self._task_info.pop(self._rcvd_idx)
                self._rcvd_idx += 1
                return self._yield(w, pos, msg)
            w, msg = self._get()
            task_id = msg[1]
            if msg[0] == "stop":
                self._active[w] = False
                self._wstate[w]["exhausted"] = True
                self._try_put_index()
                continue
            if task_id != self._rcvd_idx:
                if not self._in_order:
                    w, pos = self._task_info.pop(task_id)
                    return self._yield(w, pos, msg)
                self._task_info[task_id] += (msg,)
            else:
                w, pos = self._task_info.pop(task_id)
                self._rcvd_idx += 1
                return self._yield(w, pos, msg)

    def _get(self):
        due = self._task_info.get(self._rcvd_idx)
        if self._holding and (due is None or self._pool.held(due[0])):
            self._release_held()  # the batch due next is a held worker's
        timeout = self._timeout if self._timeout > 0 else None
        self._pool.flush_frees()
        got = self._pool.recv(timeout)
        if got is None:
            raise RuntimeError(f"DataLoader timed out after {self._timeout} seconds")
        return got

    def _yield(self, w: int, pos: int, msg: tuple):
        self._release_held()
        self._num_tasks[w] -= 1
        self._try_put_index()
        self._mark_done(pos)  # an error is this batch's outcome too: torch moves on
        if msg[0] == "error":
            msg[2].reraise()
        _, _, data, state, fetch_s = msg
        self._times.fetch_s += fetch_s
        self._times.per_worker[w] = self._times.per_worker.get(w, 0) + 1
        ws = self._wstate[w]
        ws["batches"] += 1
        ws.update(state)
        if "rng" in state:
            self._rng_now[w] = state["rng"]
        if self._in_order:
            self._cycle_after = (w + 1) % self._num_workers
        if isinstance(data, UnreadBatch):  # the worker made it; the main process failed to read it
            data.error.reraise()
        return data

    def _mark_done(self, pos: int) -> None:
        if pos < self._done_prefix:
            return
        if pos == self._done_prefix:
            self._done_prefix += 1
            while self._done_prefix in self._done_extra:
                self._done_extra.remove(self._done_prefix)
                self._done_prefix += 1
        else:
            self._done_extra.add(pos)

    def _warn_len(self) -> None:
        if (
            self._kind == _DatasetKind.Iterable
            and self._len_called is not None
            and self._num_yielded > self._len_called
        ):
            msg = (
                f"Length of IterableDataset {self._loader.dataset} was reported to be "
                f"{self._len_called}(when accessing len(dataloader)), but {self._num_yielded} "
                "samples have been fetched. "
            )
            if self._num_workers > 0:
                msg += (
                    "For multiprocessing data-loading, this could be caused by not properly "
                    "configuring the IterableDataset replica at each worker. Please see "
                    "https://pytorch.org/docs/stable/data.html#torch.utils.data.IterableDataset "
                    "for examples."
                )
            warnings.warn(msg, stacklevel=3)

    # -- end, reuse, state ------------------------------------------------------------
    def _finish(self) -> None:
        self._finished = True
        if not self._loader.persistent_workers:
            self._shutdown()

    def reset(self, restore: dict | None = None) -> None:
        """Next epoch on the same (persistent) workers."""
        if self._pool is not None and self._pool.closed:
            self._pool = None
        if self._pool is not None:
            self._release_held()
        self._drain()
        self._start_epoch(restore, first=False)

    def _drain(self) -> None:
        """Reads what workers still send for the last epoch, up to a sync reply from each,
        so none of it mixes into the next epoch; keeps their RNG states."""
        if self._pool is None or self._num_workers == 0:
            return
        for w in range(self._num_workers):
            self._pool.send(w, ("sync",))
        waiting = set(range(self._num_workers))
        while waiting:
            w, msg = self._get()
            if msg[0] == "synced":
                waiting.discard(w)
                if msg[2] is not None:
                    self._rng_now[w] = msg[2]

    def state(self) -> dict:
        # A worker whose stream has ended may still have a batch received and not yet
        # yielded (a slower worker's was due first): it is not done until that one is.
        waiting = {info[0] for info in getattr(self, "_task_info", {}).values() if len(info) == 3}
        workers = [dict(w, rng_now=r, exhausted=w["exhausted"] and i not in waiting)
                   for i, (w, r) in enumerate(zip(self._wstate, self._rng_now))]
        return {
            "version": STATE_VERSION,
            "finished": self._finished,
            "dataset_kind": self._kind,
            "num_workers": self._num_workers,
            "iter_rng": self._iter_rng,
            "pull_rng": self._pull_rng,
            "fresh_rng": self._fresh_rng(),
            "base_seed": self._base_seed,
            "yielded_prefix": self._done_prefix,
            "yielded_extra": sorted(self._done_extra),
            "num_yielded": self._num_yielded,
            "batch_size": self._loader.batch_size,
            "cycle": self._cycle_after if self._in_order else 0,
            "workers": workers,
        }

    def _fresh_rng(self):
        return _position_rng.capture(self._loader) if self._finished else self._iter_rng

    def stats(self) -> dict:
        t = self._times
        return {
            "batches": t.batches,
            "time_to_first_batch_s": t.first_batch_s,
            "wait_s": t.wait_s,
            "fetch_s": t.fetch_s,
            "batches_per_worker": dict(sorted(t.per_worker.items())),
            "workers": self._num_workers,
            "worker_type": self._loader.worker_type if self._num_workers else "main",
        }

    def _shutdown(self) -> None:
        if self._pool is not None:
            self._pool.shutdown()

    def __del__(self):
        try:
            if self._reports:
                self._loader._keep(self, self.state(), self.stats())
        except Exception:  # interpreter shutdown: nothing to keep
            pass
        try:
            self._shutdown()
        except Exception:
            pass


def _checked_restore(state: dict, loader) -> dict:
    state = dict(state)
    if state.get("version") not in _LOADABLE_VERSIONS:
        raise ValueError(f"unsupported DataLoader state version {state.get('version')!r}")
    if state["dataset_kind"] != loader._dataset_kind:
        raise ValueError("DataLoader state was saved for a different kind of dataset")
    # A position in batches (not one a dataset keeps itself, in samples) needs the same
    # batch_size. (An epoch too short for it is found in _fast_forward: len() of a sampler
    # may be an estimate.)
    counts_batches = state["dataset_kind"] == _DatasetKind.Map or not (
        state.get("dataset") or any("dataset" in w for w in state["workers"]))
    saved_batch = state.get("batch_size", loader.batch_size)  # (states from before it was kept)
    if counts_batches and saved_batch != loader.batch_size:
        raise ValueError(f"DataLoader state was saved with batch_size={saved_batch}, this loader has "
                         f"batch_size={loader.batch_size}: its position counts batches")
    same_workers = state["num_workers"] == loader.num_workers
    merged = state.get("dataset") if state["dataset_kind"] == _DatasetKind.Iterable else None
    if merged:  # one state for all workers (see DataLoader.state_dict): any num_workers
        if not same_workers:
            n = max(loader.num_workers, 1)
            state["workers"] = [{"batches": 0, "exhausted": False} for _ in range(n)]
            state["cycle"] = 0
        # The merged state says what each worker has left. A saved flag that a worker's
        # stream ended may be another rank's, or belong to another deal of the samples:
        # kept only where the state is one rank's, on the topology it was saved on.
        keep = same_workers and len(merged.get("ranks", [0])) == 1
        state["workers"] = [dict(w, dataset=merged, exhausted=keep and w["exhausted"]) for w in state["workers"]]
        return state
    if state["dataset_kind"] == _DatasetKind.Iterable and not same_workers:
        raise ValueError(
            "an IterableDataset resumes only with the num_workers it was saved with "
            f"(saved {state['num_workers']}, now {loader.num_workers}): each worker holds "
            "its own part of the stream"
        )
    if not same_workers:  # map-style: batches are exact; worker RNG states don't carry over
        state["workers"] = [{"batches": 0, "exhausted": False} for _ in range(max(loader.num_workers, 1))]
        state["cycle"] = state["yielded_prefix"] % max(loader.num_workers, 1)
    return state


def _warn_pin_memory(loader) -> None:
    if loader.pin_memory and loader.pin_memory_device:
        warnings.warn(
            "pin_memory_device is deprecated, the current accelerator will be used as the device,"
            f"ignore pin_memory_device='{loader.pin_memory_device}'.",
            stacklevel=4,
        )
    if loader.pin_memory and not torch.accelerator.is_available():
        warnings.warn(
            "'pin_memory' argument is set as true but no accelerator is found, "
            "then device pinned memory won't be used.",
            stacklevel=4,
        )
