"""Loader benchmark: torch's DataLoader vs fastloader.DataLoader, same datasets, same run.

Two map-style datasets: 100k small tensors (a 32-float feature row and a label) and
2,000 numpy images (224x224x3 uint8). For num_workers 0 and 2 it measures
  - batches/s over one epoch (after the first batch),
  - time to first batch (iter() to the first batch in hand, median of several),
  - peak RSS summed over the main process and its workers during the epoch, and the
    peak growth of the machine's shared memory (batches in flight).
Each measurement runs in a fresh process, alternating torch and fastloader, so neither
inherits the other's memory or warm state. Prints medians and fastloader/torch ratios.
"""
from __future__ import annotations

import argparse
import functools
import json
import os
import statistics
import threading
import time

import numpy as np
import torch
import torch.utils.data as tud

from ._fresh import medians, run_fresh

DATASETS = ("tensors", "images")


class SmallTensors(tud.Dataset):
    def __init__(self, n: int = 100_000):
        self.x = torch.randn(n, 32, generator=torch.Generator().manual_seed(0))

    def __len__(self):
        return len(self.x)

    def __getitem__(self, i):
        return self.x[i], i % 1000


class NumpyImages(tud.Dataset):
    def __init__(self, n: int = 2_000):
        self.n = n
        self.base = np.random.default_rng(0).integers(0, 256, (256, 256, 3), dtype=np.uint8)

    def __len__(self):
        return self.n

    def __getitem__(self, i):
        y, x = (i * 7) % 32, (i * 13) % 32
        return self.base[y : y + 224, x : x + 224].copy(), i % 1000


def _make(dataset: str):
    return (SmallTensors() if dataset == "tensors" else NumpyImages()), (256 if dataset == "tensors" else 64)


@functools.cache
def _kernel_lists_children() -> bool:  # asked once, not at every poll
    return os.path.exists(f"/proc/self/task/{threading.get_native_id()}/children")


def _children(pid: int) -> list[int]:
    """pid's child processes (those of all its threads; none once it has ended)."""
    try:
        tasks = os.listdir(f"/proc/{pid}/task")
    except OSError:
        return []
    kids = []
    for tid in tasks:
        try:
            with open(f"/proc/{pid}/task/{tid}/children") as f:
                kids += [int(k) for k in f.read().split()]
        except OSError:
            pass  # the thread ended
    return kids


def _all_children() -> dict[int, list[int]]:
    """Every process's children, from a scan of all of /proc (slow: ~65 stat files here)."""
    children: dict[int, list[int]] = {}
    for name in os.listdir("/proc"):
        if name.isdigit():
            try:
                with open(f"/proc/{name}/stat") as f:
                    ppid = int(f.read().rsplit(")", 1)[1].split()[1])
            except OSError:
                continue
            children.setdefault(ppid, []).append(int(name))
    return children


def _tree_pids(root: int) -> list[int]:
    """root and all its descendants. Reads only the tree's own /proc entries where the
    kernel lists children: the RSS watcher polls every few ms from a thread of the
    measured process, and a scan of all of /proc (Python, holding the GIL) slowed the
    loop it measured 2-3x."""
    everyone = None if _kernel_lists_children() else _all_children()  # (no CONFIG_PROC_CHILDREN)
    pids, todo, seen = [], [root], set()
    while todo:
        pid = todo.pop()
        if pid in seen:  # listed by two threads of its parent, one ending mid-walk
            continue
        seen.add(pid)
        pids.append(pid)
        todo += _children(pid) if everyone is None else everyone.get(pid, [])
    return pids


def _tree_rss(root: int) -> int:
    """RSS in bytes of root and all its descendants."""
    total = 0
    for pid in _tree_pids(root):
        try:
            with open(f"/proc/{pid}/statm") as f:
                total += int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")
        except OSError:
            pass  # it ended
    return total


def _tree_cpu(root: int) -> float:
    """CPU seconds used so far by root and all its descendants, reaped ones included
    (each process's own time and its waited-for children's)."""
    ticks = 0
    for pid in _tree_pids(root):
        try:
            with open(f"/proc/{pid}/stat") as f:
                ticks += sum(int(v) for v in f.read().rsplit(")", 1)[1].split()[11:15])
        except OSError:
            pass  # it ended
    return ticks / os.sysconf("SC_CLK_TCK")


def _system_shmem() -> int:
    """Shared memory in use on the machine (/dev/shm files and memfds, mapped or not)."""
    with open("/proc/meminfo") as f:
        for line in f:
            if line.startswith("Shmem:"):
                return int(line.split()[1]) * 1024
    return 0


class _PeakRss:
    """Peak RSS of this process tree, and peak growth of the machine's shared memory
    (a batch in flight between processes may be mapped by neither, so RSS misses it)."""

    def __init__(self, interval: float = 0.005):
        self.peak = 0
        self.shm_base = _system_shmem()
        self.shm_peak = 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._watch, args=(interval,), daemon=True)

    def _watch(self, interval):
        while not self._stop.is_set():
            self.peak = max(self.peak, _tree_rss(os.getpid()))
            self.shm_peak = max(self.shm_peak, _system_shmem() - self.shm_base)
            self._stop.wait(interval)

    def __enter__(self):
        self._thread.start()
        return self

    def __exit__(self, *exc):
        self._stop.set()
        self._thread.join()


def measure(impl: str, dataset: str, num_workers: int, ttfb_repeats: int) -> dict:
    """One configuration, in this process (run it in a fresh one)."""
    import fastloader

    cls = fastloader.DataLoader if impl == "fastloader" else tud.DataLoader
    data, batch_size = _make(dataset)
    kwargs = dict(batch_size=batch_size, shuffle=True, num_workers=num_workers)
    base_rss = _tree_rss(os.getpid())
    ttfb = []
    for _ in range(ttfb_repeats):
        loader = cls(data, **kwargs)
        start = time.perf_counter()
        it = iter(loader)
        next(it)
        ttfb.append(time.perf_counter() - start)
        del it, loader
    with _PeakRss() as rss:
        loader = cls(data, **kwargs)
        it = iter(loader)
        next(it)
        start = time.perf_counter()
        n = sum(1 for _ in it)
        elapsed = time.perf_counter() - start
        del it, loader
    return {
        "batches_per_s": n / elapsed,
        "ttfb_ms": 1e3 * statistics.median(ttfb),
        "peak_rss_mb": rss.peak / 2**20,
        "peak_shm_mb": rss.shm_peak / 2**20,
        "base_rss_mb": base_rss / 2**20,
    }


def run(repeats: int = 3, ttfb_repeats: int = 5, datasets=DATASETS, workers=(0, 2)) -> list[dict]:
    print(f"torch {torch.__version__}, {os.cpu_count()} cores; medians of {repeats} fresh-process runs each")
    header = (f"{'dataset':8} {'workers':>7} | {'torch b/s':>9} {'fl b/s':>9} {'ratio':>6} | "
              f"{'torch ttfb':>10} {'fl ttfb':>8} {'ratio':>6} | {'torch MB':>8} {'fl MB':>7} {'ratio':>6} | "
              f"{'shm torch/fl MB':>15}")
    print(header)
    print("-" * len(header))
    rows = []
    for dataset in datasets:
        for nw in workers:
            runs: dict[str, list[dict]] = {"torch": [], "fastloader": []}
            for _ in range(repeats):
                for impl in ("torch", "fastloader"):
                    runs[impl].append(run_fresh("fastloader.bench.loader", impl, dataset, nw, ttfb_repeats))
            med = {impl: medians(rs) for impl, rs in runs.items()}
            t, f = med["torch"], med["fastloader"]
            row = {
                "dataset": dataset, "num_workers": nw, "torch": t, "fastloader": f,
                "throughput_ratio": f["batches_per_s"] / t["batches_per_s"],
                "ttfb_ratio": t["ttfb_ms"] / f["ttfb_ms"],
                "memory_ratio": f["peak_rss_mb"] / t["peak_rss_mb"],
            }
            rows.append(row)
            print(f"{dataset:8} {nw:>7} | {t['batches_per_s']:>9.0f} {f['batches_per_s']:>9.0f} "
                  f"{row['throughput_ratio']:>5.2f}x | {t['ttfb_ms']:>8.1f}ms {f['ttfb_ms']:>6.1f}ms "
                  f"{row['ttfb_ratio']:>5.2f}x | {t['peak_rss_mb']:>8.0f} {f['peak_rss_mb']:>7.0f} "
                  f"{row['memory_ratio']:>5.2f}x | {t['peak_shm_mb']:>7.0f}/{f['peak_shm_mb']:<7.0f}", flush=True)
    print("ratios: throughput and ttfb are fastloader's speed-up (>1 = faster); memory is "
          "fastloader/torch peak RSS summed over the process tree (<1 = less); shm: peak growth "
          "of the machine's shared memory during the epoch")
    return rows


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--ttfb-repeats", type=int, default=5)
    parser.add_argument("--datasets", default=",".join(DATASETS))
    parser.add_argument("--workers", default="0,2")
    parser.add_argument("--one", nargs=4, metavar=("IMPL", "DATASET", "WORKERS", "TTFB_REPEATS"),
                        help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.one:
        impl, dataset, nw, reps = args.one
        print(json.dumps(measure(impl, dataset, int(nw), int(reps))))
        return
    run(args.repeats, args.ttfb_repeats, tuple(args.datasets.split(",")),
        tuple(int(w) for w in args.workers.split(",")))


if __name__ == "__main__":
    main()
