"""`WebDataset`: samples of sharded tar files, split over ranks and workers, resumable."""
from __future__ import annotations

import contextlib
import functools
import multiprocessing
import os
import resource
import zlib
from collections import OrderedDict
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch
from torch.utils.data import IterableDataset

from .._worker_info import get_worker_info
from ..errors import ShardError, check_state_type
from . import _index, _local, _members, _scanning, _tar, partition
from .urls import PIPE_NOT_ALLOWED, expand_urls, indexable_path, open_stream, read_chunks

# 2: partition k is worker * world_size + rank (it was rank * num_workers + worker)
STATE_VERSION = 2
# shards kept open per worker (mapped or read with pread: a file descriptor each): a global shuffle reads from
# every shard, so as many as the descriptor limit comfortably allows
MAX_OPEN_SHARDS = max(64, min(1024, resource.getrlimit(resource.RLIMIT_NOFILE)[0] // 4))
MAX_SPAN_READERS = 8  # of those, shards read in order with pread too (one more descriptor each)
_CHUNK = 256  # samples built together, at most,
_CHUNK_BYTES = 4 << 20  # and about this many bytes: large samples come steadily, not in bursts


def _chunk_len(samples: list[_members.Samples]) -> int:
    nbytes = sum(int(s.size.sum()) for s in samples)
    count = sum(len(s) for s in samples)
    return int(np.clip(_CHUNK_BYTES * count // max(nbytes, 1), 8, _CHUNK))


@dataclass
class _Plan:
    """What one pass of one partition reads: fixed when iteration starts."""

    epoch: int
    rank: int
    world_size: int
    worker: int
    num_workers: int
    layers: list = field(default_factory=list)  # [[parts, counts], ...] of earlier runs
    skip: int = 0                                # items of this partition already delivered
    total: int | None = None                     # positions over all partitions (epoch_size)

    @property
    def parts(self) -> int:
        return self.world_size * self.num_workers

    @property
    def k(self) -> int:
        """This partition's stride offset: a rank's partitions interleave (see partition)."""
        return self.worker * self.world_size + self.rank

    @property
    def quota(self) -> int | None:
        """Positions this partition yields with an epoch_size."""
        return None if self.total is None else partition.share(self.total, self.parts, self.k)


@dataclass
class _Pass:
    plan: _Plan
    consumed: int = 0  # positions of this partition's stream taken, delivered or skipped
    stats: dict = field(default_factory=lambda: {"samples": 0, "bytes": 0, "shards": 0, "failures": 0,
                                                  "skipped_samples": 0})
    last_error: str | None = None


def _distributed() -> bool:
    return torch.distributed.is_available() and torch.distributed.is_initialized()


def _process_topology() -> tuple[int, int] | None:
    """(rank, world_size) from torch.distributed, else RANK / WORLD_SIZE, else None."""
    if _distributed():
        return torch.distributed.get_rank(), torch.distributed.get_world_size()
    if "RANK" in os.environ and "WORLD_SIZE" in os.environ:
        return int(os.environ["RANK"]), int(os.environ["WORLD_SIZE"])
    return None


class WebDataset(IterableDataset):
    """Samples of WebDataset tar shards, one dict per sample: `__key__`, `__url__` and
    the bytes of each member under its extension (webdataset's convention).

    Args:
        urls: a list, a brace pattern (`train-{000000..000199}.tar`), a glob, local paths
            or `file://`; `https://`, `s3://`, `gs://`... stream through fsspec.
        shuffle: shuffle samples: globally when every shard is local (indexed), else
            through a buffer of `buffer_size` samples.
        seed: every order is a pure function of (seed, epoch); see `set_epoch`.
        shard_shuffle: shuffle the order of shards each epoch (None: as `shuffle`).
        resampled: draw shards with replacement, forever (bound it with `epoch_size`).
        rank, world_size: this process's place; default: torch.distributed when
            initialised (create the dataset after init_process_group), else the RANK /
            WORLD_SIZE environment, else 0 of 1.
        epoch_size: samples per epoch over all ranks; every rank then yields the same
            number (cut, or padded by repeating from the start of the epoch's order, as
            DistributedSampler pads), as DDP needs.
        on_error: "raise" a `ShardError` naming the shard and byte offset, or "skip" the
            bad part (counted in `stats()`), up to `max_failures` per worker.
        require: extensions every sample must have (e.g. ("jpg", "cls")).
        index_dir: where shard indexes are cached: None = beside the shard (or the user
            cache dir when that is read-only), a directory, or False for no cache.
        allow_pipe: allow `pipe:` URLs (they run a shell command).
        max_member_size: a tar header declaring more data than this is damage.
        chunk_size: read size of streamed (non-local) shards.
        views: yield memoryview slices of the shard (its mmap, or the streamed buffer)
            instead of bytes: no copy. Decode them where they are read (in the worker);
            they cannot be pickled to the main process.
    """

    def __init__(
        self,
        urls: str | os.PathLike | Iterable[str | os.PathLike],
        *,
        shuffle: bool = False,
        seed: int = 0,
        shard_shuffle: bool | None = None,
        buffer_size: int = 1000,
        resampled: bool = False,
        rank: int | None = None,
        world_size: int | None = None,
        epoch_size: int | None = None,
        on_error: str = "raise",
        max_failures: int = 100,
        require: Iterable[str] = (),
        index_dir: str | bool | None = None,
        allow_pipe: bool = False,
        max_member_size: int = _tar.DEFAULT_MAX_MEMBER_SIZE,
        chunk_size: int = 4 << 20,
        views: bool = False,
    ) -> None:
        super().__init__()
        if on_error not in ("raise", "skip"):
            raise ValueError(f"on_error must be 'raise' or 'skip', got {on_error!r}")
        for name, value, low in (("buffer_size", buffer_size, 1), ("max_failures", max_failures, 0),
                                 ("max_member_size", max_member_size, 1), ("chunk_size", chunk_size, 512)):
            if not isinstance(value, int) or value < low:
                raise ValueError(f"{name} must be an int >= {low}, got {value!r}")
        if epoch_size is not None and (not isinstance(epoch_size, int) or epoch_size < 1):
            raise ValueError(f"epoch_size must be a positive int or None, got {epoch_size!r}")
        if (rank is None) != (world_size is None):
            raise ValueError("give both rank and world_size, or neither")
        if world_size is not None and not 0 <= rank < world_size:
            raise ValueError(f"rank must be in [0, world_size), got rank={rank}, world_size={world_size}")
        self.urls = expand_urls(urls)
        for url in self.urls:  # fail at construction, not in a worker
            if url.startswith("pipe:") and not allow_pipe:
                raise ShardError(PIPE_NOT_ALLOWED, url=url)
        self.shuffle = shuffle
        self.seed = int(seed)
        self.shard_shuffle = shuffle if shard_shuffle is None else shard_shuffle
        self.buffer_size = buffer_size
        self.resampled = resampled
        self.rank, self.world_size = rank, world_size
        # Read here, in the main process: a loader's worker processes are not part of the
        # process group (create the dataset after init_process_group).
        self._found_topology = _process_topology() if rank is None else None
        self.epoch_size = epoch_size
        self.on_error = on_error
        self.max_failures = max_failures
        self.require = tuple(e.lower() for e in require)
        self.index_dir = index_dir
        self.allow_pipe = allow_pipe
        self.max_member_size = max_member_size
        self.chunk_size = chunk_size
        self.views = views
        # local, not resampled: every shard indexed, global sample order and elastic resume
        self.indexed = not resampled and all(indexable_path(u) is not None for u in self.urls)
        # Shared with worker processes forked or spawned from here, so that set_epoch
        # reaches persistent workers too (a plain int would stay behind in their copy).
        self._epoch = multiprocessing.RawValue("q", 0)
        self._restore: dict | None = None
        self._pass: _Pass | None = None
        self._indexes: dict[int, _index.ShardIndex] = {}
        self._open: OrderedDict[int, _members.SampleMaker] = OrderedDict()
        self._readers: OrderedDict[int, None] = OrderedDict()  # shards of _open with a span reader

    # -- epochs, topology ---------------------------------------------------------------
    def set_epoch(self, epoch: int) -> None:
        """Use the order of this epoch on the next iteration (like DistributedSampler);
        also reaches the loader's persistent workers. A position loaded for another epoch
        is dropped: that epoch is over, and this one starts from its beginning."""
        self._epoch.value = int(epoch)
        if self._restore is not None and self._restore["epoch"] != int(epoch):
            self._restore = None

    @property
    def epoch(self) -> int:
        return int(self._epoch.value)

    def _topology(self) -> tuple[int, int, int, int]:
        if self.rank is not None:
            rank, world = self.rank, self.world_size
        else:
            rank, world = self._found_topology or _process_topology() or (0, 1)
        if not 0 <= rank < world:
            raise ValueError(f"rank {rank} is not in [0, world_size={world})")
        info = get_worker_info()
        worker, workers = (info.id, info.num_workers) if info is not None else (0, 1)
        return rank, world, worker, workers

    def __copy__(self) -> WebDataset:  # a thread worker's copy: the epoch stays shared
        new = object.__new__(type(self))
        new.__dict__.update(self.__dict__, _open=OrderedDict(), _readers=OrderedDict(), _pass=None)
        return new

    def __setstate__(self, state: dict) -> None:
        if isinstance(state["_epoch"], int):
            state["_epoch"] = multiprocessing.RawValue("q", state["_epoch"])
        self.__dict__.update(state)

    def __getstate__(self) -> dict:
        state = dict(self.__dict__)
        state["_open"] = OrderedDict()  # mmaps stay in the process that opened them
        state["_readers"] = OrderedDict()
        state["_pass"] = None
        if multiprocessing.context.get_spawning_popen() is None:  # a copy, not a new worker
            state["_epoch"] = self.epoch
        if self.rank is None and state["_found_topology"] is None:  # pickled for a spawned worker
            state["_found_topology"] = _process_topology()
        return state

    # -- iteration ------------------------------------------------------------------------
    def __iter__(self) -> Iterator[dict]:
        restore, self._restore = self._restore, None
        p = self._pass = _Pass(self._plan(self._topology(), restore))
        return _Samples(self, p)

    def _plan(self, topology, restore: dict | None) -> _Plan:
        rank, world, worker, workers = topology
        plan = _Plan(self.epoch, rank, world, worker, workers)
        if restore is not None:
            plan.epoch = restore["epoch"]
            consumed = dict(map(tuple, restore["consumed"]))
            same = restore["world_size"] == world and restore["num_workers"] == workers
            everyone = sorted(restore["ranks"]) == list(range(restore["world_size"]))
            plan.layers = [list(x) for x in restore["layers"]]
            if same and rank in restore["ranks"]:
                plan.skip = consumed.get(plan.k, 0)
            elif self.indexed and everyone:  # elastic: the rest of the epoch, re-dealt
                parts = restore["world_size"] * restore["num_workers"]
                plan.layers.append([parts, [consumed.get(j, 0) for j in range(parts)]])
            elif not self.indexed:
                raise ValueError(
                    "a streamed WebDataset resumes only with the world_size and num_workers it was "
                    f"saved with (saved {restore['world_size']} x {restore['num_workers']}, now "
                    f"{world} x {workers}); local indexed shards resume with any")
            else:
                raise ValueError(
                    f"this state covers ranks {restore['ranks']} of {restore['world_size']}: resuming with "
                    f"another world_size or num_workers needs every rank's state merged "
                    "(DataLoader.state_dict() gathers them under torch.distributed; else use "
                    "WebDataset.merge_worker_states)")
        if self.epoch_size is not None:  # what earlier runs of this epoch took counts against it
            done = sum(sum(counts) for _, counts in plan.layers)
            plan.total = partition.padded_total(max(self.epoch_size - done, 0), world)
        return plan

    def _fail(self, p: _Pass, error: ShardError, samples: int = 0) -> None:
        if self.on_error == "raise":
            raise error
        p.stats["failures"] += 1
        p.stats["skipped_samples"] += samples
        p.last_error = str(error)
        if p.stats["failures"] > self.max_failures:
            raise ShardError(f"more than max_failures={self.max_failures} failures; the last: {error}",
                             url=error.url, offset=error.offset, key=error.key)

    def _built(self, maker: _members.SampleMaker, idx: np.ndarray) -> tuple[list, list[int]]:
        """Samples idx of one shard built together, and the member bytes of each; a
        ShardError in place of a sample lacking a required member."""
        samples, nbytes = maker.make_many(idx)
        if self.require:
            for j, (i, sample) in enumerate(zip(idx.tolist(), samples)):
                missing = [e for e in self.require if e not in sample]
                if missing:
                    samples[j] = ShardError(f"sample has no {', '.join(missing)} member", url=maker.url,
                                            offset=int(maker.samples.header[i]), key=sample["__key__"])
                    nbytes[j] = 0
        return samples, nbytes

    def _emit(self, p: _Pass, item: dict | ShardError, nbytes: int) -> dict | None:
        """The sample to yield (None for a bad one, counted or raised as it comes up)."""
        if isinstance(item, ShardError):
            self._fail(p, item, samples=1)
            return None
        p.stats["bytes"] += nbytes
        return item

    # -- local, indexed shards --------------------------------------------------------------
    def _index(self, shard: int) -> _index.ShardIndex:
        index = self._indexes.get(shard)
        if index is None:
            path = indexable_path(self.urls[shard])
            index = _index.load_or_build(path, self.index_dir, self.max_member_size)
            self._indexes[shard] = index
        return index

    def _maker(self, shard: int) -> _members.SampleMaker:
        maker = self._open.get(shard)
        if maker is None:
            if len(self._open) >= MAX_OPEN_SHARDS:
                self._open.popitem(last=False)
            url = self.urls[shard]
            samples = self._index(shard).samples
            path = indexable_path(url)
            mapped = self.views or not _members.large_samples(samples)
            data = _local.open_shard(path, url, mapped)
            # small members: mapped, and also read in spans where a shard is read in order (not
            # in a global shuffle: there the mapping pays for each page once, a span every time)
            spans = mapped and not self.views and len(data) > 0 and not (self.indexed and self.shuffle)
            maker = _members.SampleMaker(samples, data, url, self.views,
                                         functools.partial(_local.open_shard, path, url, False) if spans else None)
            self._open[shard] = maker
        else:
            self._open.move_to_end(shard)
        if maker.open_reader is not None:  # span readers: only the most recently used shards keep one
            self._readers[shard] = None
            self._readers.move_to_end(shard)
            while len(self._readers) > MAX_SPAN_READERS:
                old = self._open.get(self._readers.popitem(last=False)[0])
                if old is not None:
                    old.reader = None
        return maker

    def _load_indexes(self, p: _Pass) -> np.ndarray:
        """Sample counts of every shard; damage is counted by the partition owning the shard."""
        counts = np.zeros(len(self.urls), dtype=np.int64)
        for s, url in enumerate(self.urls):
            try:
                index = self._index(s)
            except OSError as e:
                if s % p.plan.parts == p.plan.k or self.on_error == "raise":
                    self._fail(p, ShardError(f"cannot read shard: {e.strerror or e}", url=url))
                continue
            counts[s] = len(index)
            if s % p.plan.parts == p.plan.k or self.on_error == "raise":
                for offset, reason in index.damage:
                    self._fail(p, ShardError(reason, url=url, offset=offset))
                for prob in index.samples.problems:
                    self._fail(p, ShardError(prob.reason, url=url, offset=prob.offset, key=prob.key), samples=1)
        return counts

    def _epoch_order(self, counts: np.ndarray, epoch: int) -> np.ndarray:
        starts = np.concatenate([[0], np.cumsum(counts)])
        if self.shuffle:
            return partition.permutation(int(starts[-1]), self.seed, epoch)
        shards = partition.permutation(len(counts), self.seed, epoch, 1) if self.shard_shuffle else range(len(counts))
        parts = [np.arange(starts[s], starts[s + 1]) for s in shards]
        return np.concatenate(parts) if parts else np.zeros(0, np.int64)

    def _indexed_chunks(self, p: _Pass) -> Iterator[tuple[list, list[int]]]:
        """This partition's samples past plan.skip, a chunk at a time: (samples, member
        bytes of each), a ShardError in place of a bad sample."""
        plan = p.plan
        counts = self._load_indexes(p)
        order = partition.remaining(self._epoch_order(counts, plan.epoch), plan.layers)
        if plan.total is not None:  # cut, or padded from the start: every rank the same count
            order = partition.fit(order if len(order) else self._epoch_order(counts, plan.epoch), plan.total)
        mine = order[plan.k::plan.parts]
        starts = np.concatenate([[0], np.cumsum(counts)])
        mine = mine[plan.skip:]  # delivered before the stop: not read again
        shard_of = np.searchsorted(starts, mine, side="right") - 1
        local = mine - starts[shard_of]
        opened: set[int] = set()
        chunk = _chunk_len([index.samples for index in self._indexes.values()])
        for c in range(0, len(mine), chunk):  # samples are built a chunk at a time, in order
            shards, idx = shard_of[c:c + chunk], local[c:c + chunk]
            groups = [int(shards[0])] if (shards == shards[0]).all() else np.unique(shards).tolist()
            if len(groups) == 1:
                items, nbytes = self._built(self._maker(groups[0]), idx)
            else:
                items, nbytes = [None] * len(idx), [0] * len(idx)
                for s in groups:
                    sel = np.flatnonzero(shards == s)
                    for j, item, n in zip(sel.tolist(), *self._built(self._maker(s), idx[sel])):
                        items[j], nbytes[j] = item, n
            for s in groups:
                if s not in opened:
                    opened.add(s)
                    p.stats["shards"] = len(opened)
            yield items, nbytes

    # -- streamed shards --------------------------------------------------------------------
    def _shard_sequence(self, plan: _Plan) -> Iterator[int]:
        n = len(self.urls)
        if self.resampled:
            r = partition.rng(self.seed, plan.epoch, plan.k, 2)
            while True:
                yield from r.integers(n, size=64).tolist()
        rounds = 0
        while True:
            order = partition.permutation(n, self.seed, plan.epoch, 1 + rounds) if self.shard_shuffle else np.arange(n)
            mine = order[plan.k::plan.parts].tolist()
            if not mine:
                if plan.quota:
                    raise ValueError(f"{n} shards cannot feed {plan.parts} ranks x workers with epoch_size: "
                                     "use more shards than ranks x workers")
                return
            yield from mine
            if plan.quota is None:
                return
            rounds += 1

    def _shard_chunks(self, p: _Pass, shard: int) -> Iterator[tuple[list, list[int]]]:
        """The shard's samples a built chunk at a time: (items, member bytes of each), a
        ShardError in place of a bad sample; damage between samples is failed in its place
        (once the chunk before it is taken)."""
        url = self.urls[shard]
        p.stats["shards"] += 1
        if indexable_path(url) is not None:  # local: through the index
            try:
                index = self._index(shard)
                maker = self._maker(shard)
            except OSError as e:
                self._fail(p, ShardError(f"cannot read shard: {e.strerror or e}", url=url))
                return
            events = sorted([(o, ShardError(r, url=url, offset=o), 0) for o, r in index.damage]
                            + [(pr.offset, ShardError(pr.reason, url=url, offset=pr.offset, key=pr.key), 1)
                               for pr in index.samples.problems], key=lambda ev: ev[0])
            heads = index.samples.header
            e = 0
            chunk = _chunk_len([index.samples])
            for c in range(0, len(heads), chunk):
                idx = np.arange(c, min(c + chunk, len(heads)))
                items, nbytes = self._built(maker, idx)
                start = 0
                while e < len(events):  # damage before a sample of this chunk: the samples before it first
                    j = int(np.searchsorted(heads[idx], events[e][0], side="right"))
                    if j == len(idx):
                        break
                    if j > start:
                        yield items[start:j], nbytes[start:j]
                        start = j
                    self._fail(p, events[e][1], samples=events[e][2])
                    e += 1
                yield items[start:], nbytes[start:]
            for _, error, lost in events[e:]:
                self._fail(p, error, samples=lost)
            return
        try:
            stream = open_stream(url, self.allow_pipe)
        except ShardError as err:
            self._fail(p, err)
            return
        try:
            for event in _scanning.stream_samples(url, read_chunks(stream, self.chunk_size), self.max_member_size):
                if isinstance(event, _scanning.Damage):
                    self._fail(p, ShardError(event.reason, url=url, offset=event.offset, key=event.key),
                               samples=event.lost_samples)
                    continue
                item, data = event
                yield self._built(_members.SampleMaker(item, data, url, self.views), np.arange(len(item)))
        except (OSError, EOFError, zlib.error) as err:  # gzip reports damage as these
            self._fail(p, ShardError(f"read failed: {err}", url=url))
        finally:
            try:
                stream.close()
            except ShardError as err:
                self._fail(p, err)

    def _from_shards(self, p: _Pass) -> Iterator[tuple[list[dict], list[int]]]:
        """Runs of good samples (and their member bytes), in stream order; each bad sample
        is failed in its place, after the samples before it were taken."""
        empty_in_a_row = 0  # a stream that must fill epoch_size from shards that hold nothing
        for shard in self._shard_sequence(p.plan):
            got = 0
            # closed at once when a bad sample raises here: the stream's own errors chain to it
            with contextlib.closing(self._shard_chunks(p, shard)) as chunks:
                for items, nbytes in chunks:
                    start = 0
                    for j in [j for j, item in enumerate(items) if type(item) is not dict]:
                        if j > start:
                            got += j - start
                            yield items[start:j], nbytes[start:j]
                        self._emit(p, items[j], nbytes[j])  # counted, or raised
                        start = j + 1
                    if start < len(items):
                        got += len(items) - start
                        yield items[start:], nbytes[start:]
            empty_in_a_row = 0 if got else empty_in_a_row + 1
            if empty_in_a_row > 10 * len(self.urls) + 100:
                raise ShardError(f"{empty_in_a_row} shards in a row gave no sample: cannot fill epoch_size",
                                 url=self.urls[shard])

    def _streamed(self, p: _Pass) -> Iterator[tuple[list[dict], list[int]]]:
        runs = self._from_shards(p)
        if self.shuffle:
            pairs = (pair for items, nbytes in runs for pair in zip(items, nbytes))
            rng = partition.rng(self.seed, p.plan.epoch, p.plan.k, 3)
            return (([sample], [n]) for sample, n in _buffer_shuffle(pairs, self.buffer_size, rng))
        return runs

    # -- state ---------------------------------------------------------------------------------
    def state_dict(self) -> dict[str, Any]:
        """This copy's position: the samples its partition delivered in this epoch."""
        p = self._pass
        if p is None:
            if self._restore is not None:
                return self._restore
            rank, world, worker, workers = self._topology()
            plan = _Plan(self.epoch, rank, world, worker, workers)
            p = _Pass(plan)
        return self._state_of(p)

    def _state_of(self, p: _Pass) -> dict[str, Any]:
        plan = p.plan
        return {
            "version": STATE_VERSION,
            "mode": "indexed" if self.indexed else "streamed",
            "epoch": plan.epoch,
            "seed": self.seed,
            "shards": len(self.urls),
            "order": self._order_options(),
            "world_size": plan.world_size,
            "num_workers": plan.num_workers,
            "ranks": [plan.rank],
            "layers": [[parts, list(counts)] for parts, counts in plan.layers],
            "consumed": [[plan.k, p.consumed]],
            "stats": dict(p.stats),
        }

    def _order_options(self) -> dict[str, Any]:
        """What the epoch's order depends on, besides the seed and the shards."""
        return {"shuffle": self.shuffle, "shard_shuffle": self.shard_shuffle, "resampled": self.resampled,
                "buffer_size": self.buffer_size if self.shuffle and not self.indexed else None}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """The next iteration resumes from `state` (one worker's, or several merged)."""
        self._restore = self.checked_state(state)
        self._pass = None

    def checked_state(self, state: dict[str, Any]) -> dict[str, Any]:
        """`state` in the current form (it then merges with the states of workers that moved
        on), or a ValueError saying why this dataset cannot resume it (fastloader's
        DataLoader asks at its load_state_dict, before any worker starts)."""
        check_state_type(state)
        if state.get("version") == 1 and (state.get("world_size") != 1 or self.epoch_size is not None):
            raise ValueError("this state was saved by an older fastloader, which dealt samples otherwise: "
                             "it resumes only a run of one rank without epoch_size")
        if state.get("version") not in (1, STATE_VERSION):  # 1: of one rank, dealt as now
            raise ValueError(f"unsupported WebDataset state version {state.get('version')!r}")
        mode = "indexed" if self.indexed else "streamed"
        if state["mode"] != mode or state["seed"] != self.seed:
            raise ValueError(f"this state was saved by a different WebDataset ({state['mode']}, seed "
                             f"{state['seed']}; this one is {mode}, seed {self.seed})")
        saved_shards = state.get("shards", len(self.urls))  # (states from before it was kept)
        if saved_shards != len(self.urls):
            raise ValueError(f"this state was saved for {saved_shards} shards and this WebDataset has "
                             f"{len(self.urls)}: the epoch's order, and so the position, differ")
        saved_order = state.get("order", self._order_options())  # (states from before it was kept)
        if saved_order != self._order_options():
            raise ValueError(f"this state was saved with {saved_order} and this WebDataset has "
                             f"{self._order_options()}: the epoch's order, and so the position, differ")
        return dict(state, version=STATE_VERSION, shards=saved_shards, order=saved_order)

    @staticmethod
    def merge_worker_states(states: list[dict[str, Any]]) -> dict[str, Any]:
        """One state from the states of several workers (and ranks) of one run."""
        states = [s for s in states if s]
        if not states:
            return {}
        # After an elastic resume, a worker that has delivered nothing yet still holds the
        # restored state (one layer less): nothing of the new layer is taken by it.
        depth = max(len(s["layers"]) for s in states)
        states = [s for s in states if len(s["layers"]) == depth]
        head = states[0]
        same = ("version", "mode", "epoch", "seed", "shards", "order", "world_size", "num_workers", "layers")
        for s in states[1:]:
            for key in same:
                if s.get(key) != head.get(key):
                    raise ValueError(f"cannot merge WebDataset states that differ in {key!r}")
        consumed: dict[int, int] = {}
        for s in states:
            for k, c in s["consumed"]:
                consumed[k] = max(consumed.get(k, 0), c)
        stats: dict[str, int] = {}
        for s in states:
            for k, v in s.get("stats", {}).items():
                stats[k] = stats.get(k, 0) + v
        return dict(head, ranks=sorted({r for s in states for r in s["ranks"]}),
                    consumed=sorted([k, c] for k, c in consumed.items()), stats=stats)

    def gather_state(self, states: list[dict[str, Any]], num_workers: int = 1) -> dict[str, Any]:
        """Merges this rank's worker states (a collective under torch.distributed: every
        rank's are merged, so any rank's checkpoint resumes the whole run)."""
        merged = self.merge_worker_states(states)
        if not merged:  # no worker has delivered anything yet
            rank, world, _, _ = self._topology()
            plan = _Plan(self.epoch, rank, world, 0, num_workers)
            merged = dict(self._state_of(_Pass(plan)), consumed=[])
        if self.gathers_ranks():
            everyone: list = [None] * torch.distributed.get_world_size()
            torch.distributed.all_gather_object(everyone, merged)
            merged = self.merge_worker_states(everyone)
        return merged

    def gathers_ranks(self) -> bool:
        """Whether gather_state is a collective over the process group's ranks (the group
        as it is now: it may have been set up after this dataset)."""
        return self.rank is None and _distributed() and torch.distributed.get_world_size() > 1

    def stats(self) -> dict[str, Any]:
        """Counts of this copy's current or last pass: samples, bytes, shards, failures."""
        p = self._pass
        out = dict(p.stats) if p is not None else {}
        if p is not None and p.last_error:
            out["last_error"] = p.last_error
        return out


class _Samples:
    """The samples of one pass: iterated one at a time, or `take(n)` for a batch at once
    (fastloader's DataLoader asks for batches so), which hands out slices of the chunks
    built in C++, with no Python step per sample.

    `p.consumed` counts the positions of the partition's stream taken (delivered, or,
    from indexed shards, bad and skipped); an epoch_size quota counts them too. A resumed
    pass starts past the `plan.skip` positions delivered before the stop: indexed shards
    do not read them again, a stream reads and drops them."""

    def __init__(self, ds: WebDataset, p: _Pass) -> None:
        self._ds, self._p = ds, p
        plan = p.plan
        self._left = plan.quota  # positions the epoch_size quota still allows (None: no quota)
        if ds.indexed:
            self._chunks = ds._indexed_chunks(p)
            self._replay = 0
            p.consumed = plan.skip
            if self._left is not None:
                self._left = max(self._left - plan.skip, 0)
        else:  # runs of good samples; the bad ones, failed between runs, are no positions
            self._chunks = ds._streamed(p)
            self._replay = plan.skip
        self._items: list = []  # the current chunk: dicts, or ShardErrors (indexed)
        self._nbytes: list[int] = []  # member bytes of each, counted as they are taken
        self._clean = True  # the chunk holds only dicts
        self._pos = 0
        self._ended = False

    def __iter__(self) -> _Samples:
        return self

    def __next__(self) -> dict:
        pos = self._pos
        if self._clean and pos < len(self._items) and self._left is None:  # a good sample in hand
            self._pos = pos + 1
            stats = self._p.stats
            self._p.consumed += 1
            stats["samples"] += 1
            stats["bytes"] += self._nbytes[pos]
            return self._items[pos]
        got = self.take(1)
        if not got:
            raise StopIteration
        return got[0]

    def take(self, n: int) -> list[dict]:
        """Up to n samples (fewer only at the end of the pass)."""
        p, out = self._p, []
        try:
            while len(out) < n and not self._ended:
                if self._left == 0:  # the epoch_size quota is met
                    self._end()
                    break
                if self._pos == len(self._items):
                    if not self._next_chunk():
                        break
                    continue
                room = n - len(out) if self._left is None else min(n - len(out), self._left)
                if self._clean:
                    end = min(len(self._items), self._pos + room)
                    out += self._items[self._pos:end]
                    p.stats["bytes"] += sum(self._nbytes[self._pos:end])
                    taken = delivered = end - self._pos
                    self._pos = end
                else:
                    # indexed: a bad sample in its place, counted or failed (it may raise) here
                    item = self._ds._emit(p, self._items[self._pos], self._nbytes[self._pos])
                    self._pos += 1
                    if item is not None:
                        out.append(item)
                    taken, delivered = 1, int(item is not None)
                p.consumed += taken
                p.stats["samples"] += delivered
                if self._left is not None:
                    self._left -= taken
        except BaseException:
            self._end()
            raise
        return out

    def _next_chunk(self) -> bool:
        try:
            while True:
                self._items, self._nbytes = next(self._chunks)
                self._pos = 0
                if self._replay:  # a resumed stream drops what was delivered before the stop
                    skipped = min(self._replay, len(self._items))
                    self._replay -= skipped
                    self._pos = skipped
                    self._p.consumed += skipped
                    if self._left is not None:
                        self._left = max(self._left - skipped, 0)
                if self._pos < len(self._items):
                    self._clean = all(type(item) is dict for item in self._items)
                    return True
        except StopIteration:
            self._ended = True
            return False

    def close(self) -> None:
        """Ends the pass early, as a generator's close() does: the shard streams it holds
        are closed now (a pipe: command killed), not when it is garbage collected."""
        self._end()

    def _end(self) -> None:
        self._ended = True
        self._items, self._pos = [], 0
        close = getattr(self._chunks, "close", None)
        if close is not None:
            close()


def _buffer_shuffle(samples: Iterator, size: int, rng: np.random.Generator) -> Iterator:
    """webdataset's buffer shuffle, drawn from `rng`: each new sample takes the place of a
    random one in a buffer of `size`, which is yielded."""
    buf: list = []
    draws: list[int] = []
    for sample in samples:
        if len(buf) < size:
            buf.append(sample)
            continue
        if not draws:
            draws = rng.integers(size, size=1024).tolist()
        j = draws.pop()
        buf[j], sample = sample, buf[j]
        yield sample
    rng.shuffle(buf)
    yield from buf
