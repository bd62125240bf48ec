"""`fastloader.DataLoader`: torch's DataLoader, same arguments and batches, resumable.

It subclasses `torch.utils.data.DataLoader`, so argument checking, default samplers,
collation, `len()` and every error for misuse are torch's own. The iteration is
fastloader's (`_iteration.LoaderIterator`): process workers that pass batches through
reused shared memory, or threads; an explicit position for `state_dict()`; stage counts
for `stats()`; optional prefetch of batches to a device.
"""
from __future__ import annotations

import weakref
from typing import Any

import torch
import torch.utils.data as tud
from torch.utils.data.dataloader import _DatasetKind
from torch.utils.data.datapipes.datapipe import IterDataPipe, MapDataPipe

from . import _collate_hook, _worker_info
from ._device import DevicePrefetcher
from ._iteration import LoaderIterator, _checked_restore
from .errors import check_state_type

_collate_hook.install()
_worker_info.install()

WORKER_TYPES = ("process", "thread")


class DataLoader(tud.DataLoader):
    """A drop-in `torch.utils.data.DataLoader` with exact mid-epoch resume.

    Takes torch's arguments with torch's meaning, plus:

    - `worker_type`: "process" (default; any Python dataset) or "thread" (for
      fastloader's pipelines, whose compiled calls release the GIL).
    - `device`: if set (e.g. "cuda"), batches are copied there ahead of use on a side
      stream; "cpu" leaves them where they are.

    and the methods `state_dict()` / `load_state_dict()` (resume exactly after the last
    yielded batch) and `stats()`.
    """

    def __init__(
        self,
        dataset,
        batch_size: int | None = 1,
        shuffle: bool | None = None,
        sampler=None,
        batch_sampler=None,
        num_workers: int = 0,
        collate_fn=None,
        pin_memory: bool = False,
        drop_last: bool = False,
        timeout: float = 0,
        worker_init_fn=None,
        multiprocessing_context=None,
        generator=None,
        *,
        prefetch_factor: int | None = None,
        persistent_workers: bool = False,
        pin_memory_device: str = "",
        in_order: bool = True,
        worker_type: str = "process",
        device: str | torch.device | None = None,
    ) -> None:
        if worker_type not in WORKER_TYPES:
            raise ValueError(f"worker_type must be one of {WORKER_TYPES}, got {worker_type!r}")
        super().__init__(
            dataset,
            batch_size,
            shuffle,
            sampler,
            batch_sampler,
            num_workers,
            collate_fn,
            pin_memory,
            drop_last,
            timeout,
            worker_init_fn,
            multiprocessing_context,
            generator,
            prefetch_factor=prefetch_factor,
            persistent_workers=persistent_workers,
            pin_memory_device=pin_memory_device,
            in_order=in_order,
        )
        self.worker_type = worker_type
        self.device = None if device is None else torch.device(device)
        if self.device is not None and self.device.type == "cuda" and not torch.cuda.is_available():
            raise ValueError(f"device={device!r} but torch has no CUDA device here")
        self._pending_state: dict | None = None
        # The iterator the user holds (maybe a prefetcher), weakly: a dropped iterator must
        # end its workers at once. When it goes, it leaves its state and stats here.
        self._source_ref: weakref.ref | None = None
        self._saved_state: dict | None = None
        self._saved_stats: dict | None = None
        self._generation = 0  # of the iterator handed out last

    def _uses_torch_iterator(self) -> bool:
        return isinstance(self.dataset, (IterDataPipe, MapDataPipe))

    def _get_iterator(self):
        if self._uses_torch_iterator():
            return super()._get_iterator()
        if self.num_workers > 0:
            self.check_worker_number_rationality()
        restore, self._pending_state = self._pending_state, None
        self._saved_state = self._saved_stats = None
        return LoaderIterator(self, restore)

    def __iter__(self):
        if self._uses_torch_iterator():
            return super().__iter__()
        if self.persistent_workers and self.num_workers > 0:
            if self._iterator is None:
                self._iterator = self._get_iterator()
            else:
                restore, self._pending_state = self._pending_state, None
                self._iterator.reset(restore)
            it = self._iterator
        else:
            it = self._get_iterator()
        if self.device is not None:
            it = DevicePrefetcher(it, self.device, self)
        self._source_ref = weakref.ref(it)
        self._generation += 1
        it._loader_generation = self._generation
        return it

    def _live_iterator(self):
        return self._source_ref() if self._source_ref is not None else None

    def _keep(self, source, state: dict, stats: dict) -> None:
        """Called by an iterator as it goes away (an older one's word does not count)."""
        if getattr(source, "_loader_generation", None) == self._generation:
            self._saved_state, self._saved_stats = state, stats

    # -- resume ---------------------------------------------------------------------------
    def state_dict(self) -> dict[str, Any]:
        """The position after the last batch yielded by the most recent iterator.

        A loader built the same way and given this state yields exactly the batches this
        one would yield next (for map-style datasets with any num_workers; iterable
        datasets need the same num_workers). Pass a `generator` for exactly repeatable
        epochs after the saved one; otherwise they draw from torch's global RNG.
        """
        if self._pending_state is not None:
            return self._pending_state
        live = self._live_iterator()
        state = live.state() if live is not None else self._saved_state or {}
        gather = getattr(self.dataset, "gather_state", None)
        if state and self._dataset_kind == _DatasetKind.Iterable and callable(gather):
            # a dataset whose workers' (and ranks') states combine into one: its resume
            # then holds with another num_workers (fastloader.WebDataset on indexed shards)
            parts = [w["dataset"] for w in state["workers"] if "dataset" in w]
            state = dict(state, dataset=gather(parts, max(self.num_workers, 1)))
            if getattr(self.dataset, "gathers_ranks", lambda: False)():
                # any rank's checkpoint resumes every rank: the epoch is over only where
                # it is over on every rank (a rank with fewer samples ends first)
                everyone: list = [None] * torch.distributed.get_world_size()
                torch.distributed.all_gather_object(everyone, state["finished"])
                state["finished"] = all(everyone)
        return state

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """The next `iter(loader)` resumes from `state` (an empty dict: from the start)."""
        check_state_type(state)
        checked = _checked_restore(state, self) if state else None  # fail here, not in iter()
        current = getattr(self.dataset, "checked_state", None)
        if checked and callable(current):  # the dataset's own position: refused here, or made current
            if checked.get("dataset"):
                checked["dataset"] = current(checked["dataset"])
            checked["workers"] = [dict(w, dataset=current(w["dataset"])) if w.get("dataset") else w
                                  for w in checked["workers"]]
        if self._iterator is not None:  # persistent workers restart from the state
            self._iterator._shutdown()
            self._iterator = None
        self._pending_state = checked

    def stats(self) -> dict[str, Any]:
        """Counts and times of the most recent pass: batches, waits, worker fetch time."""
        live = self._live_iterator()
        out = live.stats() if live is not None else dict(self._saved_stats or {})
        state = live.state() if live is not None else self._saved_state
        parts = [w["dataset"]["stats"] for w in (state or {}).get("workers", [])
                 if isinstance(w.get("dataset"), dict) and isinstance(w["dataset"].get("stats"), dict)]
        if parts:  # the dataset's own counts, summed over workers (e.g. WebDataset failures)
            out["dataset"] = {k: sum(p.get(k, 0) for p in parts) for k in parts[0]}
        return out
