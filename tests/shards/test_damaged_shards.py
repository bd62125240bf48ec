"""Damaged shards: an error naming the shard and byte offset, or skipped and counted with
every good sample still delivered; nothing crashes or allocates without bound."""
from __future__ import annotations

import io
import os
import shutil
import subprocess
import tarfile

import fsspec
import numpy as np
import pytest

import fastloader

from _shard_data import keys, make_samples, without_url, write_with_webdataset

MODES = ["indexed", "streamed"]


def _urls(paths, mode, tag):
    if mode == "indexed":
        return paths
    fs = fsspec.filesystem("memory")
    out = []
    for i, p in enumerate(paths):
        with open(p, "rb") as f:
            fs.pipe(f"/bad-{tag}/{i}.tar", f.read())
        out.append(f"memory://bad-{tag}/{i}.tar")
    return out


def _rewrite_header(path, offset: int, change, fix_checksum: bool) -> None:
    """Applies change(block) to the 512-byte header at offset (then recomputes its checksum)."""
    with open(path, "r+b") as f:
        f.seek(offset)
        block = bytearray(f.read(512))
        change(block)
        if fix_checksum:
            block[148:156] = b" " * 8
            block[148:156] = f"{sum(block):06o}".encode() + b"\0 "
        f.seek(offset)
        f.write(block)


def _member_headers(path):
    """Offset of each member's own ustar header (after any pax header webdataset writes)."""
    with tarfile.open(path) as tf:
        return {m.name: m.offset_data - 512 for m in tf.getmembers()}


@pytest.fixture
def shard_set(tmp_path):
    samples = make_samples(60, seed=5)
    paths = write_with_webdataset(tmp_path, samples, per_shard=20)
    return samples, paths


def _read(urls, **kw):
    ds = fastloader.WebDataset(urls, shard_shuffle=False, **kw)
    return list(ds), ds.stats()


@pytest.mark.parametrize("mode", MODES)
def test_truncated_tar(shard_set, mode, request):
    samples, paths = shard_set
    headers = _member_headers(paths[1])
    cut = headers["s000030.bin"] + 700  # inside sample 30's data
    with open(paths[1], "r+b") as f:
        f.truncate(cut)
    urls = _urls(paths, mode, request.node.name)
    with pytest.raises(fastloader.ShardError) as e:
        _read(urls)
    assert e.value.url == urls[1] and "truncated" in str(e.value)
    assert str(urls[1]) in str(e.value) and f"byte offset {e.value.offset}" in str(e.value)
    got, stats = _read(urls, on_error="skip")
    assert keys(got) == keys(samples[:30] + samples[40:])
    assert stats["failures"] == 1


@pytest.mark.parametrize("mode", MODES)
def test_bad_header_checksum_loses_only_that_member(shard_set, mode, request):
    samples, paths = shard_set
    offset = _member_headers(paths[0])["s000010.txt"]
    _rewrite_header(paths[0], offset, lambda h: h.__setitem__(0, h[0] ^ 0x55), fix_checksum=False)
    urls = _urls(paths, mode, request.node.name)
    with pytest.raises(fastloader.ShardError, match="checksum") as e:
        _read(urls)
    assert e.value.offset == offset
    got, stats = _read(urls, on_error="skip", require=("bin", "cls", "txt"))
    assert [s for s in got] == [dict(s, __url__=u) for s, u in
                                ((s, urls[int(s["__key__"][1:]) // 20]) for s in samples) if s["__key__"] != "s000010"]
    assert stats["failures"] == 2  # the damaged header, then sample 10 without its txt


@pytest.mark.parametrize("mode", MODES)
def test_non_tar_file_and_unreadable_url(shard_set, mode, request, tmp_path):
    samples, paths = shard_set
    with open(paths[1], "wb") as f:
        f.write(b"<html>this is not a tar</html>" * 50)
    urls = _urls(paths, mode, request.node.name) + [str(tmp_path / "missing.tar") if mode == "indexed"
                                                     else "memory://nowhere/missing.tar"]
    with pytest.raises(fastloader.ShardError, match="not a tar file") as e:
        _read(urls)
    assert e.value.url == urls[1] and e.value.offset == 0
    got, stats = _read(urls, on_error="skip")
    assert keys(got) == keys(samples[:20] + samples[40:])
    assert stats["failures"] == 2
    with pytest.raises(fastloader.ShardError, match="more than max_failures=1"):
        _read(urls, on_error="skip", max_failures=1)


@pytest.mark.parametrize("mode", MODES)
def test_an_empty_file_is_not_a_tar(shard_set, mode, request):
    """A zero-byte shard (a cut download) is damage, as tarfile's 'empty file', not an
    empty shard."""
    samples, paths = shard_set
    open(paths[1], "wb").close()
    urls = _urls(paths, mode, request.node.name)
    with pytest.raises(fastloader.ShardError, match="empty") as e:
        _read(urls)
    assert e.value.url == urls[1]
    got, stats = _read(urls, on_error="skip")
    assert keys(got) == keys(samples[:20] + samples[40:]) and stats["failures"] == 1


@pytest.mark.parametrize("mode", MODES)
def test_a_member_named_like_a_sample_field_is_a_bad_sample(tmp_path, mode, request):
    """`x.__key__` or `x.__url__` would replace the sample's key or URL: webdataset refuses
    it as a duplicate; here the sample is bad, the others delivered."""
    path = str(tmp_path / "fields.tar")
    with tarfile.open(path, "w", format=tarfile.USTAR_FORMAT) as tf:
        for name, data in [("a.jpg", b"1"), ("b.jpg", b"2"), ("b.__key__", b"k"), ("c.jpg", b"3"),
                           ("d.__URL__", b"u"), ("d.cls", b"4")]:
            info = tarfile.TarInfo(name)
            info.size = len(data)
            tf.addfile(info, io.BytesIO(data))
    urls = _urls([path], mode, request.node.name)
    with pytest.raises(fastloader.ShardError, match=r"'b\.__key__' would replace the sample's own __key__") as e:
        _read(urls)
    assert e.value.key == "b"
    got, stats = _read(urls, on_error="skip")
    assert [(s["__key__"], s["__url__"]) for s in got] == [("a", urls[0]), ("c", urls[0])]
    assert stats["failures"] == 2


@pytest.mark.skipif(shutil.which("tar") is None, reason="needs GNU tar")
@pytest.mark.parametrize("fmt", ["gnu", "posix"])
@pytest.mark.parametrize("mode", MODES)
def test_a_sparse_member_is_reported_not_read_wrong(tmp_path, fmt, mode, request):
    """GNU tar's --sparse members hold a map of holes, not the file: named as damage (the
    pax flavour was read as a member under a made-up name), the rest delivered."""
    src = tmp_path / "src"
    src.mkdir()
    (src / "a.txt").write_bytes(b"first")
    with open(src / "b.bin", "wb") as f:  # mostly a hole
        f.write(b"head")
        f.seek(1 << 20)
        f.write(b"tail")
    (src / "c.txt").write_bytes(b"last")
    path = str(tmp_path / f"sparse-{fmt}.tar")
    subprocess.run(["tar", "--sparse", f"--format={fmt}", "-cf", path, "-C", str(src), "a.txt", "b.bin", "c.txt"],
                   check=True)
    urls = _urls([path], mode, request.node.name)
    with pytest.raises(fastloader.ShardError, match="sparse member"):
        _read(urls)
    got, stats = _read(urls, on_error="skip")
    assert [(s["__key__"], dict((k, v) for k, v in s.items() if not k.startswith("__"))) for s in got] == [
        ("a", {"txt": b"first"}), ("c", {"txt": b"last"})]
    assert stats["failures"] == 1


def test_an_empty_numeric_field_reads_as_zero_as_tarfile_reads_it(tmp_path):
    path = str(tmp_path / "nul-size.tar")
    with tarfile.open(path, "w", format=tarfile.USTAR_FORMAT) as tf:
        for name in ["d", "a.txt"]:
            info = tarfile.TarInfo(name)
            info.type = tarfile.DIRTYPE if name == "d" else tarfile.REGTYPE
            info.size = 0 if name == "d" else 3
            tf.addfile(info, io.BytesIO(b"abc") if name == "a.txt" else None)
    _rewrite_header(path, 0, lambda block: block.__setitem__(slice(124, 136), bytes(12)), fix_checksum=True)
    with tarfile.open(path) as tf:
        assert [m.size for m in tf.getmembers()] == [0, 3]
    got, stats = _read([path])
    assert [(s["__key__"], s["txt"]) for s in got] == [("a", b"abc")] and stats["failures"] == 0


@pytest.mark.parametrize("mode", MODES)
def test_an_unreadable_url_is_named(shard_set, mode, request, tmp_path):
    samples, paths = shard_set
    missing = str(tmp_path / "missing.tar") if mode == "indexed" else "memory://nowhere/missing.tar"
    urls = _urls(paths, mode, request.node.name)
    urls = urls[:1] + [missing] + urls[1:]
    with pytest.raises(fastloader.ShardError, match="cannot (open|read shard)") as e:
        _read(urls)
    assert e.value.url == missing and "missing.tar" in str(e.value)
    got, stats = _read(urls, on_error="skip")
    assert keys(got) == keys(samples) and stats["failures"] == 1


@pytest.mark.parametrize("mode", MODES)
def test_sample_missing_a_required_extension(tmp_path, mode, request):
    samples = make_samples(10)
    del samples[4]["cls"]
    paths = write_with_webdataset(tmp_path, samples, per_shard=100)
    urls = _urls(paths, mode, request.node.name)
    with pytest.raises(fastloader.ShardError, match="no cls member") as e:
        _read(urls, require=("bin", "cls"))
    assert e.value.key == "s000004" and e.value.url == urls[0]
    with tarfile.open(paths[0]) as tf:  # the offset of the sample's first header
        assert e.value.offset == next(m.offset for m in tf.getmembers() if m.name.startswith("s000004."))
    got, stats = _read(urls, require=("bin", "cls"), on_error="skip")
    assert keys(got) == [k for k in keys(samples) if k != "s000004"]
    assert stats["skipped_samples"] == 1


@pytest.mark.parametrize("mode", MODES)
def test_a_header_claiming_100_gb_is_rejected(shard_set, mode, request):
    samples, paths = shard_set
    offset = _member_headers(paths[0])["s000003.bin"]

    def claim_100_gb(h):
        h[124:136] = b"\x80" + (100 * 10**9).to_bytes(11, "big")

    _rewrite_header(paths[0], offset, claim_100_gb, fix_checksum=True)
    urls = _urls(paths, mode, request.node.name)
    with pytest.raises(fastloader.ShardError, match="100000000000 data bytes"):
        _read(urls)
    got, _ = _read(urls, on_error="skip", require=("bin", "cls", "txt"))
    assert keys(got) == [k for k in keys(samples) if k != "s000003"]


@pytest.mark.parametrize("mode", MODES)
def test_taking_batches_gives_what_iteration_gives(shard_set, mode, request):
    """`take(n)` (how fastloader's DataLoader fetches) delivers and counts exactly what
    one-at-a-time iteration does, around damage and missing members too."""
    samples, paths = shard_set
    with open(paths[1], "r+b") as f:
        f.truncate(9000)
    urls = _urls(paths, mode, request.node.name)
    ds = fastloader.WebDataset(urls, shard_shuffle=False, on_error="skip", require=("bin", "cls", "txt"))
    one_by_one = list(ds)
    counted = ds.stats()
    assert 40 < len(one_by_one) < 60 and counted["failures"] > 0
    it, got = iter(ds), []
    for n in [1, 7, 64, 3] * 20:
        batch = it.take(n)
        got += batch
        if len(batch) < n:
            break
    assert got == one_by_one and ds.stats() == counted and it.take(5) == []


def test_errors_cross_from_loader_workers_with_the_shard_named(shard_set):
    samples, paths = shard_set
    with open(paths[2], "r+b") as f:
        f.truncate(5000)
    loader = fastloader.DataLoader(fastloader.WebDataset(paths), batch_size=4, num_workers=2,
                                   collate_fn=lambda b: b)
    with pytest.raises(fastloader.ShardError, match=os.path.basename(paths[2])):
        list(loader)
    loader = fastloader.DataLoader(fastloader.WebDataset(paths, on_error="skip"), batch_size=4,
                                   num_workers=2, collate_fn=lambda b: [s["__key__"] for s in b])
    got = [k for b in loader for k in b]
    good_in_damaged, _ = _read(paths[2], on_error="skip")
    assert 0 < len(good_in_damaged) < 20
    assert sorted(got) == sorted(keys(samples[:40]) + keys(good_in_damaged))
    assert loader.stats()["dataset"]["failures"] == 1


def test_randomly_damaged_tars_never_crash(tmp_path):
    """Random byte damage and truncation: never a crash; the indexed and the streamed
    reader agree sample for sample and on the failure count; a strict read gives exactly
    what the skipping read gives when that skipped nothing, else a ShardError naming the
    shard."""
    samples = make_samples(12, seed=3)
    path = write_with_webdataset(tmp_path, samples, per_shard=100)[0]
    with open(path, "rb") as f:
        clean = f.read()
    rng = np.random.default_rng(0)
    fs = fsspec.filesystem("memory")
    strict_reads = 0
    for trial in range(150):
        blob = bytearray(clean)
        for _ in range(int(rng.integers(1, 20))):
            blob[int(rng.integers(0, len(blob)))] = int(rng.integers(0, 256))
        if trial % 3 == 0:
            blob = blob[: int(rng.integers(0, len(blob)))]
        with open(path, "wb") as f:
            f.write(blob)
        fs.pipe("/fuzz.tar", bytes(blob))
        results = []
        for url in (path, "memory://fuzz.tar"):
            got, stats = _read(url, on_error="skip", max_failures=10**6, index_dir=False, chunk_size=1024)
            assert all(isinstance(s["__key__"], str) for s in got)
            results.append((without_url(got), stats["failures"]))
            try:
                strict, _ = _read(url, index_dir=False)
            except fastloader.ShardError as e:
                assert os.path.basename(url) in str(e), (trial, url, str(e))
                assert stats["failures"] > 0, (trial, url, str(e))
            else:
                strict_reads += 1
                assert without_url(strict) == results[-1][0] and stats["failures"] == 0, (trial, url)
        assert results[0] == results[1], trial
    assert 0 < strict_reads < 300  # both outcomes were exercised


def test_bad_arguments():
    with pytest.raises(ValueError, match="on_error"):
        fastloader.WebDataset("x.tar", on_error="ignore")
    with pytest.raises(ValueError, match="buffer_size"):
        fastloader.WebDataset("x.tar", buffer_size=0)
    with pytest.raises(ValueError, match="both rank and world_size"):
        fastloader.WebDataset("x.tar", rank=1)
    with pytest.raises(ValueError, match="rank must be in"):
        fastloader.WebDataset("x.tar", rank=2, world_size=2)
    with pytest.raises(ValueError, match="epoch_size"):
        fastloader.WebDataset("x.tar", epoch_size=0)


@pytest.mark.parametrize("mode", MODES)
def test_samples_before_an_error_are_delivered_first(tmp_path, mode, request):
    samples = make_samples(10)
    del samples[6]["cls"]
    urls = _urls(write_with_webdataset(tmp_path, samples, per_shard=100), mode, request.node.name)
    got = []
    with pytest.raises(fastloader.ShardError, match="no cls member"):
        for s in fastloader.WebDataset(urls, require=("cls",)):
            got.append(s["__key__"])
    assert got == keys(samples[:6])


def test_resampled_local_shards_skip_the_damaged_part(shard_set):
    samples, paths = shard_set
    with open(paths[1], "r+b") as f:
        f.truncate(_member_headers(paths[1])["s000030.bin"] + 700)
    ds = fastloader.WebDataset(paths, resampled=True, epoch_size=200, on_error="skip", seed=1)
    got = keys(list(ds))
    assert len(got) == 200 and set(got) <= set(keys(samples[:30] + samples[40:]))
    assert ds.stats()["failures"] >= 1
    with pytest.raises(fastloader.ShardError, match="truncated"):
        list(fastloader.WebDataset(paths, resampled=True, epoch_size=200, seed=1))
