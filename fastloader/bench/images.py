"""Image pipeline benchmark: decode + RandomResizedCrop(224) + flip + normalize to a float
batch, three ways in one run:

(a) the torchvision-equivalent PIL pipeline (PIL decode, PIL crop + bilinear resize, flip,
    ToTensor, Normalize, stack), one process per core, like DataLoader workers;
(b) fastloader's fused ImagePipeline, one call per batch, num_threads = cores;
(c) bare full-resolution libjpeg-turbo decode (the usual ceiling), one thread per core;
(d) libjpeg-turbo decode at 1/8 scale: little more than entropy decoding, the part of a
    decode no crop or scale can skip, so a floor for any pipeline on libjpeg-turbo's
    entropy decoder.
(c) and (d) run libjpeg-turbo alone: fastloader's own entropy decoder (csrc/jpeg/huffman.h),
which (b) and fastloader.decode_jpeg use, is switched off for them; (c') is (c) with it.

(b) uses the accurate IDCT (the pipeline's default, as PIL); (b') the fast integer one;
(b'') decodes to RGB before resizing, as PIL does (fast_color=False: within a level of PIL).
Prints images/s, images/s per core and the ratios to (a) and (c); medians of interleaved repeats.
"""
from __future__ import annotations

import io
import multiprocessing as mp
import random
import statistics
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass

import numpy as np
import torch

from fastloader.vision import RandomResizedCrop

MEAN = (0.485, 0.456, 0.406)
STD = (0.229, 0.224, 0.225)
SIZE = 224

_WORKER_IMAGES: list[bytes] = []


# ---- (a) the torchvision recipe on PIL, written out (torchvision cannot be installed here)
def pil_sample(data: bytes, rng: random.Random, mean: torch.Tensor, std: torch.Tensor) -> torch.Tensor:
    from PIL import Image

    img = Image.open(io.BytesIO(data)).convert("RGB")
    top, left, h, w = RandomResizedCrop.get_params(img.height, img.width, (0.08, 1.0), (3 / 4, 4 / 3), rng)
    img = img.crop((left, top, left + w, top + h)).resize((SIZE, SIZE), Image.Resampling.BILINEAR)
    if rng.random() < 0.5:
        img = img.transpose(Image.Transpose.FLIP_LEFT_RIGHT)
    t = torch.from_numpy(np.array(img, np.uint8, copy=True)).view(SIZE, SIZE, 3)
    t = t.permute(2, 0, 1).contiguous().to(torch.float32).div(255)
    return t.sub_(mean).div_(std)


def _pil_batches(lo: int, hi: int, batch_size: int = 64) -> int:
    torch.set_num_threads(1)
    rng = random.Random(lo)
    mean, std = torch.tensor(MEAN).view(-1, 1, 1), torch.tensor(STD).view(-1, 1, 1)
    done = 0
    for start in range(lo, hi, batch_size):
        chunk = _WORKER_IMAGES[start : min(hi, start + batch_size)]
        torch.stack([pil_sample(d, rng, mean, std) for d in chunk])
        done += len(chunk)
    return done


def run_pil(images: list[bytes], cores: int) -> float:
    global _WORKER_IMAGES
    _WORKER_IMAGES = images
    n = len(images)
    bounds = [(n * i // cores, n * (i + 1) // cores) for i in range(cores)]
    if cores == 1:
        t = time.perf_counter()
        _pil_batches(0, n)
        return n / (time.perf_counter() - t)
    with mp.get_context("fork").Pool(cores) as pool:
        pool.starmap(_pil_batches, [(0, 1)] * cores)  # warm the workers
        t = time.perf_counter()
        pool.starmap(_pil_batches, bounds)
        return n / (time.perf_counter() - t)


# ---- (b) fastloader

def make_pipeline(threads: int, **options):
    from fastloader.vision import ImagePipeline, Normalize, RandomHorizontalFlip, ToDtype

    return ImagePipeline(
        [RandomResizedCrop(SIZE), RandomHorizontalFlip(), ToDtype(torch.float32, scale=True), Normalize(MEAN, STD)],
        num_threads=threads,
        generator=torch.Generator().manual_seed(0),
        **options,
    )


def run_fastloader(images: list[bytes], cores: int, batch_size: int = 128, **options) -> float:
    pipeline = make_pipeline(cores, **options)
    pipeline(images[:batch_size])  # warm the threads and buffers
    t = time.perf_counter()
    for start in range(0, len(images), batch_size):
        pipeline(images[start : start + batch_size])
    return len(images) / (time.perf_counter() - t)


# ---- (c) bare full decode

def run_bare_decode(images: list[bytes], cores: int, eighths: int = 8, own_entropy: bool = False) -> float:
    from fastloader import _C

    def work(chunk: list[bytes]) -> None:
        for d in chunk:
            _C.decode_jpeg(d, 0, eighths, False, 1 << 40, 1 << 30)

    chunks = [images[i::cores] for i in range(cores)]
    _C._use_own_entropy_decoder(own_entropy)
    try:
        with ThreadPoolExecutor(cores) as pool:
            list(pool.map(work, [c[:8] for c in chunks]))
            t = time.perf_counter()
            list(pool.map(work, chunks))
            return len(images) / (time.perf_counter() - t)
    finally:
        _C._use_own_entropy_decoder(True)


@dataclass
class Row:
    name: str
    cores: int
    rates: list[float]

    @property
    def median(self) -> float:
        return statistics.median(self.rates)


def run(n: int = 2000, cores_list: tuple[int, ...] = (1, 2), repeats: int = 3, printer=print,
        restart_blocks: int = 0) -> list[Row]:
    from .datasets import imagenet_like

    paths = imagenet_like(n, restart_blocks=restart_blocks)
    images = [p.read_bytes() for p in paths]
    restarts = f", a restart marker every {restart_blocks} MCUs" if restart_blocks else ""
    printer(f"dataset: {n} JPEGs, mean {np.mean([len(b) for b in images]) / 1024:.0f} KiB, "
            f"~500x375 q90 4:2:0{restarts}, from the photos bundled with scikit-image/scikit-learn")
    printer(f"task: decode + RandomResizedCrop({SIZE}) + flip + normalize -> float32 NCHW batch; "
            f"median of {repeats} runs")
    rows = []
    runners = (
        ("(a) PIL/torchvision recipe", run_pil),
        ("(b) fastloader ImagePipeline", run_fastloader),
        ("(b') same, fast IDCT", lambda imgs, cores: run_fastloader(imgs, cores, fast_idct=True)),
        ("(b'') same, fast_color=False", lambda imgs, cores: run_fastloader(imgs, cores, fast_color=False)),
        ("(c) bare libjpeg-turbo decode", run_bare_decode),
        ("(c') same, our entropy decoder", lambda imgs, cores: run_bare_decode(imgs, cores, own_entropy=True)),
        ("(d) 1/8-scale decode (floor)", lambda imgs, cores: run_bare_decode(imgs, cores, eighths=1)),
    )
    for cores in cores_list:
        group = [Row(name, cores, []) for name, _ in runners]
        for _ in range(repeats):  # interleaved, so a noisy stretch hits every pipeline alike
            for row, (_, fn) in zip(group, runners):
                row.rates.append(fn(images, cores))
        rows += group
    printer("")
    printer(f"{'pipeline':32s} {'cores':>5s} {'img/s':>8s} {'img/s/core':>10s} {'vs (a)':>7s} {'vs (c)':>7s}")
    for cores in cores_list:
        group = {r.name.split()[0]: r for r in rows if r.cores == cores}
        for r in (x for x in rows if x.cores == cores):
            printer(f"{r.name:32s} {cores:5d} {r.median:8.0f} {r.median / cores:10.0f} "
                    f"{r.median / group['(a)'].median:6.2f}x {r.median / group['(c)'].median:6.2f}x")
    return rows


def main(argv: list[str] | None = None) -> None:
    from ..cli import main as cli_main

    cli_main(["bench", "images", *(sys.argv[1:] if argv is None else argv)])


if __name__ == "__main__":
    main()
