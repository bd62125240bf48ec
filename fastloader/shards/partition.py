"""Pure functions for an epoch's order and its split over ranks and workers.

The order of an epoch is a function of (seed, epoch, size); a partition's share is a
function of that order and (partition, partitions). Partition k = worker * world_size +
rank takes positions k, k + partitions, ...: a rank's positions are those equal to it
modulo world_size, as DistributedSampler deals them, so ranks differ by one at most. Resumes stack "layers": each layer
records how many items every partition had taken when a run stopped, so the items
still to come are a pure function of the order and the layers, whatever the topology
of the next run.
"""
from __future__ import annotations

import numpy as np


def rng(*words: int) -> np.random.Generator:
    return np.random.Generator(np.random.PCG64(np.random.SeedSequence([int(w) & 0xFFFFFFFF for w in words])))


def permutation(n: int, seed: int, epoch: int, salt: int = 0) -> np.ndarray:
    return rng(seed, epoch, salt).permutation(n).astype(np.int64)


def remaining(order: np.ndarray, layers: list[tuple[int, list[int]]]) -> np.ndarray:
    """`order` less, layer by layer, the first counts[k] items of every strided partition k."""
    for parts, counts in layers:
        pos = np.arange(len(order))
        taken = np.asarray(counts, dtype=np.int64)[pos % parts]
        order = order[pos // parts >= taken]
    return order


def share(total: int, parts: int, k: int) -> int:
    """Part k's share when `total` items are dealt as evenly as possible over `parts`."""
    return total // parts + (1 if k < total % parts else 0)


def padded_total(total: int, world_size: int) -> int:
    """Positions of an epoch of `total` items over all ranks when every rank gets the same
    count (rounded up, as DistributedSampler pads)."""
    return -(-total // world_size) * world_size


def fit(items: np.ndarray, n: int) -> np.ndarray:
    """Exactly n items: cut, or repeated from the start (the DistributedSampler padding)."""
    if len(items) == n:
        return items
    if len(items) == 0:
        raise ValueError(f"no samples to fill an epoch_size of {n}: the shards hold none")
    return np.resize(items, n)
