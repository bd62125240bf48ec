"""Reusable batch buffers. A fresh 77 MB float batch costs more in page faults than the
decode of its images; a buffer is handed out again only once nothing else refers to it:
no Python reference to the tensor, no view, numpy array or memoryview of its storage, and
no other process (a buffer moved to shared memory is dropped from the pool)."""
from __future__ import annotations

import sys
import threading

import torch

from .._storage import storage_users


def _unreferenced(t: torch.Tensor) -> bool:
    # Expected references: the pool's list, the caller's loop variable, this parameter,
    # getrefcount's argument; for the storage: the tensor and the temporary storage object.
    users = storage_users(t)
    return sys.getrefcount(t) <= 4 and users is not None and users <= 2  # unknown: never reuse


class OutputPool:
    """Up to ``capacity`` batch tensors, reused when their previous batch was released."""

    def __init__(self, capacity: int = 4) -> None:
        self.capacity = capacity
        self.buffers: list[torch.Tensor] = []
        self._lock = threading.Lock()  # DataLoader thread workers share one pipeline

    def __getstate__(self) -> dict:  # a pickled pool starts empty, with its own lock
        return {"capacity": self.capacity}

    def __setstate__(self, state: dict) -> None:
        self.__init__(state["capacity"])

    def get(self, shape: tuple[int, ...], dtype: torch.dtype, pin_memory: bool) -> torch.Tensor:
        if pin_memory:
            # torch's pinned allocator already caches blocks, and unlike this pool it knows
            # when an asynchronous copy to the GPU still reads one.
            return torch.empty(shape, dtype=dtype, pin_memory=True)
        with self._lock:
            return self._get(shape, dtype)

    def _get(self, shape: tuple[int, ...], dtype: torch.dtype) -> torch.Tensor:
        # A batch sent from a DataLoader worker had its storage moved to shared memory,
        # which the receiving process may still be reading: never write there again.
        self.buffers = [t for t in self.buffers if not t.is_shared()]
        for t in self.buffers:
            # is_shared() again after the reference check: a DataLoader worker's queue
            # thread may have moved the storage to shared memory (and let go of it) in
            # between, and then the main process holds that memory.
            if t.shape == shape and t.dtype == dtype and _unreferenced(t) and not t.is_shared():
                return t
        t = torch.empty(shape, dtype=dtype)
        if len(self.buffers) >= self.capacity:
            self.buffers.pop(0)
        self.buffers.append(t)
        return t
