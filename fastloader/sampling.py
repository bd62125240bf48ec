"""Index streams equal to torch's default samplers', cheaper to start.

`iter(BatchSampler(RandomSampler(ds), bs, drop_last))` turns the whole permutation into a
Python list before the first batch (`randperm(n).tolist()`, ~1.5 ms per 100k indices).
`batch_indices` yields the same batches, drawing the same random numbers at the same
moments, but converts one batch at a time; and where the permutation comes from the
sampler's own private generator (no `generator` given), it is made a batch at a time too
(`_C.LazyPermutation`, torch's algorithm and draws): 100k indices took ~1 ms of
randperm before the first batch. Any other sampler is iterated as it is.
"""
from __future__ import annotations

from collections.abc import Iterator

import torch
from torch.utils.data import BatchSampler, RandomSampler
from torch.utils.data.dataloader import _InfiniteConstantSampler

from . import _C


# From here on torch.randperm draws 64-bit numbers and shuffles inside out (no entry is
# final before the last step): its permutation cannot be made a batch at a time.
LAZY_MAX_N = (2**32 - 1) // 20


def _permutation_chunks(sampler: RandomSampler, step: int) -> Iterator[torch.Tensor | list[int]]:
    """RandomSampler.__iter__ (replacement=False), yielding chunks (tensors, or lists of a
    lazy permutation's steps) instead of ints."""
    n = len(sampler.data_source)
    generator = sampler.generator
    if generator is None:
        seed = int(torch.empty((), dtype=torch.int64).random_().item())
        generator = torch.Generator()
        generator.manual_seed(seed)
        if n < LAZY_MAX_N:
            yield from _private_permutations(n, sampler.num_samples, generator, step)
            return
    for _ in range(sampler.num_samples // n):
        yield torch.randperm(n, generator=generator)
    # torch draws this last permutation even when no element of it is used
    yield torch.randperm(n, generator=generator)[: sampler.num_samples % n]


def _private_permutations(n: int, num_samples: int, generator: torch.Generator, step: int):
    """The same permutations from a generator nothing else sees, each made `step` entries
    at a time as they are read (the first batch waits for its own entries, not for all n),
    and none drawn that no index is taken from."""
    full, rest = divmod(num_samples, n)
    for count in [n] * full + ([rest] if rest else []):
        permutation = _C.LazyPermutation(n, generator)
        for start in range(0, count, step):
            yield permutation.next(min(step, count - start))


def _same(x):
    return x


def _batches(chunks: Iterator[torch.Tensor | list[int]], batch_size: int, drop_last: bool):
    carry: list[int] = []
    for chunk in chunks:
        as_list = _same if type(chunk) is list else torch.Tensor.tolist  # a list's slices are lists
        pos = 0
        if carry:
            pos = batch_size - len(carry)
            carry += as_list(chunk[:pos])
            if len(carry) < batch_size:
                continue
            yield carry
            carry = []
        end = len(chunk)
        while pos + batch_size <= end:
            yield as_list(chunk[pos : pos + batch_size])
            pos += batch_size
        carry = as_list(chunk[pos:])
    if carry and not drop_last:
        yield carry


def batch_indices(index_sampler) -> Iterator:
    """An iterator over index_sampler: lazy for torch's shuffled default, else plain."""
    if (
        type(index_sampler) is BatchSampler
        and type(index_sampler.sampler) is RandomSampler
        and not index_sampler.sampler.replacement
    ):
        s = index_sampler
        return _batches(_permutation_chunks(s.sampler, s.batch_size), s.batch_size, s.drop_last)
    return iter(index_sampler)


def safe_to_draw_before_fork(index_sampler) -> bool:
    """True when drawing the first indices before the workers are forked leaves them as
    torch's (which forks first) would: torch's shuffling default, which draws from
    torch's default generator only (each worker reseeds it) and already took the
    dataset's len() when it was made. A user's generator may also be used by worker code,
    a len() may open handles a worker should open itself, and a custom sampler may touch
    numpy's or Python's RNG: those draw after the fork, as in torch."""
    if type(index_sampler) is BatchSampler:
        index_sampler = index_sampler.sampler
    if type(index_sampler) is _InfiniteConstantSampler:
        return True
    return (
        type(index_sampler) is RandomSampler
        and index_sampler.generator is None
        and index_sampler._num_samples is None
    )
