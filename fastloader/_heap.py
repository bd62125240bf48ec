"""Asks glibc's malloc to keep freed memory for reuse, as it does by itself once it has
freed a large block.

glibc hands the top of its heap back to the kernel whenever more than its trim threshold
(128 KiB at start) is free there. Batches of large `bytes` (shard members of ~100 KiB)
freed one after the other are then returned page by page, and the next batches fault
every page in again, zeroed: ~2 us a page on a VM, which makes moving shard bytes 3-4x
slower in a fresh process. glibc's own remedy is dynamic: freeing a block it had mmap'd
(up to 32 MiB) raises its mmap threshold to that block's size and its trim threshold to
twice that, as it expects such sizes to recur. `keep_freed_memory()` frees such a block,
once: the heap then keeps up to 64 MiB of freed memory, as in any process that has freed
a 32 MiB array. A process that set its own thresholds (mallopt, MALLOC_*_ env vars)
turned glibc's dynamic raise off, so its settings stand. Elsewhere than glibc, nothing
happens. Worker processes call it as they start (a dataset's per-sample arrays are made
and freed batch after batch too); the main process once a loader fetches in it (no
workers, or thread workers) or large shard members reach it.

`huge_page_heap()` (worker processes only) also grows the heap's top by ~30 MiB at once
and asks for transparent huge pages there: a worker's first batches of large arrays then
fault in 2 MiB at a time instead of 4 KiB (~500x fewer faults, each ~2-3 us on a VM).
Untouched parts of it take no memory; used parts round up to 2 MiB. Where the kernel has
no free huge page at hand (or, in a VM, the host has not yet backed one) such a fault can
take milliseconds: measured, the first batch still comes sooner in the median.
"""
from __future__ import annotations

import ctypes
import os

_BLOCK = (32 << 20) - (64 << 10)  # glibc raises its thresholds only for blocks <= 32 MiB
_done = False  # forked children inherit the heap's settings, so this too
_HUGE_REGION = 30 << 20  # under the raised mmap threshold: taken from the heap's top
_HUGE_PAGE = 2 << 20
_MADV_HUGEPAGE = 14


def _glibc():
    try:
        libc = ctypes.CDLL(None)  # this process's symbols (no ldconfig run, as find_library does)
        libc.gnu_get_libc_version  # glibc only
    except (OSError, AttributeError):
        return None
    libc.malloc.restype = ctypes.c_void_p
    libc.malloc.argtypes = [ctypes.c_size_t]
    libc.free.argtypes = [ctypes.c_void_p]
    libc.madvise.argtypes = [ctypes.c_void_p, ctypes.c_size_t, ctypes.c_int]
    return libc


def keep_freed_memory() -> None:
    global _done
    if _done:
        return
    _done = True
    libc = _glibc()
    if libc is not None:
        libc.free(libc.malloc(_BLOCK))  # above the mmap threshold: mmap'd, never touched


def huge_page_heap() -> None:
    """Keeps freed memory, and backs the next ~30 MiB of the heap with huge pages (where
    the kernel's transparent huge pages allow it: `madvise` mode or `always`; not with
    FASTLOADER_WORKER_HUGE_PAGES=0, for machines where a huge page fault may stall)."""
    keep_freed_memory()
    libc = _glibc()
    if libc is None or os.environ.get("FASTLOADER_WORKER_HUGE_PAGES", "1") == "0":
        return
    block = libc.malloc(_HUGE_REGION)
    if not block:
        return
    lo = -(-block // _HUGE_PAGE) * _HUGE_PAGE
    hi = (block + _HUGE_REGION) // _HUGE_PAGE * _HUGE_PAGE
    libc.madvise(lo, hi - lo, _MADV_HUGEPAGE)  # a failure only means small pages
    libc.free(block)  # kept at the heap's top: the trim threshold is now 64 MiB
