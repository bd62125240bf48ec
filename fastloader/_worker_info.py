"""`get_worker_info()` that also answers inside fastloader's worker threads.

torch keeps the worker info in one module global, which is right for a worker process
but not for threads sharing the main interpreter. fastloader keeps a thread-local copy
and points `torch.utils.data.get_worker_info` at a function that reads it first, so
datasets that shard themselves with torch's call work unchanged under
`worker_type="thread"`. Outside a worker thread the answer is torch's own.
"""
from __future__ import annotations

import threading

import torch.utils.data
from torch.utils.data._utils import worker as torch_worker

_local = threading.local()
_torch_get_worker_info = torch_worker.get_worker_info


def get_worker_info():
    """Like `torch.utils.data.get_worker_info`, for worker processes and threads."""
    info = getattr(_local, "info", None)
    return info if info is not None else _torch_get_worker_info()


def set_current(info, *, in_process: bool) -> None:
    if in_process:
        torch_worker._worker_info = info
    else:
        _local.info = info


def clear_thread() -> None:
    _local.info = None


def install() -> None:
    """Routes torch's public `get_worker_info` through ours (idempotent)."""
    torch.utils.data.get_worker_info = get_worker_info
    torch_worker.get_worker_info = get_worker_info
