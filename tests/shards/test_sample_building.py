"""Sample dicts built by the compiled `_C.build_samples` / `_C.build_samples_pread` against
the same samples built in Python, member by member, and their refusal of inconsistent or
cut-short input."""
import mmap
import os

import numpy as np
import pytest

from fastloader import _C, _origins
from fastloader.errors import ShardError
from fastloader.shards import _local, _members


def _samples(names: list[str], sizes: list[int], keys_as_table: bool):
    offset = np.cumsum([0] + sizes[:-1]).astype(np.int64) * 3 + 7
    size = np.asarray(sizes, dtype=np.int64)
    samples = _members.group(names, offset - 1, offset, size)
    if keys_as_table:
        samples.keys = _members.KeyTable.from_list(samples.keys)
    data = bytes(np.random.default_rng(0).integers(0, 256, int(offset[-1] + size[-1]) + 5, dtype=np.uint8))
    return samples, data


NAMES = ["a/b.jpg", "a/b.cls", "\udcff\udcfeodd.txt", "c.seg.PNG", "c.json", "empty.bin", "d/e.f.g"]
SIZES = [100, 1, 40, 0, 9, 0, 3]


def _pread_shard(tmp_path, data: bytes) -> _local.PreadShard:
    path = tmp_path / "shard.tar"
    path.write_bytes(data)
    return _local.open_shard(str(path), f"file://{path}", mapped=False)


@pytest.mark.parametrize("keys_as_table", [True, False])
@pytest.mark.parametrize("kind", ["bytes", "mmap", "memoryview", "pread", "pread-each", "mmap+pread"])
def test_compiled_samples_equal_python_ones(keys_as_table, kind, tmp_path, monkeypatch):
    samples, data = _samples(NAMES, SIZES, keys_as_table)
    reader = _pread_shard(tmp_path, data) if kind == "mmap+pread" else None  # spans read, the rest mapped
    if kind == "pread-each":  # no span reads: a pread per member
        monkeypatch.setattr(_members, "_worth_a_span", lambda off, end: None)
    if kind.startswith("mmap"):
        data = mmap.mmap(-1, len(data))
        data.write(_samples(NAMES, SIZES, keys_as_table)[1])
    elif kind == "memoryview":
        data = memoryview(data)
    elif kind.startswith("pread"):
        data = _pread_shard(tmp_path, data)
    compiled = _members.SampleMaker(samples, data, "shard-1.tar", open_reader=reader and (lambda: reader))
    python = _members.SampleMaker(samples, data, "shard-1.tar")
    python.compiled = False
    assert compiled.compiled
    for idx in (np.arange(len(samples)), np.array([3, 0, 0, 2]), np.array([], dtype=np.int64)):
        ours, ours_bytes = compiled.make_many(idx)
        ref, ref_bytes = python.make_many(idx)
        assert ours == ref and ours_bytes == ref_bytes
        assert [list(s) for s in ours] == [list(s) for s in ref]  # key order too
        assert all(type(v) is bytes for s in ours for k, v in s.items() if not k.startswith("__"))
    assert ours_bytes == [] and compiled.make_many(np.arange(len(samples)))[0][1]["__key__"] == "\udcff\udcfeodd"


def test_ranges_past_the_data_are_clamped_as_slices_are():
    data = b"0123456789"
    out = _C.build_samples(data, ["k"], np.zeros(0, np.int64), np.zeros(0, np.int64), np.array([3], np.int64),
                           np.array([0, 1, 2], np.int32), np.array([8, 12, 4], np.int64),
                           np.array([15, 20, 2], np.int64), ["a", "b", "c"], "u")
    assert out == [{"__key__": "k", "__url__": "u", "a": data[8:15], "b": data[12:20], "c": data[4:2]}]


@pytest.mark.parametrize("change, message", [
    (dict(counts=np.array([4], np.int64)), "member counts"),
    (dict(ext=np.array([0, 5, 1], np.int32)), "extension id"),
    (dict(keys=b"k", key_starts=np.array([0], np.int64), key_ends=np.array([9], np.int64)), "key range"),
    (dict(keys=["k", "extra"]), "keys must be"),
    (dict(off=np.array([0, 1], np.int64)), "off must be"),
    (dict(counts=np.array([3], np.int32)), "counts must be"),
])
def test_inconsistent_input_is_refused(change, message):
    args = dict(data=b"0123456789", keys=["k"], key_starts=np.zeros(0, np.int64), key_ends=np.zeros(0, np.int64),
                counts=np.array([3], np.int64), ext=np.array([0, 1, 2], np.int32),
                off=np.array([0, 1, 2], np.int64), end=np.array([1, 2, 3], np.int64), exts=["a", "b", "c"], url="u")
    args.update(change)
    with pytest.raises(ValueError, match=message):
        _C.build_samples(**args)


LARGE = [_origins.MIN_SIZE + 5, 3, 100_000, _origins.MIN_SIZE - 1]  # around the noting size and the GIL release


@pytest.mark.parametrize("noting", [True, False])
def test_pread_samples_note_where_their_large_members_came_from(noting, tmp_path, monkeypatch):
    monkeypatch.setattr(_origins, "_enabled", noting)
    monkeypatch.setattr(_origins, "_held", type(_origins._held)())
    monkeypatch.setattr(_origins, "_held_bytes", 0)
    monkeypatch.setattr(_origins, "_cap", 1 << 30)
    samples, data = _samples(["a.x", "a.y", "b.x", "b.y"], LARGE, keys_as_table=True)
    shard = _pread_shard(tmp_path, data)
    if noting and not shard.local:
        pytest.skip("the temporary directory is not on a local disk: nothing is noted")
    built, nbytes = _members.SampleMaker(samples, shard, "u").make_many(np.array([1, 0]))
    assert nbytes == [LARGE[2] + LARGE[3], LARGE[0] + LARGE[1]]
    offsets = samples.offset.tolist()
    assert built == [{"__key__": "b", "__url__": "u", "x": data[offsets[2]:offsets[2] + LARGE[2]],
                      "y": data[offsets[3]:offsets[3] + LARGE[3]]},
                     {"__key__": "a", "__url__": "u", "x": data[offsets[0]:offsets[0] + LARGE[0]],
                      "y": data[offsets[1]:offsets[1] + LARGE[1]]}]
    noted = [_origins.take(sample[ext]) for sample in built for ext in ("x", "y")]
    if noting:
        assert noted == [(shard, offsets[2]), None, (shard, offsets[0]), None]
    else:
        assert noted == [None] * 4


def test_a_pread_shard_cut_short_names_the_shard_and_offset(tmp_path):
    samples, data = _samples(["a.x", "b.x", "c.x"], [10, 70_000, 10], keys_as_table=True)
    shard = _pread_shard(tmp_path, data)
    maker = _members.SampleMaker(samples, shard, shard.url)
    os.truncate(shard.url[len("file://"):], int(samples.offset[1]) + 100)  # b's member cut, c's gone
    assert maker.make_many(np.array([0]))[0][0]["x"] == data[7:17]
    for i in (1, 2):
        with pytest.raises(ShardError, match="shorter than its index") as err:
            maker.make_many(np.array([0, i]))
        assert err.value.offset == int(samples.offset[i]) and shard.url in str(err.value)


def test_small_members_in_order_are_read_in_spans_scattered_ones_through_the_mapping(tmp_path, monkeypatch):
    from _shard_data import make_samples, write_with_webdataset

    import fastloader

    samples = make_samples(6000, seed=2)  # ~2 KB each: a chunk of 256 shuffled ones is sparse in its shards
    paths = write_with_webdataset(tmp_path, samples, per_shard=2000)
    spans = []
    real = _members.read_range
    monkeypatch.setattr(_members, "read_range", lambda fd, a, n: spans.append(n) or real(fd, a, n))
    in_order = list(fastloader.WebDataset(paths, shard_shuffle=False))
    assert [s["__key__"] for s in in_order] == [s["__key__"] for s in samples]
    assert len(spans) >= 6000 // 256 and sum(spans) < sum(os.path.getsize(p) for p in paths)  # a span a chunk
    spans.clear()
    shuffled = list(fastloader.WebDataset(paths, shuffle=True, seed=0))
    assert spans == [] and sorted(s["__key__"] for s in shuffled) == sorted(s["__key__"] for s in in_order)
    assert {s["__key__"]: s for s in shuffled} == {s["__key__"]: s for s in in_order}
    many = write_with_webdataset(tmp_path / "many", samples[:600], per_shard=10)  # a sample or two per shard a chunk
    spans.clear()
    assert len(list(fastloader.WebDataset(many, shuffle=True, seed=0))) == 600 and spans == []
    # in order, but every 2nd sample (two partitions): still spans; every 8th: the mapping
    for world, want_spans in ((2, True), (8, False)):
        spans.clear()
        share = list(fastloader.WebDataset(paths, shard_shuffle=False, rank=1, world_size=world))
        assert share == in_order[1::world] and bool(spans) == want_spans, world


def test_span_readers_are_few(tmp_path, monkeypatch):
    from _shard_data import make_samples, write_with_webdataset

    import fastloader
    from fastloader.shards import dataset

    monkeypatch.setattr(dataset, "MAX_SPAN_READERS", 2)
    samples = make_samples(60, seed=3)
    ds = fastloader.WebDataset(write_with_webdataset(tmp_path, samples, per_shard=10), shard_shuffle=False)
    assert [s["__key__"] for s in ds] == [s["__key__"] for s in samples]
    assert len(ds._open) == 6 and sum(m.reader is not None for m in ds._open.values()) == 2


def test_a_span_cut_short_names_the_shard_and_offset(tmp_path):
    samples, data = _samples(["a.x", "b.x", "c.x"], [10, 500, 10], keys_as_table=True)
    shard = _pread_shard(tmp_path, data)
    maker = _members.SampleMaker(samples, mmap.mmap(-1, len(data)), shard.url, open_reader=lambda: shard)
    os.truncate(shard.url[len("file://"):], int(samples.offset[1]) + 100)
    with pytest.raises(ShardError, match="shorter than its index") as err:
        maker.make_many(np.array([0, 1, 2]))
    assert err.value.offset == int(samples.offset[1]) + 100 and shard.url in str(err.value)


def test_a_failed_pread_is_an_os_error():
    args = (["k"], np.zeros(0, np.int64), np.zeros(0, np.int64), np.array([1], np.int64), np.array([0], np.int32),
            np.array([0], np.int64), np.array([10], np.int64), ["a"], "u", -1, [])
    with pytest.raises(OSError):
        _C.build_samples_pread(-1, *args)
    with pytest.raises(ValueError, match="out of order"):
        _C.build_samples_pread(0, *args[:5], np.array([10], np.int64), np.array([0], np.int64), *args[7:])
