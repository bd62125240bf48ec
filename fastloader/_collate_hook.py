"""Where `default_collate` stacks tensors inside fastloader workers.

torch's `collate_tensor_fn` stacks straight into a new shared-memory storage when it runs
in a worker, to save a copy. In a fastloader worker process the stack goes into the
worker's arena instead (reused segments, see `_shm`); in a worker thread it is a plain
`torch.stack` (no shared memory is needed within one process). Everywhere else the call
goes to torch's own function unchanged.
"""
from __future__ import annotations

import threading

import torch
from torch.utils.data._utils import collate as torch_collate

_torch_collate_tensor_fn = torch_collate.collate_tensor_fn
_local = threading.local()
_process_arena = None  # set once in a worker process


def set_process_arena(arena) -> None:
    global _process_arena
    _process_arena = arena


def mark_thread_worker(on: bool) -> None:
    _local.in_thread_worker = on


def collate_tensor_fn(batch, *, collate_fn_map=None):
    elem = batch[0]
    plain = type(elem) is torch.Tensor and elem.layout == torch.strided and not elem.is_nested
    if plain and getattr(_local, "in_thread_worker", False):
        return torch.stack(batch, 0)
    if plain and _process_arena is not None and elem.device.type == "cpu":
        out = _process_arena.empty((len(batch), *elem.shape), elem.dtype)
        return torch.stack(batch, 0, out=out)
    return _torch_collate_tensor_fn(batch, collate_fn_map=collate_fn_map)


def install() -> None:
    torch_collate.default_collate_fn_map[torch.Tensor] = collate_tensor_fn
