"""The pure order / split functions against brute-force versions."""
from __future__ import annotations

import numpy as np
import pytest

from fastloader.shards import partition


def _brute_remaining(order, layers):
    items = list(order)
    for parts, counts in layers:
        shares = [items[k::parts][:counts[k]] for k in range(parts)]
        taken = {x for share in shares for x in share}
        items = [x for x in items if x not in taken]
    return items


@pytest.mark.parametrize("n", [0, 1, 7, 50])
def test_remaining_matches_brute_force(n):
    rng = np.random.default_rng(n)
    order = partition.permutation(n, seed=3, epoch=1)
    assert sorted(order.tolist()) == list(range(n))
    layers = []
    for parts in (3, 1, 4):
        left = len(_brute_remaining(order, layers))
        layers.append([parts, [int(rng.integers(0, left // parts + 2)) for _ in range(parts)]])
        assert partition.remaining(order, layers).tolist() == _brute_remaining(order, layers)


def test_permutation_is_a_function_of_seed_and_epoch():
    a = partition.permutation(100, 1, 0)
    assert np.array_equal(a, partition.permutation(100, 1, 0))
    assert not np.array_equal(a, partition.permutation(100, 1, 1))
    assert not np.array_equal(a, partition.permutation(100, 2, 0))


@pytest.mark.parametrize("total,world,workers", [(100, 3, 2), (7, 4, 3), (0, 2, 2), (1000, 8, 5)])
def test_an_epoch_size_gives_every_rank_the_same_count(total, world, workers):
    padded, parts = partition.padded_total(total, world), world * workers
    per_rank = [sum(partition.share(padded, parts, w * world + r) for w in range(workers)) for r in range(world)]
    assert len(set(per_rank)) == 1 and per_rank[0] == -(-total // world)


@pytest.mark.parametrize("n,world,workers", [(14, 3, 2), (10, 4, 3), (3, 4, 2), (40, 2, 2), (1, 3, 1)])
def test_ranks_get_what_distributed_sampler_gives_them(n, world, workers):
    """An epoch_size of the dataset's size: each rank's samples (over its workers) are
    DistributedSampler's for the same order, every sample delivered."""
    import torch

    order = partition.permutation(n, seed=1, epoch=0)
    dealt = partition.fit(order, partition.padded_total(n, world))
    parts = world * workers
    for r in range(world):
        mine = sorted(x for w in range(workers) for x in dealt[w * world + r::parts].tolist())
        sampler = torch.utils.data.DistributedSampler(range(n), num_replicas=world, rank=r, shuffle=False)
        assert mine == sorted(order[i] for i in sampler)


def test_fit_cuts_or_repeats():
    assert partition.fit(np.arange(5), 3).tolist() == [0, 1, 2]
    assert partition.fit(np.arange(3), 7).tolist() == [0, 1, 2, 0, 1, 2, 0]
    with pytest.raises(ValueError, match="epoch_size"):
        partition.fit(np.arange(0), 2)
