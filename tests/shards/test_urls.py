"""Shard URL expansion: brace patterns as webdataset's braceexpand expands them, and globs
that leave out the files fastloader writes beside shards."""
from __future__ import annotations

import random

import pytest
from braceexpand import braceexpand

import fastloader
from fastloader.shards._braces import expand_braces
from fastloader.shards.urls import expand_urls

from _shard_data import make_samples, write_with_webdataset


def _reference(pattern: str):
    try:
        return list(braceexpand(pattern))
    except Exception:  # braceexpand's UnbalancedBracesError
        return "error"


def _ours(pattern: str):
    try:
        return expand_braces(pattern)
    except ValueError:
        return "error"


@pytest.mark.parametrize("pattern", [
    "s-{000000..000004}.tar", "s-{x,y{1..2}}.tar", "s-{{1,2},3}.tar", "s-{a..c}.tar", "s-{0..6..2}.tar",
    "s-{8..010}.tar", "{-3..3}", "{-03..3}", "{3..-3..2}", "{z..a..3}", r"s-\{1,2\}.tar", "s-{a}.tar", "{}",
    "a{,b}c", "{1..3}{a,b}", "{a{1,2}}", "{a,b", "a}b", "no-braces.tar", "{Z..a}", "{a..Z}", "{z..A..5}", "{A..A}",
])
def test_brace_patterns_expand_as_braceexpand_does(pattern):
    assert _ours(pattern) == _reference(pattern)


def test_random_brace_patterns_expand_as_braceexpand_does():
    rng = random.Random(0)
    alphabet = list("{},.\\a10-zAZ") + ["..", "{1..3}", "{a,b}", "{Z..a}", "{z..A..5}"]
    for _ in range(20000):
        pattern = "".join(rng.choice(alphabet) for _ in range(rng.randint(0, 12)))
        assert _ours(pattern) == _reference(pattern), pattern


def test_unbalanced_braces_are_a_value_error():
    with pytest.raises(ValueError, match="unbalanced braces"):
        expand_urls("s-{0..3.tar")


def test_nested_brace_patterns_read_the_shards_they_name(tmp_path):
    for name in ["x", "y1", "y2"]:
        write_with_webdataset(tmp_path, make_samples(3, seed=len(name), prefix=name), per_shard=3, name=name)
    got = fastloader.WebDataset(str(tmp_path / "{x,y{1..2}}-000000.tar"), shard_shuffle=False)
    assert [s["__key__"][:2] for s in got] == ["x0"] * 3 + ["y1"] * 3 + ["y2"] * 3


def test_a_glob_leaves_out_indexes_and_unfinished_shards(tmp_path):
    paths = write_with_webdataset(tmp_path, make_samples(8, seed=3), per_shard=4, name="train")
    (tmp_path / "train-000009.tar.part").write_bytes(b"half a shard")
    pattern = str(tmp_path / "train-*")
    assert len(list(fastloader.WebDataset(pattern))) == 8  # writes each shard's .fidx beside it
    assert sorted(p.name for p in tmp_path.iterdir() if p.name.endswith(".fidx")) == [
        "train-000000.tar.fidx", "train-000001.tar.fidx"]
    assert expand_urls(pattern) == paths
    assert len(list(fastloader.WebDataset(pattern))) == 8
    # a list made by a shell glob names the indexes too: they are left out
    assert expand_urls(sorted(str(p) for p in tmp_path.iterdir())) == paths + [str(tmp_path / "train-000009.tar.part")]
