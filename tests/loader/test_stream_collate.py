"""Collation while a batch is fetched (`_stream_collate`): large arrays / tensors copied
into their batch tensor sample by sample, against torch's fetch-then-`default_collate`:
same batches, same errors, every sample's array freed before the next is made."""
import collections
import weakref

import numpy as np
import pytest
import torch
from torch.utils.data import default_collate
from torch.utils.data.dataloader import _DatasetKind

import fastloader
from fastloader import _C, _collate_hook, _shm, _stream_collate

from test_fast_collate import assert_same, torch_in_a_worker

Pair = collections.namedtuple("Pair", "image extra")
ROW = (64, 64, 4)  # 16,384 float32 = 64 KB: streamed


def image(i, shape=ROW, dtype=np.float32):
    return np.random.default_rng(i).integers(0, 255, shape).astype(dtype)


class Samples:
    """A map-style dataset from a function of the index."""

    def __init__(self, make, n=12):
        self.make, self.n = make, n

    def __len__(self):
        return self.n

    def __getitem__(self, i):
        return self.make(i)


SAMPLES = {
    "tuple": lambda i: (image(i), i),
    "uint8 image and label": lambda i: (image(i, (224, 224, 3), np.uint8), i % 10),
    "dict": lambda i: {"image": torch.from_numpy(image(i)).clone(), "label": i, "name": f"s{i}", "small": image(i, (3,))},
    "namedtuple": lambda i: Pair(image(i), (image(i + 1, (40, 40, 8), np.float64), float(i))),
    "list": lambda i: [image(i, (128, 128), np.int32), image(i + 50, (128, 128), np.int32)],
    "array alone": lambda i: image(i, (9000,), np.int64),
    "tensor alone": lambda i: torch.from_numpy(image(i, (200, 100), np.float32)).to(torch.bfloat16),
    "nested": lambda i: ({"a": image(i), "b": [image(i + 1)]}, (torch.from_numpy(image(i)), i)),
    # sample 5 differs: torch's way must give torch's batch or torch's error
    "a larger image": lambda i: (image(i, (65, 64, 4) if i == 5 else ROW), i),
    "another dtype": lambda i: (image(i, ROW, np.float64 if i == 5 else np.float32), i),
    "a tensor among arrays": lambda i: (torch.from_numpy(image(i)) if i == 5 else image(i), i),
    "a missing field": lambda i: (image(i), i) if i != 5 else (image(i),),
    "a missing key": lambda i: {"image": image(i), ("label" if i != 5 else "other"): i},
    "a list then a tuple": lambda i: (image(i), i) if i != 5 else [image(i), i],
    "a transposed view": lambda i: (image(i, (64, 256)) if i != 5 else image(i, (256, 64)).T, i),
    "a tensor needing grad": lambda i: torch.from_numpy(image(i)).requires_grad_(i == 5),
    "a number instead": lambda i: (image(i) if i != 5 else 5, i),
    "small arrays": lambda i: (image(i, (8, 8)), i),  # under MIN_ROW_BYTES: not streamed
}


def fetch_ours(dataset, index):
    fetcher = _stream_collate.create_fetcher(_DatasetKind.Map, dataset, True, default_collate, False)
    assert isinstance(fetcher, _stream_collate.StreamingMapFetcher)
    was = _collate_hook.mark_fetching(True)
    try:
        return fetcher.fetch(index)
    finally:
        _collate_hook.mark_fetching(was)


def outcome(fn):
    try:
        return fn(), None
    except Exception as e:  # the same error, type and text, is part of the contract
        return None, (type(e), str(e))


@pytest.fixture
def count_rows(monkeypatch):
    calls = []
    real = _C.write_row

    def counted(*args):
        calls.append(args[1])
        return real(*args)

    monkeypatch.setattr(_C, "write_row", counted)
    return calls


@pytest.mark.parametrize("case", sorted(SAMPLES))
def test_same_batch_or_error_as_torch(case, count_rows):
    data = Samples(SAMPLES[case])
    index = list(range(3, 11))
    mine, my_error = outcome(lambda: fetch_ours(data, index))
    theirs, their_error = outcome(lambda: default_collate([data[i] for i in index]))
    assert my_error == their_error
    if their_error is None:
        assert_same(mine, theirs)
    if case in ("tuple", "uint8 image and label", "dict", "namedtuple", "array alone", "tensor alone"):
        assert sorted(set(count_rows)) == list(range(len(index)))  # streamed: every row written
    if case == "small arrays":
        assert count_rows == []


@pytest.mark.parametrize("case", ["tuple", "dict", "nested", "a larger image", "a transposed view"])
def test_same_as_torch_in_a_worker_arena(case, monkeypatch):
    """In a worker process the rows are written into the arena's segment through its fd."""
    data = Samples(SAMPLES[case])
    index = list(range(8))
    theirs, their_error = outcome(lambda: torch_in_a_worker([data[i] for i in index]))
    arena = _shm.WorkerArena(0)
    monkeypatch.setattr(_collate_hook, "_process_arena", arena)
    try:
        mine, my_error = outcome(lambda: fetch_ours(data, index))
        assert my_error == their_error
        if their_error is None:
            assert_same(mine, theirs)
            first = mine[0] if isinstance(mine, (list, tuple)) else mine
            first = first["a"] if isinstance(first, dict) and "a" in first else first
            first = first["image"] if isinstance(first, dict) else first
            assert arena._find(first) is not None  # written into the arena
    finally:
        arena.abandon_batch()


def test_a_batch_of_many_odd_sized_rows():
    """4.5 MB of 70,001-byte rows: written with non-temporal stores, at unaligned offsets."""
    data = Samples(lambda i: (image(i, (70001,), np.uint8), i), n=64)
    assert_same(fetch_ours(data, list(range(64))), default_collate([data[i] for i in range(64)]))


def test_each_sample_is_freed_before_the_next_is_made():
    alive = []

    class Tracked(Samples):
        def __getitem__(self, i):
            alive.append(sum(r() is not None for r in refs))
            arr = image(i)
            refs.append(weakref.ref(arr))
            return arr, i

    refs = []
    batch = fetch_ours(Tracked(None), list(range(16)))
    assert alive == [0] * 16  # torch holds all 16 until it stacks them
    assert torch.equal(batch[0], torch.stack([torch.from_numpy(image(i)) for i in range(16)]))


def test_a_buffer_the_dataset_reuses_is_copied_when_torch_copies_it():
    """An array the dataset still holds may change before the batch is stacked: torch
    stacks what it holds at the end, and so must we."""

    class Reused(Samples):
        buf = np.zeros(ROW, np.float32)

        def __getitem__(self, i):
            self.buf[...] = i
            return self.buf, i

    data = Reused(None)
    mine = fetch_ours(data, [1, 2, 3])
    assert_same(mine, default_collate([data[i] for i in [1, 2, 3]]))
    assert bool((mine[0] == 3).all())


class Refilled(Samples):
    """Datasets that hand out what they keep and refill it for the next sample."""

    def __init__(self, kind):
        super().__init__(None)
        self.kind, self.buf, self.box = kind, np.zeros(ROW, np.float32), {}

    def __getitem__(self, i):
        self.buf[...] = i
        if self.kind == "view":
            return self.buf[:], i
        if self.kind == "reshaped view":
            return self.buf.reshape(-1), i
        if self.kind == "from_numpy":
            return torch.from_numpy(self.buf), i
        if self.kind == "tensor storage":
            return self.tensor_view(), i
        if self.kind == "dict":
            self.box["x"] = image(i)
            return self.box
        if self.kind == "list":
            self.box = self.box if isinstance(self.box, list) else [None, 0]
            self.box[0], self.box[1] = image(i), i
            return self.box
        if self.kind == "reshaped later":  # a kept array, then its shape changed in place
            if i == 3:
                self.buf.shape = (64, 4, 64)
                return image(i), i
            return self.buf, i
        raise AssertionError(self.kind)

    def tensor_view(self):
        if not hasattr(self, "tensor"):
            self.tensor = torch.zeros(ROW)
        self.tensor.fill_(float(self.buf.flat[0]))
        return self.tensor.detach()


@pytest.mark.parametrize("kind", ["view", "reshaped view", "from_numpy", "tensor storage", "dict", "list",
                                  "reshaped later"])
def test_what_the_dataset_keeps_is_collated_as_torch_leaves_it(kind):
    """torch stacks at the end what the dataset handed out: a buffer refilled since shows
    its last contents in every row (or the error its new shape gives), and so here."""
    mine, my_error = outcome(lambda: fetch_ours(Refilled(kind), [1, 2, 3]))
    data = Refilled(kind)
    theirs, their_error = outcome(lambda: default_collate([data[i] for i in [1, 2, 3]]))
    assert my_error == their_error
    if their_error is None:
        assert_same(mine, theirs)


def test_dataset_calls_are_torch_s_on_a_fallback():
    calls = []

    def make(i):
        calls.append(i)
        return SAMPLES["a larger image"](i)

    for index in ([0, 1, 2, 3, 4, 5, 6], [4, 5], [5, 0, 1], OddIndex([5, 6, 7], 2)):
        calls.clear()
        mine, my_error = outcome(lambda: fetch_ours(Samples(make), index))
        mine_calls = list(calls)
        calls.clear()
        theirs, their_error = outcome(lambda: default_collate([make(i) for i in index]))
        assert mine_calls == calls and my_error == their_error


@pytest.mark.parametrize("case", [
    lambda i: ("s" if i == 1 else i, image(i) if i != 1 else image(i, (64, 64, 8))[:, :, ::-1][..., :4]),
    lambda i: torch.ones(64, 256) * i if i != 7 else torch.nested.nested_tensor([torch.ones(64, 256)]),
    lambda i: {"a": (image(i), image(i + 9, (9,))), "b": i} if i != 7 else {"a": (image(i), image(i, (8,))), "b": i},
    lambda i: (image(i, (64, 256), np.float16), (image(i, (64, 256)) > 100), image(i, (64, 128)).astype(np.complex64)),
])
def test_odd_values_and_late_mismatches_as_torch(case, count_rows):
    data = Samples(case)
    index = list(range(8))
    mine, my_error = outcome(lambda: fetch_ours(data, index))
    theirs, their_error = outcome(lambda: default_collate([data[i] for i in index]))
    assert my_error == their_error
    if their_error is None:
        assert_same(mine, theirs)


def test_streamed_rows_are_copied_as_fetched_not_at_the_end(monkeypatch):
    late = []
    real = _stream_collate._Rows.finish
    monkeypatch.setattr(_stream_collate._Rows, "finish", lambda self: (late.append(len(self.late)), real(self))[1])
    for case in ("tuple", "uint8 image and label", "dict", "namedtuple", "array alone", "tensor alone"):
        late.clear()
        fetch_ours(Samples(SAMPLES[case]), list(range(8)))
        assert late and set(late) == {0}, case


class OddIndex:
    """A batch index whose len() is not the number of indices it yields."""

    def __init__(self, items, length):
        self.items, self.length = items, length

    def __len__(self):
        return self.length

    def __iter__(self):
        return iter(self.items)


@pytest.mark.parametrize("length", [0, 2, 6])
def test_an_index_whose_length_lies(length):
    data = Samples(SAMPLES["tuple"])
    assert_same(fetch_ours(data, OddIndex([0, 1, 2, 3], length)), default_collate([data[i] for i in range(4)]))


@pytest.mark.parametrize("index", [lambda: torch.tensor(3), lambda: iter([1, 2])])
def test_an_index_without_a_length_goes_torch_s_way(index):
    data = Samples(SAMPLES["tuple"])
    mine, my_error = outcome(lambda: fetch_ours(data, index()))
    theirs, their_error = outcome(lambda: default_collate([data[i] for i in index()]))
    assert my_error == their_error and (mine is None or assert_same(mine, theirs) is None)


def test_an_error_in_a_sample_propagates_and_the_batch_is_dropped():
    def make(i):
        if i == 4:
            raise KeyError("sample 4")
        return image(i), i

    with pytest.raises(KeyError, match="sample 4"):
        fetch_ours(Samples(make), list(range(8)))


def test_only_default_collate_over_plain_map_datasets_streams(count_rows):
    data = Samples(SAMPLES["tuple"])
    make = _stream_collate.create_fetcher
    assert not isinstance(make(_DatasetKind.Map, data, True, lambda b: b, False), _stream_collate.StreamingMapFetcher)
    assert not isinstance(make(_DatasetKind.Map, data, False, default_collate, False),
                          _stream_collate.StreamingMapFetcher)

    class Batched(Samples):
        def __getitems__(self, indices):
            return [self[i] for i in indices]

    batched = Batched(SAMPLES["tuple"])
    assert_same(fetch_ours(batched, [0, 1]), default_collate(batched.__getitems__([0, 1])))
    assert count_rows == []


def test_a_subset_streams_as_subset_getitems_fetches(monkeypatch):
    """random_split's Subsets have __getitems__, which fetches one by one from a dataset
    without one: streamed, with the same calls; a dataset with its own goes torch's way."""
    late = []
    real = _stream_collate._Rows.finish
    monkeypatch.setattr(_stream_collate._Rows, "finish", lambda self: (late.append(len(self.late)), real(self))[1])
    calls = []

    class Logged(Samples):
        def __getitem__(self, i):
            calls.append(i)
            return super().__getitem__(i)

    subset = torch.utils.data.Subset(Logged(SAMPLES["tuple"]), [5, 3, 9, 0, 7])
    mine = fetch_ours(subset, [4, 0, 2])
    assert late == [0] and calls == [7, 5, 9]
    assert_same(mine, default_collate(subset.__getitems__([4, 0, 2])))

    class Batched(Logged):
        def __getitems__(self, indices):
            calls.append(("batch", list(indices)))
            return [self[i] for i in indices]

    calls.clear()
    late.clear()
    subset = torch.utils.data.Subset(Batched(SAMPLES["tuple"]), [5, 3, 9])
    assert_same(fetch_ours(subset, [2, 1]), default_collate([subset.dataset[9], subset.dataset[3]]))
    assert calls[0] == ("batch", [9, 3]) and late == []


@pytest.mark.parametrize("key", [np.ndarray, collections.abc.Sequence, tuple, object])
def test_a_collate_registry_entry_that_would_see_the_samples_is_honoured(key, monkeypatch, count_rows):
    from torch.utils.data._utils import collate

    monkeypatch.setitem(collate.default_collate_fn_map, key, lambda batch, **kw: [type(x).__name__ for x in batch])
    data = Samples(SAMPLES["tuple"])
    assert_same(fetch_ours(data, [0, 1]), default_collate([data[0], data[1]]))
    assert count_rows == []


@pytest.mark.parametrize("kwargs", [
    dict(num_workers=0),
    dict(num_workers=2),
    dict(num_workers=2, worker_type="thread"),
    dict(num_workers=1, persistent_workers=True),
])
def test_loader_batches_as_torch(kwargs):
    data = Samples(SAMPLES["uint8 image and label"], n=40)
    worker_type = kwargs.pop("worker_type", None)
    extra = {"worker_type": worker_type} if worker_type else {}
    torch_batches = list(torch.utils.data.DataLoader(
        data, batch_size=8, shuffle=True, generator=torch.Generator().manual_seed(3), **kwargs))
    ours = list(fastloader.DataLoader(
        data, batch_size=8, shuffle=True, generator=torch.Generator().manual_seed(3), **kwargs, **extra))
    assert len(ours) == len(torch_batches) == 5
    for a, b in zip(ours, torch_batches):
        assert_same(a, b)
