"""WebDataset reading: interop with the webdataset library both ways, URL forms, the
index cache, and use with fastloader's and torch's DataLoader."""
from __future__ import annotations

import gc
import mmap
import os
import time
import warnings

import fsspec
import numpy as np
import pytest
import torch

import fastloader
from fastloader.shards import _index

from _shard_data import keys, make_samples, read_with_webdataset, without_url, write_with_webdataset


@pytest.fixture(scope="module")
def ref_shards(tmp_path_factory):
    d = tmp_path_factory.mktemp("ref")
    samples = make_samples(230, seed=1)
    return samples, write_with_webdataset(d, samples, per_shard=50)


def test_shards_written_by_webdataset_read_identically(ref_shards):
    samples, paths = ref_shards
    ours = list(fastloader.WebDataset(paths, shard_shuffle=False))
    theirs = read_with_webdataset(paths)
    assert ours == theirs  # same keys, same bytes, same __url__
    assert without_url(ours) == samples


def test_our_shards_read_identically_in_webdataset(tmp_path):
    samples = make_samples(120, seed=2, prefix="dir/sub/")
    samples[7]["__key__"] = "dir/" + "k" * 180  # a pax long name
    samples[9]["json"] = {"a": [1, 2]}
    with fastloader.ShardWriter(str(tmp_path / "ours-%04d.tar"), maxcount=40) as w:
        for s in samples:
            w.write(s)
    assert [os.path.basename(p) for p in w.shards] == ["ours-0000.tar", "ours-0001.tar", "ours-0002.tar"]
    theirs = read_with_webdataset(w.shards)
    ours = list(fastloader.WebDataset(w.shards, shard_shuffle=False))
    assert ours == theirs
    assert theirs[9]["json"] == b'{"a": [1, 2]}'
    assert without_url(theirs)[:9] == samples[:9] and keys(theirs) == keys(samples)


def test_url_forms_expand_to_the_same_shards(ref_shards, tmp_path):
    _, paths = ref_shards
    d = os.path.dirname(paths[0])
    want = list(fastloader.WebDataset(paths, shard_shuffle=False))
    for urls in (os.path.join(d, "ref-{000000..000004}.tar"), os.path.join(d, "ref-*.tar"),
                 ["file://" + p for p in paths], "::".join(paths)):
        got = list(fastloader.WebDataset(urls, shard_shuffle=False))
        assert keys(got) == keys(want) and without_url(got) == without_url(want), urls
    with pytest.raises(fastloader.ShardError, match="no file matches"):
        fastloader.WebDataset(os.path.join(d, "nothing-*.tar"))


def test_fsspec_urls_stream_through_the_scanner(ref_shards):
    _, paths = ref_shards
    fs = fsspec.filesystem("memory")
    for i, p in enumerate(paths):
        with open(p, "rb") as f:
            fs.pipe(f"/streamed/ref-{i:06d}.tar", f.read())
    want = read_with_webdataset(paths)
    ds = fastloader.WebDataset("memory://streamed/ref-{000000..000004}.tar", shard_shuffle=False, chunk_size=3000)
    assert not ds.indexed
    got = list(ds)
    assert without_url(got) == without_url(want)
    assert got[0]["__url__"] == "memory://streamed/ref-000000.tar"


def test_pipe_urls_need_allow_pipe(ref_shards):
    _, paths = ref_shards
    with pytest.raises(fastloader.ShardError, match="allow_pipe"):
        fastloader.WebDataset(f"pipe:cat {paths[0]}")
    got = list(fastloader.WebDataset(f"pipe:cat {paths[0]}", allow_pipe=True))
    assert without_url(got) == without_url(read_with_webdataset(paths[0]))


def test_index_is_cached_beside_the_shard_and_rebuilt_when_it_changes(tmp_path):
    paths = write_with_webdataset(tmp_path, make_samples(30, seed=3), per_shard=100)
    assert len(list(fastloader.WebDataset(paths))) == 30
    cache = paths[0] + _index.INDEX_SUFFIX
    assert os.path.exists(cache)
    # a stale index (the shard rewritten with other samples) is not used
    write_with_webdataset(tmp_path, make_samples(12, seed=4), per_shard=100)
    os.utime(paths[0], ns=(1, 1))
    assert keys(fastloader.WebDataset(paths)) == keys(make_samples(12, seed=4))
    # a corrupt index file is rebuilt, not trusted
    with open(cache, "wb") as f:
        f.write(b"garbage")
    assert len(list(fastloader.WebDataset(paths))) == 12


def test_index_goes_to_the_cache_dir_when_it_cannot_sit_beside_the_shard(tmp_path, monkeypatch):
    paths = write_with_webdataset(tmp_path / "shards", make_samples(10), per_shard=100)
    os.mkdir(paths[0] + _index.INDEX_SUFFIX)  # the place beside the shard is taken
    monkeypatch.setenv("FASTLOADER_CACHE", str(tmp_path / "cache"))
    assert len(list(fastloader.WebDataset(paths))) == 10
    assert len(os.listdir(tmp_path / "cache" / "index")) == 1
    assert len(list(fastloader.WebDataset(paths))) == 10  # and is found there again


def test_index_dir_argument(tmp_path, ref_shards):
    _, paths = ref_shards
    ds = fastloader.WebDataset(paths[:1], index_dir=str(tmp_path / "idx"))
    assert len(list(ds)) == 50 and len(os.listdir(tmp_path / "idx")) == 1


def _collate_keys(batch):
    return [s["__key__"] for s in batch]


@pytest.mark.parametrize("loader_cls", [fastloader.DataLoader, torch.utils.data.DataLoader])
@pytest.mark.parametrize("shuffle", [False, True])
def test_every_sample_once_through_a_loader_with_workers(ref_shards, loader_cls, shuffle):
    samples, paths = ref_shards
    ds = fastloader.WebDataset(paths, shuffle=shuffle, seed=5)
    loader = loader_cls(ds, batch_size=16, num_workers=2, collate_fn=_collate_keys)
    got = [k for batch in loader for k in batch]
    assert sorted(got) == sorted(keys(samples))


def test_thread_workers_split_the_stream_too(ref_shards):
    samples, paths = ref_shards
    loader = fastloader.DataLoader(fastloader.WebDataset(paths), batch_size=10, num_workers=2,
                                   worker_type="thread", collate_fn=_collate_keys)
    got = [k for batch in loader for k in batch]
    assert sorted(got) == sorted(keys(samples))


@pytest.mark.parametrize("streamed", [False, True])
def test_views_hand_out_the_shard_bytes_without_copies(ref_shards, streamed):
    _, paths = ref_shards
    urls = paths
    if streamed:
        fs = fsspec.filesystem("memory")
        for i, p in enumerate(paths):
            with open(p, "rb") as f:
                fs.pipe(f"/views/{i}.tar", f.read())
        urls = [f"memory://views/{i}.tar" for i in range(len(paths))]
    got = list(fastloader.WebDataset(urls, shard_shuffle=False, views=True))
    want = read_with_webdataset(paths)
    assert all(type(s["bin"]) is memoryview for s in got)
    for s in got:  # views into the mapped file (or the stream's buffer), not copies
        view = s["bin"]
        owner = np.frombuffer(view.obj, np.uint8)
        start = owner.__array_interface__["data"][0]
        at = np.frombuffer(view, np.uint8).__array_interface__["data"][0] - start
        assert type(view.obj) is (bytearray if streamed else mmap.mmap)
        assert 0 <= at and at + len(view) <= len(owner) and bytes(owner[at:at + len(view)]) == bytes(view)
    assert [{k: bytes(v) for k, v in s.items() if not k.startswith("__")} for s in got] == \
        [{k: v for k, v in s.items() if not k.startswith("__")} for s in want]


def test_image_shards_feed_the_pipeline_from_views(tmp_path, photos):
    from PIL import Image

    from _images import encode_jpeg
    from fastloader.vision import CenterCrop, ImagePipeline, Resize, ToDtype

    jpegs = [encode_jpeg(Image.fromarray(photos[k]).convert("RGB"), quality=90) for k in sorted(photos)][:8]
    with fastloader.ShardWriter(str(tmp_path / "img-%02d.tar"), maxcount=3) as w:
        for i, data in enumerate(jpegs):
            w.write({"__key__": f"{i:04d}", "jpg": data, "cls": i})
    pipe = ImagePipeline([Resize(40), CenterCrop(32), ToDtype(torch.float32, scale=True)], num_threads=1)

    def collate(samples):  # decoded in the worker, straight from the mapped shard
        return pipe([s["jpg"] for s in samples]), torch.tensor([int(bytes(s["cls"])) for s in samples])

    ds = fastloader.WebDataset(w.shards, shard_shuffle=False, views=True)
    batches = list(fastloader.DataLoader(ds, batch_size=4, num_workers=2, worker_type="thread", collate_fn=collate))
    images = torch.cat([b[0] for b in batches])
    labels = torch.cat([b[1] for b in batches])
    order = labels.argsort()
    assert torch.equal(images[order], pipe(jpegs)) and labels[order].tolist() == list(range(8))


def test_gzipped_shards_stream_like_webdataset_reads_them(ref_shards, tmp_path):
    import gzip

    _, paths = ref_shards
    gz = []
    for p in paths[:2]:
        target = tmp_path / (os.path.basename(p) + ".gz")
        with open(p, "rb") as f, gzip.open(target, "wb") as out:
            out.write(f.read())
        gz.append(str(target))
    ds = fastloader.WebDataset(gz, shard_shuffle=False, chunk_size=4096)
    assert not ds.indexed
    with warnings.catch_warnings(record=True) as caught:  # each file closed, not left to gc
        warnings.simplefilter("always", ResourceWarning)
        assert list(ds) == read_with_webdataset(gz)
        gc.collect()
    assert [str(w.message) for w in caught if issubclass(w.category, ResourceWarning)] == []
    with open(gz[1], "r+b") as f:  # a cut-off gzip stream is damage, not a crash
        f.truncate(os.path.getsize(gz[1]) // 2)
    with pytest.raises(fastloader.ShardError, match="read failed"):
        list(fastloader.WebDataset(gz, shard_shuffle=False))
    got = list(fastloader.WebDataset(gz, shard_shuffle=False, on_error="skip"))
    assert 50 < len(got) < 100


def test_gzip_is_known_by_its_bytes_in_any_stream_as_webdataset_knows_it(ref_shards, tmp_path):
    import gzip

    _, paths = ref_shards
    with open(paths[0], "rb") as f:
        plain = f.read()
    gz = tmp_path / "one.tar.gz"
    gz.write_bytes(gzip.compress(plain))
    fsspec.filesystem("memory").pipe("/gz-by-bytes/one.tar", gzip.compress(plain))
    (tmp_path / "plain-named.tar.gz").write_bytes(plain)  # named .gz, but a plain tar
    want = without_url(read_with_webdataset(paths[0]))
    for url in [f"pipe:cat {gz}", f"pipe:cat {gz} | cat", "memory://gz-by-bytes/one.tar",
                str(tmp_path / "plain-named.tar.gz")]:
        assert without_url(fastloader.WebDataset(url, shard_shuffle=False, allow_pipe=True)) == want, url
    assert without_url(read_with_webdataset(f"pipe:cat {gz} | cat")) == want


def test_a_local_gzip_shard_with_a_plain_name_is_named_as_such(ref_shards, tmp_path):
    import gzip

    _, paths = ref_shards
    with open(paths[0], "rb") as f:
        (tmp_path / "packed.tar").write_bytes(gzip.compress(f.read()))
    with pytest.raises(fastloader.ShardError, match=r"packed\.tar.*gzip-compressed.*name it \.tar\.gz"):
        list(fastloader.WebDataset(str(tmp_path / "packed.tar")))


@pytest.mark.parametrize("gzipped", [False, True])
def test_a_pipe_commands_exit_status_counts_once_its_output_has_ended(ref_shards, tmp_path, gzipped):
    import gzip

    _, paths = ref_shards
    shard = paths[0]
    if gzipped:
        shard = str(tmp_path / "s.tar.gz")
        with open(paths[0], "rb") as f, open(shard, "wb") as out:
            out.write(gzip.compress(f.read()))
    # The command closes its output, then fails: still running when the reader sees the
    # end, it must be waited for, not killed and forgotten.
    url = f"pipe:cat {shard}; exec 1>&-; sleep 0.3; exit 4"
    with pytest.raises(fastloader.ShardError, match="exited with status 4"):
        list(fastloader.WebDataset(url, allow_pipe=True))
    # the reader stops at the archive's end marker, before the output's end (zeros past a
    # full pipe): the rest is drained and the status read, not killed and lost
    url = f"pipe:cat {shard}; head -c 1500000 /dev/zero; exit 5"
    with pytest.raises(fastloader.ShardError, match="exited with status 5"):
        list(fastloader.WebDataset(url, allow_pipe=True, chunk_size=4096))
    # stopping early kills the command, which is no error
    early = fastloader.WebDataset(f"pipe:cat {shard}; exec sleep 30", allow_pipe=True, chunk_size=4096)
    started = time.monotonic()
    it = iter(early)
    first = next(it)
    it.close()  # raises if the kill were taken for the command's failure
    assert time.monotonic() - started < 10
    assert first["__key__"] == read_with_webdataset(paths[0])[0]["__key__"]


def test_index_rebuilt_for_another_member_limit_and_after_a_torn_write(tmp_path):
    paths = write_with_webdataset(tmp_path, make_samples(20, seed=6), per_shard=100)
    small = fastloader.WebDataset(paths, max_member_size=1000, on_error="skip", require=("bin",))
    got_small = list(small)
    assert small.stats()["failures"] > 0 and len(got_small) < 20
    # not the cached verdict of the small limit
    assert len(list(fastloader.WebDataset(paths, require=("bin",)))) == 20
    open(paths[0] + _index.INDEX_SUFFIX, "wb").close()  # an empty (torn) index file
    assert len(list(fastloader.WebDataset(paths))) == 20


@pytest.fixture(scope="module")
def large_shards(tmp_path_factory):
    """Samples of 40-200 KB: read with pread, sent to the main process by file offset."""
    samples = make_samples(90, seed=3, prefix="big")
    for i, s in enumerate(samples):
        s["bin"] = os.urandom(40_000 + 1789 * i)
    return samples, write_with_webdataset(tmp_path_factory.mktemp("large"), samples, per_shard=30)


@pytest.mark.parametrize("shuffle", [False, True])
def test_large_samples_arrive_whole_through_process_workers(large_shards, shuffle):
    samples, paths = large_shards
    loader = fastloader.DataLoader(fastloader.WebDataset(paths, shuffle=shuffle, seed=4), batch_size=8,
                                   num_workers=2, collate_fn=lambda b: b)
    it = iter(loader)
    batches = [next(it)]
    # the members crossed by file offset: the main side holds the worker's shard fds
    assert any(segments._files for segments in it._pool.segments)
    got = sorted((s for batch in batches + list(it) for s in batch), key=lambda s: s["__key__"])
    assert got == read_with_webdataset(paths)
    assert all(type(s["bin"]) is bytes for s in got)


def test_a_large_sample_shard_cut_short_while_read_is_a_clear_error(tmp_path):
    with fastloader.ShardWriter(str(tmp_path / "cut-%d.tar"), maxcount=1000) as w:  # 10 MB, read MBs at a time
        for i in range(100):
            w.write({"__key__": f"{i:04d}", "bin": os.urandom(100_000)})
    (path,) = w.shards
    it = iter(fastloader.WebDataset([path]))
    next(it)
    os.truncate(path, os.path.getsize(path) // 2)  # under the open reader (a mapping would SIGBUS)
    with pytest.raises(fastloader.ShardError, match="shorter than its index") as err:
        list(it)
    assert err.value.url == path and err.value.offset > 0


def test_a_failing_first_read_is_a_shard_error(ref_shards, monkeypatch):
    """The first bytes are read to tell gzip: a network error there is the shard's
    failure, named, and skipped with on_error="skip" like any read error."""
    from fastloader.shards import urls

    class Broken:
        def readinto(self, b):
            raise ConnectionResetError("connection reset by peer")

        def close(self):
            pass

    _, paths = ref_shards
    real = urls._open_raw
    monkeypatch.setattr(urls, "_open_raw", lambda url, allow: Broken() if url.endswith("broken.tar") else real(url, allow))
    fs = fsspec.filesystem("memory")
    with open(paths[0], "rb") as f:
        fs.pipe("/first-read/good.tar", f.read())
    with pytest.raises(fastloader.ShardError, match="read failed: connection reset") as e:
        list(fastloader.WebDataset("memory://first-read/broken.tar"))
    assert e.value.url == "memory://first-read/broken.tar"
    ds = fastloader.WebDataset(["memory://first-read/broken.tar", "memory://first-read/good.tar"],
                               shard_shuffle=False, on_error="skip")
    assert len(list(ds)) == 50 and ds.stats()["failures"] == 1
