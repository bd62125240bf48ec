"""A sampler that puts samples of similar length next to each other (less padding)."""
from __future__ import annotations

from collections.abc import Iterator, Sequence

import torch
from torch.utils.data import Sampler


class LengthGroupedSampler(Sampler[int]):
    """Indices in a random order in which each run of `batch_size` has similar lengths:
    a random permutation is cut into windows of `window` samples (default 50 batches),
    each window is sorted longest first and cut into batches, and the batches are
    shuffled (the one holding the longest sample goes first, so memory peaks at once).
    Use with `DataLoader(batch_size=batch_size, sampler=...)`. Deterministic for a
    `generator` or for (`seed`, epoch) (`set_epoch`)."""

    def __init__(self, lengths: Sequence[int], batch_size: int, window: int | None = None,
                 generator: torch.Generator | None = None, seed: int = 0) -> None:
        if batch_size < 1:
            raise ValueError(f"batch_size must be positive, got {batch_size}")
        self.lengths = torch.as_tensor(lengths, dtype=torch.int64)
        self.batch_size = batch_size
        self.window = max(batch_size, (window or 50 * batch_size) // batch_size * batch_size)
        self.generator = generator
        self.seed = seed
        self.epoch = 0

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def __len__(self) -> int:
        return len(self.lengths)

    def __iter__(self) -> Iterator[int]:
        g = self.generator
        if g is None:
            g = torch.Generator().manual_seed(self.seed + self.epoch)
        perm = torch.randperm(len(self.lengths), generator=g)
        batches = []
        for start in range(0, len(perm), self.window):
            part = perm[start:start + self.window]
            part = part[torch.argsort(self.lengths[part], descending=True, stable=True)]
            batches += list(torch.split(part, self.batch_size))
        if not batches:
            return iter(())
        # full batches shuffled, the short one (if any) last, so batches stay aligned
        full = [i for i, b in enumerate(batches) if len(b) == self.batch_size]
        short = [i for i, b in enumerate(batches) if len(b) < self.batch_size]
        order = [full[i] for i in torch.randperm(len(full), generator=g).tolist()] + short
        longest = int(torch.argmax(self.lengths))
        first = next(i for i in order if bool((batches[i] == longest).any()))
        if first in full:  # the longest sample's batch first
            order.remove(first)
            order.insert(0, first)
        return iter(torch.cat([batches[i] for i in order]).tolist())
