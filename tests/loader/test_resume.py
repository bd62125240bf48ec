"""state_dict() / load_state_dict(): a restored loader yields exactly what was left."""
from __future__ import annotations

import io
import random
import time

import numpy as np
import pytest
import torch

import fastloader

from _loader_data import RichDataset, ShardedStream, StatefulStream, assert_same


def _seed_all(seed):
    torch.manual_seed(seed)
    np.random.seed(seed)
    random.seed(seed)


def _global_rng():
    return torch.get_rng_state(), np.random.get_state(), random.getstate()


def _set_global_rng(state):
    torch.set_rng_state(state[0])
    np.random.set_state(state[1])
    random.setstate(state[2])


def _roundtrip(state):
    """Through torch.save / torch.load(weights_only=True), as a checkpoint would go."""
    buf = io.BytesIO()
    torch.save(state, buf)
    buf.seek(0)
    return torch.load(buf, weights_only=True)


def _make(dataset_fn, with_generator, **kwargs):
    gen = torch.Generator().manual_seed(99) if with_generator else None
    return fastloader.DataLoader(dataset_fn(), generator=gen, **kwargs)


def check_resume(dataset_fn, cut, epochs=1, with_generator=True, restore_workers=None, **kwargs):
    _seed_all(0)
    reference = _make(dataset_fn, with_generator, **kwargs)
    expected = [b for _ in range(epochs) for b in reference]
    cut = min(cut, len(expected))

    _seed_all(0)
    first = _make(dataset_fn, with_generator, **kwargs)
    it = (b for _ in range(epochs) for b in first)  # a cut may fall in a later epoch
    got = [next(it) for _ in range(cut)]
    state, rng = _roundtrip(first.state_dict()), _global_rng()
    per_epoch = len(expected) // epochs
    # passes the restored loader makes: the rest of the cut's epoch (maybe empty), then the others
    epochs_left = epochs - (cut - 1) // per_epoch if cut else epochs
    del it, first

    _seed_all(12345)  # a restarted job: nothing left of the first run's random state
    if restore_workers is not None:
        kwargs["num_workers"] = restore_workers
        if restore_workers == 0:
            kwargs.pop("prefetch_factor", None)
            kwargs.pop("persistent_workers", None)
    second = _make(dataset_fn, with_generator, **kwargs)
    second.load_state_dict(state)
    _set_global_rng(rng)  # what a training checkpoint restores beside the loader
    for _ in range(epochs_left):
        got += list(second)
    assert len(got) == len(expected)
    assert_same(got, expected)


CUTS = [0, 1, 3, 7, 11]


@pytest.mark.parametrize("num_workers", [0, 1, 2])
@pytest.mark.parametrize("cut", CUTS)
def test_map_style_process_workers(num_workers, cut):
    check_resume(RichDataset, cut, batch_size=5, shuffle=True, num_workers=num_workers)


@pytest.mark.parametrize("cut", [0, 4, 10])
def test_map_style_global_rng_and_two_epochs(cut):
    check_resume(RichDataset, cut, epochs=2, with_generator=False, batch_size=5, shuffle=True, num_workers=2)


@pytest.mark.parametrize("num_workers", [0, 1, 2])
@pytest.mark.parametrize("cut", [0, 2, 9])
def test_map_style_thread_workers(num_workers, cut):
    check_resume(
        lambda: RichDataset(random_draws=False), cut, epochs=2, batch_size=5, shuffle=True,
        num_workers=num_workers, worker_type="thread",
    )


@pytest.mark.parametrize("restore_workers", [0, 1, 3])
def test_map_style_resumes_with_other_worker_counts(restore_workers):
    check_resume(
        lambda: RichDataset(random_draws=False), 6, epochs=2, batch_size=4, shuffle=True,
        num_workers=2, restore_workers=restore_workers,
    )


@pytest.mark.parametrize("num_workers", [0, 1, 2])
@pytest.mark.parametrize("cut", [0, 2, 5, 8])
@pytest.mark.parametrize("dataset", [ShardedStream, lambda: ShardedStream(uneven=True), StatefulStream],
                         ids=["replayed", "uneven", "stateful"])
def test_iterable(num_workers, cut, dataset):
    check_resume(dataset, cut, batch_size=3, num_workers=num_workers)


@pytest.mark.parametrize("worker_type", ["process", "thread"])
def test_iterable_thread_and_process_workers_two_epochs(worker_type):
    check_resume(ShardedStream, 4, epochs=2, batch_size=3, num_workers=2, worker_type=worker_type)


def test_persistent_workers():
    check_resume(RichDataset, 5, epochs=2, batch_size=4, shuffle=True, num_workers=2, persistent_workers=True)


@pytest.mark.parametrize("cut", [0, 5, 9])
def test_in_order_false_delivers_every_remaining_batch_once(cut):
    ds = RichDataset(n=60, random_draws=False)
    loader = fastloader.DataLoader(ds, batch_size=4, num_workers=2, in_order=False)
    it = iter(loader)
    first = [next(it) for _ in range(cut)]
    state = _roundtrip(loader.state_dict())
    del it
    second = fastloader.DataLoader(ds, batch_size=4, num_workers=2, in_order=False)
    second.load_state_dict(state)
    names = sorted(n for b in first + list(second) for n in b["name"])
    assert names == sorted(f"sample-{i}" for i in range(60))


def test_state_after_an_epoch_starts_the_next_one():
    check_resume(RichDataset, 11, epochs=2, batch_size=5, shuffle=True, num_workers=2)  # 11 = len


def test_iterable_refuses_another_worker_count():
    loader = fastloader.DataLoader(ShardedStream(), batch_size=2, num_workers=2)
    it = iter(loader)
    next(it)
    state = loader.state_dict()
    other = fastloader.DataLoader(ShardedStream(), batch_size=2, num_workers=1)
    with pytest.raises(ValueError, match="only with the num_workers it was saved with"):
        other.load_state_dict(state)


def test_a_state_from_another_setup_is_refused_with_the_reason():
    loader = fastloader.DataLoader(list(range(100)), batch_size=4, shuffle=True)
    it = iter(loader)
    for _ in range(10):
        next(it)
    state = _roundtrip(loader.state_dict())
    with pytest.raises(ValueError, match="saved with batch_size=4, this loader has batch_size=8"):
        fastloader.DataLoader(list(range(100)), batch_size=8, shuffle=True).load_state_dict(state)
    for bad in ("not a state", None):
        with pytest.raises(TypeError, match="takes the dict state_dict\\(\\) returned, got"):
            fastloader.DataLoader(list(range(100)), batch_size=4).load_state_dict(bad)
    shorter = fastloader.DataLoader(list(range(30)), batch_size=4, shuffle=True)
    shorter.load_state_dict(state)  # found out when the epoch is drawn: len() may be an estimate
    with pytest.raises(ValueError, match="10 batches into its epoch, and this loader's epoch has 8"):
        iter(shorter)
    batches = fastloader.DataLoader(list(range(100)), batch_sampler=torch.utils.data.BatchSampler(
        torch.utils.data.SequentialSampler(range(100)), 4, False))
    it = iter(batches)
    next(it)
    again = fastloader.DataLoader(list(range(100)), batch_sampler=torch.utils.data.BatchSampler(
        torch.utils.data.SequentialSampler(range(100)), 4, False))
    again.load_state_dict(batches.state_dict())  # batch_size None on both sides
    assert next(iter(again)).tolist() == [4, 5, 6, 7]


def test_empty_state_means_from_the_start():
    loader = fastloader.DataLoader(RichDataset(random_draws=False), batch_size=4)
    assert loader.state_dict() == {}
    loader.load_state_dict({})
    assert len(list(loader)) == len(loader)


from _loader_data import RandomStream, ShuffledBatches, SquareDataset  # noqa: E402


@pytest.mark.parametrize("num_workers", [1, 2])
@pytest.mark.parametrize("cut", [2, 5])
def test_replayed_stream_that_draws_random_numbers(num_workers, cut):
    check_resume(RandomStream, cut, batch_size=2, num_workers=num_workers)


@pytest.mark.parametrize("cut", [0, 3, 6, 7, 9])  # 6 = the end of epoch 1; at 7 worker 1 has not yielded in epoch 2
def test_persistent_workers_with_random_draws_across_epochs(cut):
    check_resume(RichDataset, cut, epochs=3, batch_size=9, shuffle=True, num_workers=2, persistent_workers=True)


@pytest.mark.parametrize("cut", [1, 3])
def test_batch_sampler_that_draws_at_iter(cut):
    check_resume(lambda: SquareDataset(20), cut, with_generator=False, batch_sampler=ShuffledBatches(20, 3),
                 num_workers=2)


def test_stateful_stream_on_thread_workers():
    check_resume(StatefulStream, 5, epochs=2, batch_size=3, num_workers=2, worker_type="thread")


def test_state_stays_small_when_workers_run_dry():
    loader = fastloader.DataLoader(ShardedStream(n=60, uneven=True), batch_size=2, num_workers=3)
    for _ in loader:
        pass
    assert loader.state_dict()["yielded_extra"] == []


def test_state_is_the_latest_iterators_even_when_an_older_one_goes_last():
    loader = fastloader.DataLoader(SquareDataset(20), batch_size=2, num_workers=1)
    older = iter(loader)
    next(older)
    newer = iter(loader)
    next(newer), next(newer)
    del newer
    del older
    assert loader.state_dict()["yielded_prefix"] == 2


class SometimesRandom(torch.utils.data.Dataset):
    """Draws from the worker's RNGs only for some samples: a batch after one that drew
    may draw nothing (its RNG states are then sent as "unchanged")."""

    def __len__(self):
        return 48

    def __getitem__(self, i):
        if i % 12 < 4:
            return torch.rand(2), float(np.random.rand()), random.random(), float(np.random.randn())
        return torch.zeros(2), 0.0, 0.0, 0.0


@pytest.mark.parametrize("cut", [1, 2, 3, 5, 8])
def test_worker_rng_resumes_after_batches_that_drew_nothing(cut):
    check_resume(SometimesRandom, cut, batch_size=4, num_workers=2, persistent_workers=True, epochs=2)


class CachedGauss(torch.utils.data.Dataset):
    """random.gauss draws two normals at a time and keeps one: every other sample takes
    the kept one, leaving the generator's state as it was and changing only gauss_next."""

    def __len__(self):
        return 12

    def __getitem__(self, i):
        return random.gauss(0.0, 1.0) if i % 6 < 4 else 0.0


@pytest.mark.parametrize("cut", [1, 2, 3])
def test_worker_rng_resumes_after_a_batch_that_took_a_kept_gauss(cut):
    check_resume(CachedGauss, cut, batch_size=1, num_workers=1, epochs=2)



def test_rng_capture_follows_every_python_draw():
    """The worker's RNG capture reads random's state raw and calls getstate() only when
    it changed: after any draw it must equal getstate(), and be the same object when
    nothing drew."""
    from fastloader._worker_loop import _RAW_PYTHON_STATE, RngCapture

    assert _RAW_PYTHON_STATE  # CPython: the raw path is the one under test
    capture = RngCapture()
    first = last = capture()
    assert capture() is last
    draws = [random.random, lambda: random.gauss(0, 1), lambda: random.gauss(0, 1), lambda: random.seed(7),
             lambda: random.getrandbits(3), lambda: random.setstate(first[1]), lambda: random.shuffle([1, 2, 3])]
    for draw in draws:
        draw()
        now = capture()
        assert now[1] == random.getstate() and now is not last and capture() is now
        last = now


class SlowLastItem(torch.utils.data.IterableDataset):
    """Worker 0's last item comes slowly: worker 1 reports its end before worker 0's last
    batch, which is due before worker 1's last one."""

    def __iter__(self):
        info = torch.utils.data.get_worker_info()
        for i in range(info.id, 11, info.num_workers):
            if i == 8:
                time.sleep(0.5)
            yield i


@pytest.mark.parametrize("worker_type", ["process", "thread"])
def test_a_batch_received_after_its_workers_end_is_not_lost_on_resume(worker_type):
    def make():
        return fastloader.DataLoader(SlowLastItem(), batch_size=2, num_workers=2, worker_type=worker_type)

    full = [b.tolist() for b in make()]
    assert full == [[0, 2], [1, 3], [4, 6], [5, 7], [8, 10], [9]]
    loader = make()
    it = iter(loader)
    got = [next(it).tolist() for _ in range(5)]
    time.sleep(0.3)  # worker 1's end is in, its last batch [9] waits for its turn
    state = _roundtrip(loader.state_dict())
    del it
    resumed = make()
    resumed.load_state_dict(state)
    assert got + [b.tolist() for b in resumed] == full


SAMPLERS = {
    "replacement": lambda ds, g: torch.utils.data.RandomSampler(ds, replacement=True, generator=g),
    "num_samples": lambda ds, g: torch.utils.data.RandomSampler(ds, num_samples=14, generator=g),
    "weighted": lambda ds, g: torch.utils.data.WeightedRandomSampler([1.0 + i % 3 for i in range(len(ds))], 12,
                                                                     generator=g),
    "subset": lambda ds, g: torch.utils.data.SubsetRandomSampler(list(range(0, len(ds), 2)), generator=g),
}


@pytest.mark.parametrize("sampler", sorted(SAMPLERS))
@pytest.mark.parametrize("own_generator", [False, True])
@pytest.mark.parametrize("num_workers", [0, 2])
@pytest.mark.parametrize("cut", [2, 8])
def test_samplers_drawing_from_the_global_rng_or_their_own_generator(sampler, own_generator, num_workers, cut):
    """The loader has a generator, the sampler does not use it: it draws from torch's
    global RNG, or from a generator of its own (cut 8 falls in the second epoch)."""
    def make():
        ds = SquareDataset(n=20)
        g = torch.Generator().manual_seed(5) if own_generator else None
        return fastloader.DataLoader(ds, batch_size=2, num_workers=num_workers, sampler=SAMPLERS[sampler](ds, g),
                                     generator=torch.Generator().manual_seed(1))

    torch.manual_seed(0)
    reference = make()
    expected = [b for _ in range(2) for b in reference]
    torch.manual_seed(0)
    first = make()
    it = (b for _ in range(2) for b in first)
    got = [next(it) for _ in range(cut)]
    state, rng = _roundtrip(first.state_dict()), torch.get_rng_state()
    del it, first
    torch.manual_seed(123)  # a restarted process
    second = make()
    second.load_state_dict(state)
    torch.set_rng_state(rng)  # what a training checkpoint restores beside the loader
    epochs_left = 2 if cut < len(expected) // 2 else 1
    for _ in range(epochs_left):
        got += list(second)
    assert_same(got, expected)


def test_a_state_of_the_first_version_still_resumes():
    """Version 1 held each random state as one tensor: the loader generator's, or the
    global RNG's without one."""
    for with_generator in (True, False):
        def make():
            gen = torch.Generator().manual_seed(7) if with_generator else None
            return fastloader.DataLoader(SquareDataset(n=20), batch_size=2, shuffle=True, generator=gen)

        torch.manual_seed(0)
        expected = list(make())
        torch.manual_seed(0)
        loader = make()
        it = iter(loader)
        got = [next(it) for _ in range(3)]
        state = loader.state_dict()
        del it
        key = "loader" if with_generator else "global"
        old = dict(state, version=1, iter_rng=state["iter_rng"][key], pull_rng=state["pull_rng"][key],
                   fresh_rng=state["fresh_rng"][key] if with_generator else None)
        resumed = make()
        resumed.load_state_dict(old)
        assert_same(got + list(resumed), expected)
    with pytest.raises(ValueError, match="unsupported DataLoader state version 3"):
        make().load_state_dict(dict(state, version=3))
