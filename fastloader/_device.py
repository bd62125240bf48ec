"""Copies batches to a device one batch ahead, on a side stream where the device has one."""
from __future__ import annotations

import torch
from torch.utils.data._utils.pin_memory import pin_memory


def _move(data, device: torch.device):
    return torch.utils._pytree.tree_map(
        lambda x: x.to(device, non_blocking=True) if isinstance(x, torch.Tensor) else x, data
    )


class DevicePrefetcher:
    """Wraps a loader iterator; batch k+1 is on its way to `device` while k is used."""

    def __init__(self, it, device: torch.device, loader):
        self._it = it
        it._reports = False  # it runs a batch ahead: the position to keep is ours
        self._loader = loader
        self._device = device
        self._stream = torch.cuda.Stream(device) if device.type == "cuda" else None
        self._state = it.state()  # position as seen by the user, not the prefetch
        self._slot: tuple = ("end", None, self._state)
        self._load()

    def _load(self) -> None:
        """Fills the slot with the next outcome: a batch, an error, or the end."""
        try:
            batch = next(self._it)
        except StopIteration:
            self._slot = ("end", None, self._it.state())
            return
        except Exception as e:  # raised in its turn, after the batches before it
            self._slot = ("error", e, self._it.state())
            return
        if self._stream is not None:
            batch = pin_memory(batch, "cuda")  # async copies need page-locked sources
            with torch.cuda.stream(self._stream):
                batch = _move(batch, self._device)
        else:
            batch = _move(batch, self._device)
        self._slot = ("batch", batch, self._it.state())

    def __iter__(self):
        return self

    def __len__(self) -> int:
        return len(self._it)

    def state(self) -> dict:
        return self._state

    def __next__(self):
        kind, value, self._state = self._slot
        if kind == "end":
            raise StopIteration
        self._slot = ("end", None, self._state)
        if kind == "error":
            self._load()  # like the loader itself, go on after a failed batch
            raise value
        if self._stream is not None:
            current = torch.cuda.current_stream(self._device)
            current.wait_stream(self._stream)
            torch.utils._pytree.tree_map(
                lambda x: x.record_stream(current) if isinstance(x, torch.Tensor) else None, value
            )
        self._load()
        return value

    def __del__(self):
        try:
            self._loader._keep(self, self._state, self._it.stats())
        except Exception:
            pass

    def __getattr__(self, name):  # state(), stats(), reset() of the wrapped iterator
        return getattr(self._it, name)
