"""`fastloader inspect`: what shards hold (samples, extensions, sizes) and any damage."""
from __future__ import annotations

import os
from collections import Counter
from typing import Any

import numpy as np

from ..errors import ShardError
from . import _index, _scanning, _tar
from .urls import expand_urls, indexable_path, open_stream, read_chunks


def inspect_shard(url: str, max_member_size: int = _tar.DEFAULT_MAX_MEMBER_SIZE,
                  allow_pipe: bool = False) -> dict[str, Any]:
    """Counts of one shard and the damage found in it (nothing is written)."""
    path = indexable_path(url)
    found: list = []
    damage: list[tuple[int, str]] = []
    try:
        if path is not None:
            index = _index.build(path, None, max_member_size)
            found.append(index.samples)
            damage += index.damage
            file_size = os.path.getsize(path)
        else:
            stream = open_stream(url, allow_pipe)
            try:
                for event in _scanning.stream_samples(url, read_chunks(stream, 4 << 20), max_member_size):
                    if isinstance(event, _scanning.Damage):
                        damage.append((event.offset, event.reason + (f" (key {event.key!r})" if event.key else "")))
                    else:
                        found.append(event[0])
            finally:
                stream.close()
            file_size = None
    except (OSError, ShardError) as e:
        return {"url": url, "samples": 0, "members": 0, "keys": None, "extensions": {}, "data_bytes": 0, "file_bytes": None,
                "damage": [(None, f"cannot read: {getattr(e, 'strerror', None) or e}")]}
    exts: Counter = Counter()
    samples = members = nbytes = 0
    sizes = []
    for s in found:
        for e in s.member_ext.tolist():
            exts[s.exts[e]] += 1
        samples += len(s)
        members += len(s.member_ext)
        nbytes += int(s.size.sum())
        sizes.append(np.add.reduceat(s.size, s.first[:-1]) if len(s) else np.zeros(0, np.int64))
        damage += [(p.offset, f"{p.reason} (key {p.key!r})") for p in s.problems]
    per_sample = np.concatenate(sizes) if sizes else np.zeros(0, np.int64)
    all_keys = [k for s in found for k in s.keys]
    key_info = {"first": all_keys[0], "last": all_keys[-1], "unique": len(set(all_keys))} if all_keys else None
    if key_info and key_info["unique"] < len(all_keys):
        damage.append((None, f"{len(all_keys) - key_info['unique']} keys appear in more than one sample"))
    return {"url": url, "samples": samples, "members": members, "keys": key_info,
            "extensions": dict(sorted(exts.items())),
            "data_bytes": nbytes, "file_bytes": file_size,
            "sample_bytes": {"min": int(per_sample.min()), "mean": float(per_sample.mean()),
                             "max": int(per_sample.max())} if samples else None,
            "damage": sorted(damage, key=lambda d: (d[0] is None, d[0] or 0))}


def inspect(urls, allow_pipe: bool = False) -> list[dict[str, Any]]:
    return [inspect_shard(u, allow_pipe=allow_pipe) for u in expand_urls(urls)]


def _mb(n) -> str:
    return "-" if n is None else f"{n / 1e6:.1f}"


def report(results: list[dict[str, Any]]) -> str:
    """A table of the shards, their totals and every damage found."""
    lines = [f"{'shard':<40} {'samples':>9} {'MB':>9}  {'keys':<24} extensions"]
    for r in results:
        name = r["url"] if len(r["url"]) <= 40 else "..." + r["url"][-37:]
        exts = " ".join(f"{e}:{c}" for e, c in r["extensions"].items())
        k = r["keys"]
        span = f"{k['first']}..{k['last']}" if k else "-"
        lines.append(f"{name:<40} {r['samples']:>9} {_mb(r['file_bytes']):>9}  {span:<24} {exts}")
    total = sum(r["samples"] for r in results)
    data = sum(r["data_bytes"] for r in results)
    exts = Counter()
    for r in results:
        exts.update(r["extensions"])
    lines.append(f"{len(results)} shards, {total} samples, {data / 1e6:.1f} MB of data, extensions: "
                 + (", ".join(f"{e} ({c})" for e, c in sorted(exts.items())) or "none"))
    damaged = [(r["url"], off, why) for r in results for off, why in r["damage"]]
    if damaged:
        lines.append(f"damage found ({len(damaged)}):")
        lines += [f"  {url}: " + (f"byte offset {off}: " if off is not None else "") + why for url, off, why in damaged]
    else:
        lines.append("no damage found")
    return "\n".join(lines)
