"""How `default_collate` makes tensors inside fastloader's loading.

torch's `collate_tensor_fn` stacks straight into a new shared-memory storage when it runs
in a worker, to save a copy. In a fastloader worker process the stack goes into the
worker's arena instead (reused segments, see `_shm`); in a worker thread, or in the main
process while a `num_workers=0` loader fetches, into plain memory.

In all of these, the common cases skip torch's per-item overhead: a batch of same-shape
contiguous CPU tensors is stacked with one memcpy each (from 1 MB on, over torch's
threads into a block reused from earlier freed batches, see csrc/common/block_pool.h) or,
in a worker process, written into its segment by one `pwritev` call (no page of the
segment is mapped in the worker, so none faults there or counts twice in RSS); plain ints
/ floats go straight into an int64 / float64 tensor (`_C.stack_plain`,
`_C.tensor_of_numbers`). These are the tensors torch makes. Anything else, and everything
while a torch function or dispatch mode is on, goes to torch's own code. Everywhere else
(torch's DataLoader, a user's own call) the calls go to torch's functions unchanged.
Large arrays of a map-style batch never get here as a list: `_stream_collate` copies them
into the batch tensor (`batch_tensor`) as their samples are fetched.
"""
from __future__ import annotations

import threading
from collections.abc import Mapping

import torch
from torch.utils.data._utils import collate as torch_collate

from . import _C

_torch_fns = {
    torch.Tensor: torch_collate.collate_tensor_fn,
    int: torch_collate.collate_int_fn,
    float: torch_collate.collate_float_fn,
}
_local = threading.local()
_process_arena = None  # set once in a worker process


def set_process_arena(arena) -> None:
    global _process_arena
    _process_arena = arena


def mark_fetching(on: bool) -> bool:
    """Sets whether this thread is loading a batch for fastloader (a worker thread, or the
    main thread of a loader without workers); returns what it was."""
    was = getattr(_local, "fetching", False)
    _local.fetching = on
    return was


def _fetching() -> bool:
    return _process_arena is not None or getattr(_local, "fetching", False)


def _compiled_ok() -> bool:
    """No torch function or dispatch mode (a default device, a profiler, fake tensors)
    is on, which should see torch's own calls."""
    return not torch._C._is_torch_function_mode_enabled() and torch._C._len_torch_dispatch_stack() == 0


def _torch_worker_error(batch) -> Exception | None:
    """What torch's collate in a worker fails with first, where it sizes a shared storage
    for the batch before it stacks: an item that is not a tensor, or fewer elements than
    the first item's shape asks for. None where it would fail later, as stack does."""
    try:
        numel = sum(x.numel() for x in batch)
    except AttributeError as e:
        return e
    if numel < len(batch) * batch[0].numel():
        return RuntimeError("Trying to resize storage that is not resizable")
    return None


def collate_tensor_fn(batch, *, collate_fn_map=None):
    if _fetching():
        elem = batch[0]
        if type(elem) is torch.Tensor and elem.layout == torch.strided and not elem.is_nested:
            try:
                ok = _compiled_ok()
                if _process_arena is None or elem.device.type != "cpu":
                    stacked = _C.stack_plain(batch) if ok else None
                    return stacked if stacked is not None else torch.stack(batch, 0)
                return _process_arena.stack(batch, fast=ok)
            except (TypeError, RuntimeError):  # a batch that does not stack
                error = _torch_worker_error(batch) if torch.utils.data.get_worker_info() is not None else None
                if error is None:
                    raise
                raise error from None
    return _torch_fns[torch.Tensor](batch, collate_fn_map=collate_fn_map)


def batch_tensor(shape, dtype: torch.dtype) -> tuple[torch.Tensor, int, int]:
    """An uninitialised contiguous batch tensor for a batch made in this thread, and where to
    write its bytes: (tensor, fd, offset), fd -1 for the tensor itself; in a worker process
    the segment of the arena holding it (its pages not mapped here)."""
    if _process_arena is None:
        return _C.batch_empty(list(shape), dtype), -1, 0
    out, seg, offset = _process_arena.reserve(shape, dtype)
    return out, seg.fd, offset


def collate_int_fn(batch, *, collate_fn_map=None):
    made = _C.tensor_of_numbers(batch, False) if _fetching() and _compiled_ok() else None
    return made if made is not None else _torch_fns[int](batch, collate_fn_map=collate_fn_map)


def collate_float_fn(batch, *, collate_fn_map=None):
    made = _C.tensor_of_numbers(batch, True) if _fetching() and _compiled_ok() else None
    return made if made is not None else _torch_fns[float](batch, collate_fn_map=collate_fn_map)


def registry_leaves_alone(container_types: set) -> bool:
    """No collate function of default_collate's registry would be handed these container
    types (torch's `collate` looks each one up by type, then by isinstance)."""
    registry = torch_collate.default_collate_fn_map
    return not any(issubclass(t, key) for key in registry for t in container_types)


def collate_batch(batch: list):
    """default_collate(batch), for the batches fastloader's fetch makes: a list of plain
    tuples all of one length is transposed by one C++ call (torch calls len() on each
    sample and zips in Python: ~25 us for 256) and each column goes to torch's `collate`,
    as torch's does; anything else (or a registry entry that would see the tuples) goes
    to `default_collate` itself."""
    first = batch[0] if batch else None
    if type(first) is tuple and registry_leaves_alone({tuple}) and not isinstance(first, Mapping):
        columns = _C.transpose_tuples(batch)
        if columns is not None:
            registry = torch_collate.default_collate_fn_map
            return [torch_collate.collate(column, collate_fn_map=registry) for column in columns]
    return torch_collate.default_collate(batch)


def install() -> None:
    fns = {torch.Tensor: collate_tensor_fn, int: collate_int_fn, float: collate_float_fn}
    for kind, fn in fns.items():
        torch_collate.default_collate_fn_map[kind] = fn
