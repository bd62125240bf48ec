"""The benchmark harness runs end to end on a tiny dataset and reports all three pipelines."""
import torch

from fastloader.bench import images
from fastloader.bench.datasets import imagenet_like
from fastloader.cli import main


def test_dataset_is_imagenet_like(tmp_path, monkeypatch):
    monkeypatch.setenv("FASTLOADER_CACHE", str(tmp_path))
    paths = imagenet_like(12, seed=3)
    from PIL import Image

    for p in paths:
        with Image.open(p) as img:
            assert img.format == "JPEG" and img.mode == "RGB"
            assert 300 < max(img.size) < 600 and 250 < min(img.size) < 450
    assert imagenet_like(12, seed=3) == paths  # cached


def test_restart_marker_variant_has_the_same_pixels(tmp_path, monkeypatch):
    from fastloader import decode_jpeg

    monkeypatch.setenv("FASTLOADER_CACHE", str(tmp_path))
    plain, marked = imagenet_like(6, seed=3), imagenet_like(6, seed=3, restart_blocks=4)
    for p, m in zip(plain, marked):
        data = m.read_bytes()
        assert data.count(b"\xff\xdd") == 1 and b"\xff\xd0" in data  # DRI, then RST0...
        assert torch.equal(decode_jpeg(p.read_bytes()), decode_jpeg(data))


def test_bench_reports_ratios(tmp_path, monkeypatch, capsys):
    monkeypatch.setenv("FASTLOADER_CACHE", str(tmp_path))
    threads = torch.get_num_threads()
    main(["bench", "images", "--n", "16", "--cores", "1", "--repeats", "1"])
    torch.set_num_threads(threads)
    out = capsys.readouterr().out
    for name in ("(a) PIL", "(b) fastloader", "(b'') same, fast_color=False", "(c) bare"):
        assert name in out
    assert "vs (a)" in out and "vs (c)" in out
    main(["bench", "images", "--n", "16", "--cores", "1", "--repeats", "1", "--restart-blocks", "4"])
    torch.set_num_threads(threads)
    assert "a restart marker every 4 MCUs" in capsys.readouterr().out


def test_pil_baseline_matches_fastloader_on_deterministic_ops(tmp_path, monkeypatch):
    """The baseline does the same work: with the crop forced to the whole image and no
    flip, PIL's batch and fastloader's agree closely."""
    import random

    from fastloader.vision import ImagePipeline, Normalize, Resize, ToDtype

    monkeypatch.setenv("FASTLOADER_CACHE", str(tmp_path))
    datas = [p.read_bytes() for p in imagenet_like(4, seed=5)]
    mean, std = torch.tensor(images.MEAN).view(-1, 1, 1), torch.tensor(images.STD).view(-1, 1, 1)
    monkeypatch.setattr(images.RandomResizedCrop, "get_params",
                        staticmethod(lambda h, w, scale, ratio, rng: (0, 0, h, w)))
    rng = random.Random(0)
    rng.random = lambda: 1.0  # never flip
    ref = torch.stack([images.pil_sample(d, rng, mean, std) for d in datas])
    ours = ImagePipeline([Resize((224, 224)), ToDtype(torch.float32, scale=True), Normalize(images.MEAN, images.STD)],
                         dct_scaling=False, fast_idct=False, fast_color=False)(datas)
    assert (ours - ref).abs().max() <= 1.01 / 255 / min(images.STD)
