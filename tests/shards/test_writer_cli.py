"""ShardWriter, `fastloader convert` and `fastloader inspect`."""
from __future__ import annotations

import io
import json
import os
import tarfile

import numpy as np
import pytest
import torch
from PIL import Image

import fastloader
from fastloader.cli import main
from fastloader.shards.convert import convert

from _shard_data import make_samples, read_with_webdataset, write_with_webdataset


def test_shard_writer_splits_by_count_and_size(tmp_path):
    samples = make_samples(50, seed=2)
    with fastloader.ShardWriter(str(tmp_path / "c-%03d.tar"), maxcount=20) as w:
        for s in samples:
            w.write(s)
    assert [len(read_with_webdataset(p)) for p in w.shards] == [20, 20, 10]
    with fastloader.ShardWriter(str(tmp_path / "s-%03d.tar"), maxsize=20_000) as w:
        for s in samples:
            w.write(s)
    sizes = [os.path.getsize(p) for p in w.shards]
    assert len(sizes) > 3 and max(sizes) <= 20_000 + 1024  # + the end-of-archive blocks
    assert [s["__key__"] for s in read_with_webdataset(w.shards)] == [s["__key__"] for s in samples]


def test_values_are_encoded_as_webdataset_expects(tmp_path):
    arr = np.arange(12, dtype=np.float32).reshape(3, 4)
    with fastloader.ShardWriter(str(tmp_path / "v-%d.tar")) as w:
        w.write({"__key__": "a", "cls": 3, "txt": "h\u00e9", "json": {"x": [1]}, "npy": arr, "bin": b"\x00\x01",
                 "score": np.float32(0.1), "seg.NPY": arr, "_meta": "left out, as webdataset's writer does"})
    (got,) = read_with_webdataset(w.shards)
    assert got["cls"] == b"3" and got["txt"] == "h\u00e9".encode() and json.loads(got["json"]) == {"x": [1]}
    assert np.array_equal(np.load(io.BytesIO(got["npy"])), arr) and got["bin"] == b"\x00\x01"
    assert got["score"] == b"0.1" and np.array_equal(np.load(io.BytesIO(got["seg.npy"])), arr)
    assert "_meta" not in got and "__url__" in got


def test_writer_errors(tmp_path):
    with pytest.raises(ValueError, match="%-format"):
        fastloader.ShardWriter(str(tmp_path / "no-pattern.tar"))
    w = fastloader.ShardWriter(str(tmp_path / "e-%d.tar"))
    with pytest.raises(ValueError, match="dot"):
        w.write({"__key__": "a.b", "txt": "x"})
    with pytest.raises(ValueError, match="skip it as metadata"):
        w.write({"__key__": "__dir__/a", "txt": "x"})
    with pytest.raises(ValueError, match="NUL"):
        w.write({"__key__": "x\0y", "txt": "x"})
    with pytest.raises(ValueError, match="differ only in case"):
        w.write({"__key__": "x", "jpg": b"1", "JPG": b"2"})
    with pytest.raises(TypeError, match="cannot write a ndarray as .jpg"):
        w.write({"__key__": "a", "jpg": np.zeros(3)})
    with pytest.raises(ValueError, match="__key__"):
        w.write({"txt": "x"})
    w.close()
    with pytest.raises(RuntimeError):
        with fastloader.ShardWriter(str(tmp_path / "f-%d.tar")) as w:
            w.write({"__key__": "a", "txt": "x"})
            raise RuntimeError("stop")
    assert not [f for f in os.listdir(tmp_path) if f.startswith("f-")]  # no half-written shard


@pytest.fixture
def image_folder(tmp_path, photos):
    root = tmp_path / "imgs"
    files = {}
    for c, name in enumerate(sorted(photos)[:3]):
        os.makedirs(root / f"class{c}")
        for i in range(3 + c):
            img = Image.fromarray(photos[name][i * 10:i * 10 + 60, :80])
            ext = "png" if i == 0 else "jpeg" if i == 1 else "jpg"
            path = root / f"class{c}" / f"img.{i}.{ext}"
            img.save(path)
            files[str(path)] = c
    (root / "class0" / "notes.txt").write_text("not an image")
    return root, files


def test_convert_image_folder(image_folder, tmp_path, capsys):
    root, files = image_folder
    assert main(["convert", str(root), str(tmp_path / "out" / "train-%04d.tar"), "--maxcount", "4", "--quiet"]) == 0
    assert "wrote 12 samples" in capsys.readouterr().out
    got = read_with_webdataset(sorted(str(p) for p in (tmp_path / "out").glob("*.tar")))
    assert len(got) == len(files) == 12
    originals = {}
    for path, c in files.items():
        with open(path, "rb") as f:
            originals[f.read()] = c
    for s in got:
        (ext,) = [e for e in s if e in ("jpg", "png")]
        assert originals[s[ext]] == int(s["cls"])
    assert json.load(open(tmp_path / "out" / "classes.json")) == ["class0", "class1", "class2"]


def test_convert_adds_restart_markers_losslessly(image_folder, tmp_path, capsys):
    from fastloader import decode_jpeg

    root, files = image_folder
    damaged = root / "class1" / "damaged.jpg"
    good = open(root / "class1" / "img.1.jpeg", "rb").read()
    damaged.write_bytes(good[: len(good) // 2])  # cut short: cannot be rewritten
    files[str(damaged)] = 1
    out = tmp_path / "r" / "t-%02d.tar"
    assert main(["convert", str(root), str(out), "--quiet", "--restart-blocks", "2"]) == 0
    printed = capsys.readouterr().out
    assert "wrote 13 samples" in printed
    assert f"1 JPEGs went in as they were, without restart markers, since they could not be rewritten: {damaged}" in printed
    got = read_with_webdataset(sorted(str(p) for p in (tmp_path / "r").glob("*.tar")))
    originals = {open(p, "rb").read(): p for p in files}
    marked = 0
    for s in got:
        (ext,) = [e for e in s if e in ("jpg", "png")]
        if s[ext] in originals:  # PNGs, and the damaged JPEG, as they were
            assert ext == "png" or originals[s[ext]] == str(damaged)
            continue
        assert s[ext].count(b"\xff\xdd") == 1  # a restart interval (DRI)
        (source,) = [p for p, c in files.items() if p.endswith((".jpg", ".jpeg")) and p != str(damaged)
                     and torch.equal(decode_jpeg(open(p, "rb").read()), decode_jpeg(s[ext]))]
        assert files[source] == int(s["cls"])
        marked += 1
    assert marked == sum(p.endswith((".jpg", ".jpeg")) for p in files) - 1  # all but the damaged one
    with pytest.raises(ValueError, match="restart_blocks must be an int in 0..65535"):
        convert(str(root), str(out), restart_blocks=-1)


def test_convert_shows_progress_unless_quiet(image_folder, tmp_path, capsys):
    root, _ = image_folder
    assert main(["convert", str(root), str(tmp_path / "p" / "t-%02d.tar")]) == 0
    captured = capsys.readouterr()
    assert "convert" in captured.err and "12/12" in captured.err  # tqdm's bar, on stderr
    assert "wrote 12 samples" in captured.out
    assert main(["convert", str(root), str(tmp_path / "q" / "t-%02d.tar"), "--quiet"]) == 0
    assert "12/12" not in capsys.readouterr().err


def test_convert_csv_and_jsonl(tmp_path):
    rows = [("good film", "pos"), ("bad, \"very\" bad", "neg"), ("meh\nmulti-line", "neu")]
    csv_path = tmp_path / "t.csv"
    csv_path.write_text("text,label\n" + "".join(f'"{t.replace(chr(34), chr(34) * 2)}",{lab}\n' for t, lab in rows))
    jsonl = tmp_path / "t.jsonl"
    jsonl.write_text("".join(json.dumps({"body": t, "y": i}) + "\n" for i, (t, _) in enumerate(rows)))
    assert main(["convert", str(csv_path), str(tmp_path / "a" / "t-%02d.tar"), "--no-shuffle", "--quiet"]) == 0
    got = read_with_webdataset(str(tmp_path / "a" / "t-00.tar"))
    assert [(s["txt"].decode(), int(s["cls"])) for s in got] == [(t, ["neg", "neu", "pos"].index(lab)) for t, lab in rows]
    assert main(["convert", str(jsonl), str(tmp_path / "b" / "t-%02d.tar"), "--text-field", "body",
                 "--label-field", "y", "--no-shuffle", "--quiet"]) == 0
    got = read_with_webdataset(str(tmp_path / "b" / "t-00.tar"))
    assert [(s["txt"].decode(), int(s["cls"])) for s in got] == [(t, i) for i, (t, _) in enumerate(rows)]
    assert not (tmp_path / "b" / "classes.json").exists()  # integer labels kept as they are


@pytest.mark.parametrize("name, content, message", [
    ("bad.jsonl", '{"text": "a", "label": 1}\n{oops\n'.encode(), "bad.jsonl:2"),
    ("c.csv", b"sentence,label\nx,1\n", "no column 'text'"),
    ("latin.csv", "text,label\ncaf\u00e9,1\n".encode("latin-1"), "latin.csv: not UTF-8 text"),
    ("array.json", b'[{"text": "a", "label": 1}]\n', "array.json:1: not a JSON object per line"),
    ("gone.csv", None, "gone.csv: no such file or directory"),
])
def test_convert_errors_name_the_file(tmp_path, capsys, name, content, message):
    if content is not None:
        (tmp_path / name).write_bytes(content)
    assert main(["convert", str(tmp_path / name), str(tmp_path / "o-%d.tar"), "--quiet"]) == 2
    assert message in capsys.readouterr().err
    assert not list(tmp_path.glob("o-*"))


def test_inspect_reports_counts_and_damage(tmp_path, capsys):
    paths = write_with_webdataset(tmp_path, make_samples(30), per_shard=10)
    assert main(["inspect", str(tmp_path / "ref-*.tar")]) == 0
    out = capsys.readouterr().out
    assert "3 shards, 30 samples" in out and "bin (30), cls (30), txt (30)" in out and "no damage" in out
    with open(paths[1], "r+b") as f:
        f.truncate(3000)
    assert main(["inspect", "--json", *paths]) == 1
    report = json.loads(capsys.readouterr().out)
    assert [r["samples"] for r in report][0::2] == [10, 10] and report[1]["samples"] < 10
    assert report[1]["damage"][0][1].startswith("truncated") and report[0]["keys"]["unique"] == 10
    with tarfile.open(paths[0]) as tf:  # sizes: the member data of each sample
        per_sample = {}
        for m in tf.getmembers():
            per_sample[m.name.split(".")[0]] = per_sample.get(m.name.split(".")[0], 0) + m.size
    sizes = list(per_sample.values())
    assert report[0]["sample_bytes"] == {"min": min(sizes), "mean": sum(sizes) / len(sizes), "max": max(sizes)}
    assert report[0]["data_bytes"] == sum(sizes)


def test_inspect_arguments(tmp_path, capsys):
    paths = write_with_webdataset(tmp_path, make_samples(20), per_shard=10)
    assert len(list(fastloader.WebDataset(paths))) == 20  # writes each shard's index beside it
    everything = sorted(str(p) for p in tmp_path.iterdir())  # what `inspect dir/*` passes
    assert len(everything) == 4 and main(["inspect", "--json", *everything]) == 0
    assert [r["url"] for r in json.loads(capsys.readouterr().out)] == paths
    assert main(["inspect", ""]) == 2 and "empty shard URL" in capsys.readouterr().err
    assert main(["inspect", f"pipe:cat {paths[0]}"]) == 2 and "--allow-pipe" in capsys.readouterr().err
    assert main(["inspect", "--allow-pipe", f"pipe:cat {paths[0]}"]) == 0
    assert "1 shards, 10 samples" in capsys.readouterr().out


def test_shard_benchmark_reads_the_same_samples_with_both(tmp_path, monkeypatch, capsys):
    from fastloader.bench import shards as bench

    monkeypatch.setenv("FASTLOADER_CACHE", str(tmp_path))
    monkeypatch.setenv("FASTLOADER_BENCH_SCALE", "0.005")  # 500 small samples
    rows = bench.run(repeats=1, sets=("small", "small-pipe"), workers=(1,))
    out = capsys.readouterr().out
    assert "wds samples/s" in out and "fl samples/s" in out
    assert [(r["set"], r["num_workers"]) for r in rows] == [("small", 0), ("small", 1), ("small-pipe", 0),
                                                           ("small-pipe", 1)]
    for r in rows:  # run() checks both read the same number of samples
        assert r["webdataset"]["samples"] == r["fastloader"]["samples"] == 500


def test_convert_refuses_an_empty_file(tmp_path, capsys):
    empty = tmp_path / "empty.jsonl"
    empty.write_text("")
    assert main(["convert", str(empty), str(tmp_path / "o-%d.tar"), "--quiet"]) == 2
    assert "no records" in capsys.readouterr().err
