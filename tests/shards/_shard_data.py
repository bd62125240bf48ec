"""Shards for the tests: written by the webdataset library (the format reference) or ours."""
from __future__ import annotations

import os
import warnings

import numpy as np

with warnings.catch_warnings():
    warnings.simplefilter("ignore")
    import webdataset as wds


def make_samples(n: int, seed: int = 0, prefix: str = "s") -> list[dict]:
    """Samples of varied sizes: binary payload, a class, a text; keys unique."""
    rng = np.random.default_rng(seed)
    out = []
    for i in range(n):
        size = int(rng.integers(0, 3000))
        out.append({
            "__key__": f"{prefix}{i:06d}",
            "bin": rng.integers(0, 256, size, dtype=np.uint8).tobytes(),
            "cls": str(i % 10).encode(),
            "txt": f"sample {i} of {n}".encode(),
        })
    return out


def write_with_webdataset(directory, samples: list[dict], per_shard: int, name: str = "ref") -> list[str]:
    """Shards written by webdataset's own ShardWriter; returns their paths."""
    os.makedirs(directory, exist_ok=True)
    pattern = os.path.join(str(directory), f"{name}-%06d.tar")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        with wds.ShardWriter(pattern, maxcount=per_shard, verbose=0) as sink:
            for s in samples:
                sink.write(s)
    return sorted(os.path.join(str(directory), f) for f in os.listdir(directory)
                  if f.startswith(name + "-") and f.endswith(".tar"))


def read_with_webdataset(urls) -> list[dict]:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        out = list(wds.WebDataset(urls, shardshuffle=False))
    for s in out:
        s.pop("__local_path__", None)
    return out


def keys(samples) -> list[str]:
    return [s["__key__"] for s in samples]


def without_url(samples) -> list[dict]:
    """Samples without the URL they came from: what two reads of the same shards share."""
    return [{k: v for k, v in s.items() if k != "__url__"} for s in samples]
