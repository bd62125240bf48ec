"""fastloader.DataLoader against torch.utils.data.DataLoader, side by side."""
from __future__ import annotations

import random

import numpy as np
import pytest
import torch
import torch.utils.data as tud

import fastloader

from _loader_data import RichDataset, ShardedStream, SquareDataset, assert_same


def _batches(cls, dataset, epochs=1, seed=1234, gen_seed=None, **kwargs):
    torch.manual_seed(seed)
    np.random.seed(seed)
    random.seed(seed)
    if gen_seed is not None:
        kwargs["generator"] = torch.Generator().manual_seed(gen_seed)
    loader = cls(dataset, **kwargs)
    out = []
    for _ in range(epochs):
        out.append(list(loader))
    after = torch.rand(3)  # the global RNG must be left where torch leaves it
    return out, after, len(loader) if _has_len(loader) else None


def _has_len(loader):
    try:
        len(loader)
        return True
    except TypeError:
        return False


def check_same(dataset, epochs=1, gen_seed=None, **kwargs):
    ours = _batches(fastloader.DataLoader, dataset, epochs, gen_seed=gen_seed, **kwargs)
    theirs = _batches(tud.DataLoader, dataset, epochs, gen_seed=gen_seed, **kwargs)
    assert len(ours[0][0]) == len(theirs[0][0])
    assert_same(ours[0], theirs[0])
    assert torch.equal(ours[1], theirs[1])
    assert ours[2] == theirs[2]


MAP_CASES = [
    dict(batch_size=8),
    dict(batch_size=8, shuffle=True),
    dict(batch_size=8, shuffle=True, drop_last=True),
    dict(batch_size=5, shuffle=True, num_workers=1),
    dict(batch_size=8, shuffle=True, num_workers=2),
    dict(batch_size=8, shuffle=True, num_workers=2, drop_last=True, prefetch_factor=1),
    dict(batch_size=8, shuffle=True, num_workers=3, prefetch_factor=4),
    dict(batch_size=None, num_workers=0),
    dict(batch_size=None, shuffle=True, num_workers=2),
    dict(batch_size=1, num_workers=2),
]


@pytest.mark.parametrize("kwargs", MAP_CASES, ids=lambda k: ",".join(f"{a}={b}" for a, b in k.items()))
@pytest.mark.parametrize("gen_seed", [None, 7])
def test_map_style_same_batches(kwargs, gen_seed):
    check_same(RichDataset(), gen_seed=gen_seed, **kwargs)


def test_persistent_workers_two_epochs():
    check_same(RichDataset(), epochs=3, batch_size=6, shuffle=True, num_workers=2, persistent_workers=True)


def test_custom_sampler_and_batch_sampler():
    ds = SquareDataset(30)
    check_same(ds, batch_size=4, sampler=list(reversed(range(30))), num_workers=2)
    check_same(ds, batch_sampler=[[1, 2], [5], [7, 8, 9]], num_workers=2)
    check_same(ds, batch_sampler=tud.BatchSampler(tud.SequentialSampler(ds), 7, True))
    check_same(ds, batch_size=3, sampler=tud.RandomSampler(ds, replacement=True, num_samples=17), num_workers=1)
    check_same(ds, batch_size=3, sampler=tud.SubsetRandomSampler(range(5, 25)), num_workers=2)


def test_custom_collate_fn_and_worker_init_fn():
    def collate(items):
        return {"sum": sum(int(t.sum()) for t in items), "seed": torch.initial_seed()}

    def init_fn(worker_id):
        torch.manual_seed(1000 + worker_id)

    check_same(SquareDataset(), batch_size=4, num_workers=2, collate_fn=collate, worker_init_fn=init_fn)


@pytest.mark.parametrize("num_workers", [0, 1, 2, 3])
@pytest.mark.parametrize("batch_size", [None, 4])
def test_iterable_sharded_by_worker_info(num_workers, batch_size):
    check_same(ShardedStream(), batch_size=batch_size, num_workers=num_workers)


@pytest.mark.parametrize("num_workers", [2, 3])
def test_iterable_workers_ending_early(num_workers):
    check_same(ShardedStream(uneven=True), batch_size=2, num_workers=num_workers, drop_last=True)
    check_same(ShardedStream(uneven=True), batch_size=2, num_workers=num_workers)


def test_in_order_false_gives_the_same_batches_in_some_order():
    ds = SquareDataset(64)
    ours = list(fastloader.DataLoader(ds, batch_size=4, num_workers=2, in_order=False))
    ref = list(tud.DataLoader(ds, batch_size=4, num_workers=2))
    key = lambda b: b[0, 0].item()  # noqa: E731
    assert_same(sorted(ours, key=key), sorted(ref, key=key))


@pytest.mark.parametrize("num_workers", [0, 2])
def test_thread_workers_same_batches_for_deterministic_datasets(num_workers):
    for ds, kw in [(RichDataset(random_draws=False), dict(batch_size=8, shuffle=True)),
                   (ShardedStream(uneven=True), dict(batch_size=3))]:
        ours = _batches(fastloader.DataLoader, ds, worker_type="thread", num_workers=num_workers, **kw)
        theirs = _batches(tud.DataLoader, ds, num_workers=num_workers, **kw)
        assert_same(ours[0], theirs[0])


def test_thread_workers_see_their_worker_info():
    seen = []

    class Probe(tud.IterableDataset):
        def __iter__(self):
            info = tud.get_worker_info()
            seen.append((info.id, info.num_workers))
            yield info.id

    out = list(fastloader.DataLoader(Probe(), batch_size=None, num_workers=3, worker_type="thread"))
    assert sorted(out) == [0, 1, 2]
    assert sorted(seen) == [(0, 3), (1, 3), (2, 3)]
    assert tud.get_worker_info() is None  # not in a worker here


def test_is_a_torch_dataloader_with_torch_attributes():
    loader = fastloader.DataLoader(SquareDataset(), batch_size=4, shuffle=True)
    assert isinstance(loader, tud.DataLoader)
    assert isinstance(loader.sampler, tud.RandomSampler)
    assert loader.batch_size == 4 and len(loader) == 10
    with pytest.raises(ValueError, match="should not be set after"):
        loader.batch_size = 3


MISUSE = [
    dict(shuffle=True, sampler=[0, 1]),
    dict(batch_size=2, batch_sampler=[[0, 1]]),
    dict(drop_last=True, batch_sampler=[[0, 1]]),
    dict(batch_size=None, drop_last=True),
    dict(num_workers=-1),
    dict(timeout=-1),
    dict(prefetch_factor=2),
    dict(persistent_workers=True),
    dict(multiprocessing_context="fork"),
    dict(num_workers=1, multiprocessing_context="nope"),
]


def _error_of(call, last_line: bool = False):
    """(type, message) of what call() raises (the message's last line only), or None."""
    try:
        call()
    except Exception as e:  # noqa: BLE001
        return type(e), str(e).strip().splitlines()[-1] if last_line else str(e)
    return None


def assert_same_error(make, last_line: bool = False):
    """make(cls) with torch's DataLoader and with fastloader's: the same error."""
    expected = _error_of(lambda: make(tud.DataLoader), last_line)
    assert expected is not None
    assert _error_of(lambda: make(fastloader.DataLoader), last_line) == expected


@pytest.mark.parametrize("kwargs", MISUSE, ids=lambda k: ",".join(k))
def test_misuse_raises_what_torch_raises(kwargs):
    assert_same_error(lambda cls: cls(SquareDataset(), **kwargs))


@pytest.mark.parametrize("kwargs", [dict(num_workers=2, prefetch_factor=0),
                                    dict(num_workers=2, prefetch_factor=0, persistent_workers=True)])
def test_misuse_found_at_iter_raises_what_torch_raises(kwargs):
    """torch's constructor takes prefetch_factor=0; its iterator refuses it."""
    assert_same_error(lambda cls: iter(cls(SquareDataset(), batch_size=2, **kwargs)))


def test_iterable_misuse_raises_what_torch_raises():
    for kwargs in [dict(shuffle=True), dict(sampler=[0]), dict(batch_sampler=[[0]])]:
        with pytest.raises(ValueError) as theirs:
            tud.DataLoader(ShardedStream(), **kwargs)
        with pytest.raises(ValueError) as ours:
            fastloader.DataLoader(ShardedStream(), **kwargs)
        assert str(ours.value) == str(theirs.value)


def test_bad_worker_type_is_a_clear_error():
    with pytest.raises(ValueError, match="worker_type"):
        fastloader.DataLoader(SquareDataset(), worker_type="green")


def test_len_warning_for_iterables_like_torch():
    loader = fastloader.DataLoader(ShardedStream(n=10), batch_size=None, num_workers=2)
    loader_len = len(loader)
    assert loader_len == 10
    with pytest.warns(UserWarning, match="was reported to be 10"):
        # a stream that ignores worker info yields everything twice with 2 workers
        class Dup(ShardedStream):
            def __iter__(self):
                yield from ({"i": i} for i in range(self.n))

        loader = fastloader.DataLoader(Dup(n=10), batch_size=None, num_workers=2)
        len(loader)
        list(loader)


@pytest.mark.parametrize("context", ["spawn", "forkserver"])
def test_other_start_methods(context):
    check_same(RichDataset(n=20), batch_size=4, shuffle=True, num_workers=2, multiprocessing_context=context)


def test_persistent_workers_after_an_epoch_left_after_one_batch():
    ds = SquareDataset(16)

    def epochs(cls):
        torch.manual_seed(0)
        loader = cls(ds, batch_size=2, shuffle=True, num_workers=2, persistent_workers=True)
        out = [next(iter(loader))]  # an epoch abandoned after its first batch
        out += list(loader) + list(loader)
        return out

    assert_same(epochs(fastloader.DataLoader), epochs(tud.DataLoader))


class AugmentsWith(tud.Dataset):
    """Augmentation drawn from the generator the user also gave the DataLoader."""

    def __init__(self, generator):
        self.generator = generator

    def __len__(self):
        return 8

    def __getitem__(self, i):
        return torch.randint(1000, (1,), generator=self.generator).item()


@pytest.mark.parametrize("num_workers", [1, 2])
def test_a_generator_shared_with_the_dataset_is_where_torch_leaves_it_in_workers(num_workers):
    def run(cls):
        g = torch.Generator().manual_seed(0)
        return [b.tolist() for b in cls(AugmentsWith(g), batch_size=4, shuffle=True, generator=g,
                                        num_workers=num_workers)]

    assert run(fastloader.DataLoader) == run(tud.DataLoader)


class OpensLazily(tud.Dataset):
    """Opens its (fork-unsafe) handle on first use, as h5py datasets do, so that each
    worker opens its own: len() must not be called before the workers fork."""

    def __init__(self):
        import os

        self.opened_in = None
        self._getpid = os.getpid

    def __len__(self):
        if self.opened_in is None:
            self.opened_in = self._getpid()
        return 8

    def __getitem__(self, i):
        if self.opened_in is None:
            self.opened_in = self._getpid()
        return int(self.opened_in == self._getpid())


def test_len_is_not_called_before_the_workers_fork():
    def run(cls):
        return [b.tolist() for b in cls(OpensLazily(), batch_size=4, num_workers=1)]

    assert run(fastloader.DataLoader) == run(tud.DataLoader) == [[1, 1, 1, 1], [1, 1, 1, 1]]


COLLATE_MISMATCHES = {
    "int after a tensor": lambda: [torch.tensor(1), 2],
    "array after a tensor": lambda: [torch.tensor([1.0]), np.zeros(1)],
    "large arrays, second smaller": lambda: [np.zeros((100, 100)), np.zeros((100, 99))],
    "large array then int": lambda: [np.zeros((100, 100)), 3],
    "large arrays, second larger": lambda: [np.zeros((100, 99)), np.zeros((100, 100))],
    "small arrays of two shapes": lambda: [np.zeros(3), np.zeros(4)],
}


@pytest.mark.parametrize("case", sorted(COLLATE_MISMATCHES))
@pytest.mark.parametrize("worker_type", ["process", "thread"])
def test_collate_errors_in_workers_are_torchs(case, worker_type):
    """In a worker, torch's collate sizes a shared storage before it stacks: a batch that
    does not fit fails there, with other errors than in the main process."""
    def make(cls):
        kw = {} if cls is tud.DataLoader else {"worker_type": worker_type}
        return list(cls(COLLATE_MISMATCHES[case](), batch_size=2, num_workers=1, **kw))

    assert_same_error(make, last_line=True)
