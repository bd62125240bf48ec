"""The shuffled index stream (`fastloader.sampling`) against torch's own samplers: the
same batches and the same random draws, whether the permutation is made at once (a
user's generator) or a batch at a time (the sampler's private one)."""
import pytest
import torch
from torch.utils.data import BatchSampler, RandomSampler

from fastloader import _C, sampling
from fastloader.sampling import batch_indices


# 1000 and 100_003 switch from the sparse map to the array at n/16 steps, 2**21 + 3 at the
# 64K-step cap; the uneven reads cross both switches mid-call.
@pytest.mark.parametrize("n", [1, 2, 7, 1000, 100_003, 2**21 + 3])
def test_lazy_permutation_is_torch_randperm(n):
    for seed in (0, 5, 2**40 + 3):
        theirs, ours = torch.Generator().manual_seed(seed), torch.Generator().manual_seed(seed)
        expected = torch.randperm(n, generator=theirs)
        lazy, got, step = _C.LazyPermutation(n, ours), [], 1
        while len(part := lazy.next(step)):
            assert type(part) is list and len(part) == min(step, n - len(got))
            got += part
            step = step * 3 + 1  # uneven reads
        assert got == expected.tolist()
        assert torch.equal(ours.get_state(), theirs.get_state())  # the same draws, no more
        assert len(lazy.next(5)) == 0 and len(lazy) == n


def test_lazy_permutation_needs_a_cpu_generator():
    with pytest.raises(TypeError):
        _C.LazyPermutation(5, "not a generator")


def test_lazy_permutation_refuses_what_randperm_makes_another_way():
    # torch.randperm switches to 64-bit draws at this n; below it, its 32-bit steps
    with pytest.raises(RuntimeError, match="32-bit"):
        _C.LazyPermutation(sampling.LAZY_MAX_N, torch.Generator())
    assert len(_C.LazyPermutation(sampling.LAZY_MAX_N - 1, torch.Generator()).next(3)) == 3
    with pytest.raises(RuntimeError, match="non-negative"):
        _C.LazyPermutation(-1, torch.Generator())


def test_large_datasets_take_torch_s_randperm(monkeypatch):
    """At or past LAZY_MAX_N the private generator's permutations come from torch.randperm
    itself, whose algorithm changes there (checked here with a lowered limit)."""
    monkeypatch.setattr(sampling, "LAZY_MAX_N", 100)
    made = []
    monkeypatch.setattr(sampling._C, "LazyPermutation", lambda *a: made.append(a))
    data = range(100)
    torch.manual_seed(3)
    expected = list(BatchSampler(RandomSampler(data, num_samples=250), 32, False))
    torch.manual_seed(3)
    assert list(batch_indices(BatchSampler(RandomSampler(data, num_samples=250), 32, False))) == expected
    assert made == []


@pytest.mark.parametrize("num_samples", [None, 37, 250, 1000, 2500])
@pytest.mark.parametrize("batch_size,drop_last", [(64, False), (64, True), (1000, False), (7, True)])
@pytest.mark.parametrize("own_generator", [False, True])
def test_batches_and_draws_are_torch_s(num_samples, batch_size, drop_last, own_generator):
    data = range(1000)

    def sampler():
        gen = torch.Generator().manual_seed(11) if own_generator else None
        return BatchSampler(RandomSampler(data, num_samples=num_samples, generator=gen), batch_size, drop_last)

    torch.manual_seed(3)
    theirs = list(iter(sampler()))
    after_theirs = torch.get_rng_state()
    torch.manual_seed(3)
    ours = list(batch_indices(sampler()))
    assert ours == theirs and all(type(i) is int for b in ours for i in b)
    assert torch.equal(torch.get_rng_state(), after_theirs)
