"""Shard reading benchmark: the webdataset library vs fastloader.WebDataset, same shards.

Two shard sets, written once into a cache directory and read from page cache:
  - small: 100,000 samples of ~1 KB (a 1,000-byte payload and a class), 12 shards;
  - large: 12,000 samples of ~100 KB (1.2 GB), 12 shards;
  - small-pipe: the small set as `pipe:cat SHARD` streams, the way remote shards are read
    (scanned as the bytes arrive, no index, no random access).
Each is read in order (no shuffle) through a DataLoader with 1 and 2 worker processes,
batches of 64 samples handed to the main process as lists of sample dicts (torch's
DataLoader around `webdataset.WebDataset`, fastloader's around `fastloader.WebDataset`),
and also iterated directly in one process (workers "0": the reader alone, one core).
Timing starts once the first batch (or sample) is in hand, so worker start-up and index
loading are left out. Reported: samples/s and MB/s of member data, MB/s per worker core,
and the CPU the reading took: busy cores (CPU seconds of the main process and its workers
per second of the run) and MB per CPU second. Each measurement runs in a fresh process,
alternating the two libraries; medians are shown.
"""
from __future__ import annotations

import argparse
import json
import os
import shlex
import time
import warnings

import numpy as np
import torch

from .._cache import cache_root
from ._fresh import medians, run_fresh
from .loader import _tree_cpu

SETS = {"small": (100_000, 1_000), "large": (12_000, 100_000)}
PIPE = "-pipe"  # a set name ending so: its shards read as `pipe:cat` streams
DEFAULT_SETS = (*SETS, "small" + PIPE)
SHARDS_PER_SET = 12
BATCH = 64


def shard_dir() -> str:
    return os.path.join(cache_root(), "bench-shards")


def ensure_shards(name: str) -> list[str]:
    """The shard set's paths, written on first use (random payloads, fixed seed)."""
    from fastloader import ShardWriter

    n, size = SETS[name]
    n = max(SHARDS_PER_SET, int(n * float(os.environ.get("FASTLOADER_BENCH_SCALE", "1"))))  # tests: smaller
    d = os.path.join(shard_dir(), f"{name}-{n}")
    paths = [os.path.join(d, f"{name}-{i:03d}.tar") for i in range(SHARDS_PER_SET)]
    if all(os.path.exists(p) for p in paths):
        return paths
    rng = np.random.default_rng(0)
    payload = rng.integers(0, 256, size + 4096, dtype=np.uint8).tobytes()
    with ShardWriter(os.path.join(d, f"{name}-%03d.tar"), maxcount=-(-n // SHARDS_PER_SET), mtime=0) as w:
        for i in range(n):
            start = i % 4096
            w.write({"__key__": f"{i:08d}", "bin": payload[start:start + size], "cls": i % 1000})
    return paths


def _as_list(batch):
    return batch


def _member_bytes(sample: dict) -> int:
    return len(sample["bin"]) + len(sample["cls"])


def measure(impl: str, name: str, workers: int) -> dict:
    """One configuration in this process (run it in a fresh one)."""
    piped = name.endswith(PIPE)
    paths = ensure_shards(name.removesuffix(PIPE))
    urls = [f"pipe:cat {shlex.quote(p)}" for p in paths] if piped else paths
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        if impl == "webdataset":
            import webdataset as wds

            dataset = wds.WebDataset(urls, shardshuffle=False)
            loader_cls = torch.utils.data.DataLoader
        else:
            import fastloader

            dataset = fastloader.WebDataset(urls, shard_shuffle=False, allow_pipe=piped)
            loader_cls = fastloader.DataLoader
        for path in paths:  # into page cache before timing
            with open(path, "rb") as f:
                while f.read(1 << 24):
                    pass
        if workers == 0:
            batches = ([s] for s in dataset)
        else:
            batches = iter(loader_cls(dataset, batch_size=BATCH, num_workers=workers, collate_fn=_as_list))
        first = next(batches)  # the clock starts with the first batch in hand
        cpu_start, start = _tree_cpu(os.getpid()), time.perf_counter()
        samples = nbytes = 0
        for batch in batches:
            samples += len(batch)
            nbytes += sum(_member_bytes(s) for s in batch)
        elapsed = time.perf_counter() - start
        cpu = _tree_cpu(os.getpid()) - cpu_start
    return {"samples_per_s": samples / elapsed, "mb_per_s": nbytes / elapsed / 1e6, "samples": samples + len(first),
            "busy_cores": cpu / elapsed,
            # nan for a run too short to show a clock tick of CPU (the tests' tiny shard sets)
            "mb_per_cpu_s": nbytes / cpu / 1e6 if cpu > 0 else float("nan")}


def run(repeats: int = 3, sets=DEFAULT_SETS, workers=(1, 2), in_process: bool = True) -> list[dict]:
    configs = [(name, w) for name in sets for w in ((0,) if in_process else ()) + tuple(workers)]
    for name in sets:
        ensure_shards(name.removesuffix(PIPE))
    print(f"torch {torch.__version__}, {os.cpu_count()} cores; shards in {shard_dir()}; "
          f"medians of {repeats} fresh-process runs each")
    header = (f"{'samples':10} {'workers':>7} | {'wds samples/s':>13} {'fl samples/s':>12} {'ratio':>7} | "
              f"{'wds MB/s':>8} {'fl MB/s':>8} {'fl MB/s/core':>12} | {'fl busy cores':>13} {'fl MB/cpu-s':>11}")
    print(header)
    print("-" * len(header))
    rows = []
    for name, nw in configs:
        runs: dict[str, list[dict]] = {"webdataset": [], "fastloader": []}
        for _ in range(repeats):
            for impl in runs:
                runs[impl].append(run_fresh("fastloader.bench.shards", impl, name, nw))
        med = {impl: medians(rs) for impl, rs in runs.items()}
        w, f = med["webdataset"], med["fastloader"]
        if w["samples"] != f["samples"]:
            raise AssertionError(f"the libraries read different sample counts: {w['samples']} vs {f['samples']}")
        row = {"set": name, "num_workers": nw, "webdataset": w, "fastloader": f,
               "ratio": f["samples_per_s"] / w["samples_per_s"], "fl_mb_per_s_per_core": f["mb_per_s"] / max(nw, 1)}
        rows.append(row)
        label = "0 (in)" if nw == 0 else str(nw)
        print(f"{name:10} {label:>7} | {w['samples_per_s']:>13.0f} {f['samples_per_s']:>12.0f} {row['ratio']:>6.1f}x | "
              f"{w['mb_per_s']:>8.0f} {f['mb_per_s']:>8.0f} {row['fl_mb_per_s_per_core']:>12.0f} | "
              f"{f['busy_cores']:>13.2f} {f['mb_per_cpu_s']:>11.0f}", flush=True)
    print("workers 0 (in): the dataset iterated in one process; 1, 2: DataLoader worker processes "
          "(batches of 64 sample dicts to the main process); MB/s/core = MB/s / max(workers, 1); "
          "busy cores: CPU seconds of the main process and its workers per second; "
          "MB/cpu-s: MB read per CPU second of them all")
    return rows


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--sets", default=",".join(DEFAULT_SETS))
    parser.add_argument("--workers", default="1,2")
    parser.add_argument("--one", nargs=3, metavar=("IMPL", "SET", "WORKERS"), help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.one:
        impl, name, nw = args.one
        print(json.dumps(measure(impl, name, int(nw))))
        return
    run(args.repeats, tuple(args.sets.split(",")), tuple(int(w) for w in args.workers.split(",")))


if __name__ == "__main__":
    main()
