"""Sample dicts built by the compiled `_C.build_samples` against the same samples built in
Python, member by member, and its refusal of inconsistent input."""
import mmap

import numpy as np
import pytest

from fastloader import _C
from fastloader.shards import _members


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


@pytest.mark.parametrize("keys_as_table", [True, False])
@pytest.mark.parametrize("kind", ["bytes", "mmap", "memoryview"])
def test_compiled_samples_equal_python_ones(keys_as_table, kind):
    samples, data = _samples(NAMES, SIZES, keys_as_table)
    if kind == "mmap":
        data = mmap.mmap(-1, len(data))
        data.write(_samples(NAMES, SIZES, keys_as_table)[1])
    elif kind == "memoryview":
        data = memoryview(data)
    compiled = _members.SampleMaker(samples, data, "shard-1.tar")
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
