"""Datasets for comparing fastloader.DataLoader with torch's, and a deep equality check."""
from __future__ import annotations

import random
from collections import namedtuple

import numpy as np
import torch
from torch.utils.data import Dataset, IterableDataset, get_worker_info

Pair = namedtuple("Pair", ["left", "right"])


class RichDataset(Dataset):
    """Every kind of item default_collate handles, plus draws from the worker's RNGs."""

    def __init__(self, n: int = 53, random_draws: bool = True):
        self.n = n
        self.random_draws = random_draws
        self.x = torch.arange(n * 6, dtype=torch.float32).reshape(n, 2, 3)

    def __len__(self):
        return self.n

    def __getitem__(self, i):
        item = {
            "x": self.x[i],
            "img": np.full((4, 3), i, dtype=np.uint8),
            "label": i % 5,
            "weight": i / 7.0,
            "name": f"sample-{i}",
            "pair": Pair(torch.tensor([i, -i]), (i, str(i))),
        }
        if self.random_draws:
            item["r"] = (torch.rand(2), np.random.rand(), random.random())
        return item


class SquareDataset(Dataset):
    def __init__(self, n: int = 40):
        self.n = n

    def __len__(self):
        return self.n

    def __getitem__(self, i):
        return torch.tensor([i, i * i])


class ShardedStream(IterableDataset):
    """Splits range(n) over workers with get_worker_info; worker w gets lengths that differ."""

    def __init__(self, n: int = 47, uneven: bool = False):
        self.n = n
        self.uneven = uneven

    def __iter__(self):
        info = get_worker_info()
        wid, nw = (0, 1) if info is None else (info.id, info.num_workers)
        items = range(wid, self.n, nw)
        if self.uneven and wid == 0:
            items = list(items)[:3]
        for i in items:
            yield {"i": i, "v": torch.full((2,), float(i))}

    def __len__(self):
        return self.n


class FailingDataset(Dataset):
    def __init__(self, bad: int, n: int = 20):
        self.bad, self.n = bad, n

    def __len__(self):
        return self.n

    def __getitem__(self, i):
        if i == self.bad:
            raise KeyError(f"item {i} is broken")
        return torch.tensor(i)


def assert_same(a, b, path="batch"):
    assert type(a) is type(b), f"{path}: {type(a)} != {type(b)}"
    if isinstance(a, torch.Tensor):
        assert a.dtype == b.dtype and a.shape == b.shape, f"{path}: {a.dtype}{a.shape} vs {b.dtype}{b.shape}"
        assert torch.equal(a, b), f"{path}: values differ"
    elif isinstance(a, np.ndarray):
        np.testing.assert_array_equal(a, b)
    elif isinstance(a, dict):
        assert a.keys() == b.keys(), f"{path}: keys differ"
        for k in a:
            assert_same(a[k], b[k], f"{path}[{k!r}]")
    elif isinstance(a, (list, tuple)):
        assert len(a) == len(b), f"{path}: lengths differ"
        for i, (x, y) in enumerate(zip(a, b)):
            assert_same(x, y, f"{path}[{i}]")
    else:
        assert a == b, f"{path}: {a!r} != {b!r}"


class StatefulStream(IterableDataset):
    """An iterable that saves its own position (the `state_dict` path of resume)."""

    def __init__(self, n: int = 41):
        self.n = n
        self.pos = 0

    def __iter__(self):
        info = get_worker_info()
        wid, nw = (0, 1) if info is None else (info.id, info.num_workers)
        mine = list(range(wid, self.n, nw))
        while self.pos < len(mine):
            i = mine[self.pos]
            self.pos += 1
            yield torch.tensor([i, i + 100])
        self.pos = 0

    def state_dict(self):
        return {"pos": self.pos}

    def load_state_dict(self, state):
        self.pos = state["pos"]


class RandomStream(IterableDataset):
    """A sharded stream whose items draw from the worker's RNGs."""

    def __init__(self, n: int = 30):
        self.n = n

    def __iter__(self):
        info = get_worker_info()
        wid, nw = (0, 1) if info is None else (info.id, info.num_workers)
        for i in range(wid, self.n, nw):
            yield {"i": i, "r": torch.rand(1), "np": np.random.rand()}


class ShuffledBatches:
    """A batch sampler that draws its permutation when iter() is called."""

    def __init__(self, n: int, batch_size: int):
        self.n, self.batch_size = n, batch_size

    def __iter__(self):
        perm = torch.randperm(self.n).tolist()
        return iter([perm[i:i + self.batch_size] for i in range(0, self.n, self.batch_size)])

    def __len__(self):
        return (self.n + self.batch_size - 1) // self.batch_size
