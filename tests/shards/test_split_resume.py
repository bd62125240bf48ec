"""Splitting over ranks and workers, deterministic shuffles, exact and elastic resume."""
from __future__ import annotations

import itertools

import fsspec
import pytest

import fastloader

from _shard_data import keys, make_samples, write_with_webdataset

N = 157


@pytest.fixture(scope="module")
def shards(tmp_path_factory):
    d = tmp_path_factory.mktemp("split")
    samples = make_samples(N, seed=7)
    paths = write_with_webdataset(d, samples, per_shard=20)  # 8 shards
    fs = fsspec.filesystem("memory")
    for i, p in enumerate(paths):
        with open(p, "rb") as f:
            fs.pipe(f"/split/s-{i:02d}.tar", f.read())
    streamed = [f"memory://split/s-{i:02d}.tar" for i in range(len(paths))]
    return keys(samples), {"indexed": paths, "streamed": streamed}


def _keys_of(batch):
    return [s["__key__"] for s in batch]


def _loader(ds, workers, batch_size=8, worker_type="process"):
    return fastloader.DataLoader(ds, batch_size=batch_size, num_workers=workers, collate_fn=_keys_of,
                                 worker_type=worker_type)


@pytest.mark.parametrize("mode", ["indexed", "streamed"])
@pytest.mark.parametrize("shuffle", [False, True])
@pytest.mark.parametrize("world,workers", [(1, 0), (2, 2), (3, 1), (2, 3)])
def test_each_sample_once_across_ranks_and_workers(shards, mode, shuffle, world, workers):
    all_keys, urls = shards
    seen = []
    for rank in range(world):
        ds = fastloader.WebDataset(urls[mode], shuffle=shuffle, seed=3, buffer_size=30, rank=rank, world_size=world)
        seen += [k for b in _loader(ds, workers, worker_type="thread") for k in b]
    assert sorted(seen) == sorted(all_keys)


def test_rank_comes_from_the_environment(shards, monkeypatch):
    all_keys, urls = shards
    seen = []
    for rank in range(2):
        monkeypatch.setenv("RANK", str(rank))
        monkeypatch.setenv("WORLD_SIZE", "2")
        part = [s["__key__"] for s in fastloader.WebDataset(urls["indexed"])]
        assert 0 < len(part) < N
        seen += part
    assert sorted(seen) == sorted(all_keys)


@pytest.mark.parametrize("world,workers", [(3, 2), (4, 3), (2, 2)])
def test_an_epoch_size_of_the_dataset_delivers_every_sample(shards, world, workers):
    """As DistributedSampler: every rank the same count, every sample at least once (the
    padding repeats from the start), whatever the workers per rank."""
    all_keys, urls = shards
    seen, counts = [], []
    for rank in range(world):
        ds = fastloader.WebDataset(urls["indexed"], rank=rank, world_size=world, epoch_size=N, shuffle=True)
        got = [k for b in _loader(ds, workers, worker_type="thread") for k in b]
        seen += got
        counts.append(len(got))
    assert counts == [-(-N // world)] * world and set(seen) == set(all_keys)


def test_an_elastic_resume_with_epoch_size_and_few_samples_left(shards):
    """Fewer samples left than new ranks x workers: padded, every rank the same count."""
    all_keys, urls = shards
    delivered, states = [], []
    for rank in range(2):
        ds = fastloader.WebDataset(urls["indexed"], shuffle=True, seed=2, rank=rank, world_size=2, epoch_size=N)
        loader = _loader(ds, 2, batch_size=1)
        it = iter(loader)
        delivered += [k for _ in range(76) for k in next(it)]
        states.append(loader.state_dict())
        del it
    merged = fastloader.WebDataset.merge_worker_states([s["dataset"] for s in states])
    counts = []
    for rank in range(3):
        ds = fastloader.WebDataset(urls["indexed"], shuffle=True, seed=2, rank=rank, world_size=3, epoch_size=N)
        loader = _loader(ds, 2, batch_size=1)
        loader.load_state_dict(dict(states[0], dataset=merged))
        got = [k for b in loader for k in b]
        counts.append(len(got))
        delivered += got
    assert len(set(counts)) == 1 and set(delivered) == set(all_keys)


@pytest.mark.parametrize("mode", ["indexed", "streamed"])
def test_epoch_size_gives_every_rank_the_same_count(shards, mode):
    _, urls = shards
    counts = []
    for rank in range(3):
        ds = fastloader.WebDataset(urls[mode], rank=rank, world_size=3, epoch_size=200, shuffle=True)
        counts.append(sum(len(b) for b in _loader(ds, 2, worker_type="thread")))
    assert counts == [67, 67, 67]


def test_resampled_streams_with_replacement_deterministically(shards):
    all_keys, urls = shards
    ds = fastloader.WebDataset(urls["indexed"], resampled=True, seed=1)
    first = [s["__key__"] for s in itertools.islice(ds, 400)]
    assert len(first) == 400 and set(first) <= set(all_keys)
    assert len(set(first)) < 400  # with replacement
    assert first == [s["__key__"] for s in itertools.islice(ds, 400)]
    bounded = fastloader.WebDataset(urls["indexed"], resampled=True, epoch_size=50)
    assert len(list(bounded)) == 50


@pytest.mark.parametrize("mode", ["indexed", "streamed"])
def test_order_is_a_function_of_seed_and_epoch(shards, mode):
    all_keys, urls = shards

    def order(seed, epoch):
        ds = fastloader.WebDataset(urls[mode], shuffle=True, seed=seed, buffer_size=40)
        ds.set_epoch(epoch)
        return [s["__key__"] for s in ds]

    a = order(1, 0)
    assert sorted(a) == sorted(all_keys) and a != all_keys
    assert order(1, 0) == a
    assert order(1, 1) != a and order(2, 0) != a
    if mode == "indexed":  # a global shuffle: neighbours in a shard end up far apart
        pos = {k: i for i, k in enumerate(a)}
        gaps = [abs(pos[x] - pos[y]) for x, y in zip(all_keys, all_keys[1:])]
        assert sorted(gaps)[len(gaps) // 2] > 20


@pytest.mark.parametrize("mode", ["indexed", "streamed"])
def test_a_dataset_state_resumes_its_epoch_and_set_epoch_to_another_starts_that_one(shards, mode):
    """Without fastloader's DataLoader: the dataset's own state_dict. The usual loop sets
    each epoch after loading; an epoch other than the state's is a fresh one (the state's
    epoch was over), the state's own epoch resumes."""
    _, urls = shards

    def fresh(epoch):
        ds = fastloader.WebDataset(urls[mode], shuffle=True, seed=1, buffer_size=40)
        ds.set_epoch(epoch)
        return ds

    whole0, whole1 = _keys_of(fresh(0)), _keys_of(fresh(1))
    ended = fresh(0)
    assert len(list(ended)) == N
    after_end = fresh(0)
    after_end.load_state_dict(ended.state_dict())
    after_end.set_epoch(1)
    assert _keys_of(after_end) == whole1
    cut = fresh(0)
    head = [s["__key__"] for s in itertools.islice(iter(cut), 50)]
    resumed = fresh(0)
    resumed.load_state_dict(cut.state_dict())
    resumed.set_epoch(0)  # the state's epoch: resumed where it stopped
    assert head + _keys_of(resumed) == whole0


@pytest.mark.parametrize("mode", ["indexed", "streamed"])
def test_shard_shuffle_alone_moves_whole_shards(shards, mode):
    all_keys, urls = shards
    shard_of = {k: i // 20 for i, k in enumerate(all_keys)}  # 20 samples a shard

    def order(seed, epoch, shard_shuffle=True):
        ds = fastloader.WebDataset(urls[mode], seed=seed, shard_shuffle=shard_shuffle)
        ds.set_epoch(epoch)
        return [s["__key__"] for s in ds]

    assert order(1, 0, shard_shuffle=False) == all_keys
    a = order(1, 0)
    runs = [shard_of[k] for i, k in enumerate(a) if i == 0 or shard_of[a[i - 1]] != shard_of[k]]
    assert sorted(runs) == list(range(8)) and runs != list(range(8))  # each shard in one piece
    for s in range(8):  # its samples in file order
        assert [k for k in a if shard_of[k] == s] == [k for k in all_keys if shard_of[k] == s]
    assert order(1, 0) == a and order(1, 1) != a and order(2, 0) != a


def test_streamed_shuffle_buffer_alone(shards):
    all_keys, urls = shards

    def order(seed, buffer_size):
        ds = fastloader.WebDataset(urls["streamed"], shuffle=True, shard_shuffle=False, seed=seed,
                                   buffer_size=buffer_size)
        return [s["__key__"] for s in ds]

    a = order(1, 30)
    assert sorted(a) == sorted(all_keys) and a != all_keys
    assert order(1, 30) == a and order(2, 30) != a
    # a sample leaves the buffer only once `buffer_size` later ones have come in behind it
    pos = {k: i for i, k in enumerate(a)}
    assert all(pos[k] >= i - 30 for i, k in enumerate(all_keys))
    assert max(i - pos[k] for i, k in enumerate(all_keys)) > 20  # and the buffer is used
    assert order(1, 1) == all_keys  # a buffer of one cannot reorder


def _cut_and_resume(make_ds, workers, cut, batch_size=8):
    """Batches of a full run, and those of a run stopped after `cut` and restored."""
    full = list(_loader(make_ds(), workers, batch_size))
    first = _loader(make_ds(), workers, batch_size)
    it = iter(first)
    head = [next(it) for _ in range(cut)]
    state = first.state_dict()
    del it
    second = _loader(make_ds(), workers, batch_size)
    second.load_state_dict(state)
    return full, head, list(second)


@pytest.mark.parametrize("mode", ["indexed", "streamed"])
@pytest.mark.parametrize("workers", [0, 2])
@pytest.mark.parametrize("cut", [1, 5, 9])
def test_resume_through_the_loader_is_exact(shards, mode, workers, cut):
    _, urls = shards

    def make():
        return fastloader.WebDataset(urls[mode], shuffle=True, seed=11, buffer_size=25)

    full, head, rest = _cut_and_resume(make, workers, cut)
    assert head == full[:cut]
    assert rest == full[cut:]


@pytest.mark.parametrize("mode", ["indexed", "streamed"])
@pytest.mark.parametrize("workers", [0, 2])
def test_resume_with_epoch_size_is_exact(shards, mode, workers):
    """An epoch_size quota counts the samples delivered before the stop: the resumed run
    delivers the rest of the quota, the very batches the uninterrupted run would have."""
    _, urls = shards

    def make():
        return fastloader.WebDataset(urls[mode], shuffle=True, seed=4, buffer_size=25, epoch_size=100)

    full, head, rest = _cut_and_resume(make, workers, cut=5)
    assert sum(len(b) for b in full) == 100
    assert head == full[:5] and rest == full[5:]


@pytest.mark.parametrize("new_world,new_workers", [(3, 1), (1, 3), (2, 0), (3, 2), (1, 2)])
@pytest.mark.parametrize("cut", [3, 9])
def test_elastic_resume_with_other_ranks_and_workers(shards, new_world, new_workers, cut):
    """The state is rank 0's, its worker 1 marked as run dry (as when its end came in
    before the batch due: near the end of a share): that must not stop the worker of the
    same number on another rank, or in another deal of the samples."""
    all_keys, urls = shards
    delivered = []
    states = []
    for rank in range(2):  # a run on 2 ranks x 2 workers, stopped after `cut` batches per rank
        loader = _loader(fastloader.WebDataset(urls["indexed"], shuffle=True, seed=5, rank=rank, world_size=2), 2)
        it = iter(loader)
        delivered += [k for _ in range(cut) for k in next(it)]
        states.append(loader.state_dict())
        del it
    merged = fastloader.WebDataset.merge_worker_states([s["dataset"] for s in states])
    assert merged["ranks"] == [0, 1]
    states[0]["workers"][1]["exhausted"] = True
    for rank in range(new_world):
        ds = fastloader.WebDataset(urls["indexed"], shuffle=True, seed=5, rank=rank, world_size=new_world)
        loader = _loader(ds, new_workers)
        loader.load_state_dict(dict(states[0], dataset=merged))
        delivered += [k for b in loader for k in b]
    assert sorted(delivered) == sorted(all_keys)


def test_two_elastic_resumes_in_a_row(shards):
    all_keys, urls = shards
    delivered, state = [], None
    for world, workers, take in ((2, 1, 2), (3, 2, 1), (1, 2, None)):
        states = []
        for rank in range(world):
            loader = _loader(fastloader.WebDataset(urls["indexed"], seed=2, rank=rank, world_size=world), workers)
            if state is not None:
                loader.load_state_dict(state)
            it = iter(loader)
            delivered += [k for b in (itertools.islice(it, take) if take else it) for k in b]
            states.append(loader.state_dict())
            del it
        merged = fastloader.WebDataset.merge_worker_states([s["dataset"] for s in states])
        state = dict(states[0], dataset=merged)
    assert sorted(delivered) == sorted(all_keys)


def test_streamed_resume_needs_the_same_topology(shards):
    _, urls = shards
    loader = _loader(fastloader.WebDataset(urls["streamed"]), 2)
    it = iter(loader)
    next(it)
    state = loader.state_dict()
    del it
    other = _loader(fastloader.WebDataset(urls["streamed"]), 3)
    other.load_state_dict(state)
    with pytest.raises(ValueError, match="same world_size and num_workers|resumes only with"):
        list(other)


def test_a_partial_state_cannot_resume_another_topology(shards):
    _, urls = shards
    loader = _loader(fastloader.WebDataset(urls["indexed"], rank=0, world_size=2), 1)
    it = iter(loader)
    next(it)
    state = loader.state_dict()
    del it
    other = _loader(fastloader.WebDataset(urls["indexed"], rank=0, world_size=3), 1)
    other.load_state_dict(state)
    with pytest.raises(ValueError, match="every rank's state merged"):
        list(other)


@pytest.mark.parametrize("mode", ["indexed", "streamed"])
def test_without_shuffle_shards_come_in_their_order(shards, mode):
    all_keys, urls = shards
    assert [s["__key__"] for s in fastloader.WebDataset(urls[mode])] == all_keys
    assert [s["__key__"] for s in fastloader.WebDataset(urls[mode], shard_shuffle=True)] != all_keys


@pytest.mark.parametrize("change", [dict(shuffle=False), dict(shard_shuffle=False), dict(buffer_size=50)])
def test_a_state_saved_with_another_order_is_refused_by_the_loader(shards, change):
    """Another shuffle setting deals the samples out differently: resuming would deliver
    some twice and lose others. The loader refuses it when given it, not in a worker."""
    _, urls = shards
    options = dict(shuffle=True, seed=1, buffer_size=40)
    loader = _loader(fastloader.WebDataset(urls["streamed"], **options), 2)
    it = iter(loader)
    next(it)
    state = loader.state_dict()
    del it
    other = _loader(fastloader.WebDataset(urls["streamed"], **{**options, **change}), 2)
    with pytest.raises(ValueError, match="saved with .* and this WebDataset has"):
        other.load_state_dict(state)


@pytest.mark.parametrize("mode", ["indexed", "streamed"])
def test_a_state_for_another_shard_list_is_refused(shards, mode, tmp_path):
    _, urls = shards
    ds = fastloader.WebDataset(urls[mode], shuffle=10, seed=3)
    it = iter(ds)
    for _ in range(25):
        next(it)
    state = ds.state_dict()
    fewer = fastloader.WebDataset(urls[mode][:5], shuffle=10, seed=3)
    with pytest.raises(ValueError, match="saved for 8 shards and this WebDataset has 5"):
        fewer.load_state_dict(state)
    with pytest.raises(TypeError, match="takes the dict state_dict"):
        fewer.load_state_dict([state])
    fs = fsspec.filesystem("memory")
    moved_urls = []  # the same shards elsewhere
    for i, url in enumerate(urls[mode]):
        with fsspec.open(url, "rb") as f:
            data = f.read()
        if mode == "indexed":
            (tmp_path / f"moved-{i}.tar").write_bytes(data)
            moved_urls.append(str(tmp_path / f"moved-{i}.tar"))
        else:
            fs.pipe(f"/moved/{i}.tar", data)
            moved_urls.append(f"memory://moved/{i}.tar")
    moved = fastloader.WebDataset(moved_urls, shuffle=10, seed=3)
    moved.load_state_dict(state)
    assert len(list(moved)) == N - 25

    # a state saved before the shard count was kept still resumes, and its workers' states
    # merge with those of workers that moved on
    old = {k: v for k, v in state.items() if k != "shards"}
    waiting, moving = (fastloader.WebDataset(urls[mode], shuffle=10, seed=3) for _ in range(2))
    waiting.load_state_dict(old)
    moving.load_state_dict(old)
    next(iter(moving))
    merged = fastloader.WebDataset.merge_worker_states([waiting.state_dict(), moving.state_dict()])
    assert merged["shards"] == 8


@pytest.mark.parametrize("worker_type", ["process", "thread"])
@pytest.mark.parametrize("loader_cls", ["fastloader", "torch"])
def test_set_epoch_reaches_persistent_workers(shards, worker_type, loader_cls):
    import torch

    if loader_cls == "torch" and worker_type == "thread":
        pytest.skip("torch has no thread workers")
    _, urls = shards
    ds = fastloader.WebDataset(urls["indexed"], shuffle=True, seed=8)
    kwargs = dict(batch_size=8, num_workers=2, persistent_workers=True, collate_fn=_keys_of)
    if loader_cls == "fastloader":
        loader = fastloader.DataLoader(ds, worker_type=worker_type, **kwargs)
    else:
        loader = torch.utils.data.DataLoader(ds, **kwargs)
    orders = []
    for epoch in range(3):
        ds.set_epoch(epoch)
        orders.append([k for b in loader for k in b])
    fresh = []
    for epoch in range(3):  # non-persistent workers copy the dataset each epoch
        ds.set_epoch(epoch)
        fresh.append([k for b in _loader(ds, 2) for k in b])
    assert orders == fresh and orders[0] != orders[1] != orders[2]


def test_epoch_size_from_empty_shards_is_an_error_not_a_hang(tmp_path):
    empty = []
    for i in range(3):
        path = tmp_path / f"e{i}-0.tar"
        path.write_bytes(bytes(1024))  # an empty archive: the end marker only
        empty.append(str(path))
    with pytest.raises(fastloader.ShardError, match="gave no sample"):
        list(fastloader.WebDataset(empty, resampled=True, epoch_size=10))


def test_a_state_of_the_first_version_resumes_and_saves_again(shards):
    """Version 1 (before the order options were kept, and ranks were dealt otherwise):
    a one-rank run resumes; the states its workers report after are of the current
    version, and merge (a worker that has delivered nothing since holds the loaded one)."""
    _, urls = shards

    def make():
        return _loader(fastloader.WebDataset(urls["indexed"], shuffle=True, seed=8), 2, worker_type="thread")

    full = [k for b in make() for k in b]
    loader = make()
    it = iter(loader)
    head = [k for _ in range(3) for k in next(it)]
    state = loader.state_dict()
    del it
    old = dict(state, dataset={k: v for k, v in state["dataset"].items() if k != "order"})
    old["dataset"]["version"] = 1
    resumed = make()
    resumed.load_state_dict(old)
    it = iter(resumed)
    head += next(it)
    again = resumed.state_dict()  # merges the loaded state with a newer worker's
    assert again["dataset"]["version"] == 2 and "order" in again["dataset"]
    assert head + [k for b in it for k in b] == full
    two_ranks = dict(old, dataset=dict(old["dataset"], world_size=2))
    with pytest.raises(ValueError, match="older fastloader"):
        make().load_state_dict(two_ranks)
