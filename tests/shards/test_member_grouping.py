"""Tar members grouped into samples by the compiled pass (`_C.group_members` behind
`_members.group`) against a plain Python model of the rules: `split_name` (checked
against webdataset's own splitting in test_tar_scanner.py) and runs of one key, a sample
that repeats an extension left out and reported once."""
import numpy as np

from fastloader.shards import _members

# plain ASCII names (split in C++) mixed with names only Python splits: non-ASCII keys
# and extensions, lone surrogates, dotfiles, no extension, newlines, metadata entries
POOL = ["a.jpg", "a.cls", "a.JPG", "a.Cls", "a.seg.png", "d/a.jpg", "d/a.txt", "a.ÄB", "a.jpg\n", "a\n.jpg",
        "ü.jpg", "ü.cls", "k\udcff.txt", "k\udcff.jpg", "dir/.x.jpg", "dir/.x.cls", ".hidden", "noext", "k.",
        "__meta__", "__key__", "__dir__/a.jpg", "__x__\n", "d/__x__.jpg", "a..b", "/abs/p.q", "x/y/z.tar.gz",
        "b.jpg", "b.cls", "B.jpg", "b.JPEG", "b.Jpeg"]


def reference(names: list[str]):
    samples, duplicates = [], []
    for i, name in enumerate(names):
        key, ext = _members.split_name(name)
        if key is None:
            continue
        if not samples or samples[-1]["key"] != key:
            samples.append({"key": key, "start": i, "members": [], "bad": False})
        s = samples[-1]
        if ext in [e for e, _ in s["members"]]:
            if not s["bad"]:
                duplicates.append((i, key))
            s["bad"] = True
            continue
        s["members"].append((ext, i))
    return [s for s in samples if not s["bad"]], duplicates


def grouped(names: list[str]):
    index = np.arange(len(names), dtype=np.int64)
    got = _members.group(names, index * 10, index, index + 1000)  # header, offset, size: all say i
    samples = []
    for k, key in enumerate(got.keys):
        members = range(int(got.first[k]), int(got.first[k + 1]))
        samples.append({"key": key, "start": int(got.header[k]) // 10,
                        "members": [(got.exts[got.member_ext[m]], int(got.offset[m])) for m in members],
                        "bad": False})
        assert all(int(got.size[m]) == int(got.offset[m]) + 1000 for m in members)
    assert len(got.exts) == len(set(got.exts))
    duplicates = [(p.offset // 10, p.key) for p in got.problems]
    for p, (i, _) in zip(got.problems, duplicates):
        assert p.reason == f"duplicate member {names[i]!r} in one sample"
    return samples, duplicates


def test_grouping_follows_the_rules_on_random_name_sequences():
    rng = np.random.default_rng(0)
    for trial in range(3000):
        names = [POOL[i] for i in rng.integers(0, len(POOL), int(rng.integers(0, 12)))]
        assert grouped(names) == reference(names), names


def test_grouping_of_a_shard_like_listing():
    names = [f"train/{i:06d}.{ext}" for i in range(2000) for ext in ("jpg", "CLS", "json")]
    names[3001] = names[3000]  # sample 1000 repeats its jpg: left out
    samples, duplicates = grouped(names)
    assert (samples, duplicates) == reference(names)
    assert len(samples) == 1999 and duplicates == [(3001, "train/001000")]
    assert samples[0]["members"] == [("jpg", 0), ("cls", 1), ("json", 2)]
