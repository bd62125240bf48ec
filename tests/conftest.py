"""Shared fixtures: real photographs bundled with scikit-image / scikit-learn, encoded as a
varied set of JPEGs (sizes, qualities, subsamplings, progressive, grayscale, restart
intervals, CMYK and YCCK, EXIF orientations)."""
from __future__ import annotations

import numpy as np
import pytest
from PIL import Image

from _images import JpegCase, encode_jpeg, encode_ycck_jpeg, with_orientation
from fastloader.bench.datasets import bundled_photos


@pytest.fixture(scope="session")
def photos() -> dict[str, np.ndarray]:
    return bundled_photos()


@pytest.fixture(scope="session")
def jpeg_cases(photos) -> list[JpegCase]:
    rng = np.random.default_rng(1234)
    names = sorted(photos)
    cases: list[JpegCase] = []

    def crop(name: str, h: int, w: int) -> Image.Image:
        src = photos[name]
        h, w = min(h, src.shape[0]), min(w, src.shape[1])
        y = int(rng.integers(0, src.shape[0] - h + 1))
        x = int(rng.integers(0, src.shape[1] - w + 1))
        return Image.fromarray(src[y : y + h, x : x + w])

    sizes = [(375, 500), (500, 375), (333, 457), (17, 33), (1, 1), (8, 8), (9, 15), (64, 48), (240, 320)]
    for i, (h, w) in enumerate(sizes):
        for sub in (0, 1, 2):
            name = names[(i + sub) % len(names)]
            cases.append(JpegCase(f"{name}-{h}x{w}-q90-sub{sub}", encode_jpeg(crop(name, h, w), quality=90, subsampling=sub)))
    for q in (30, 75, 95, 100):
        cases.append(JpegCase(f"q{q}", encode_jpeg(crop(names[q % len(names)], 300, 400), quality=q)))
    for sub in (0, 2):
        cases.append(JpegCase(f"progressive-sub{sub}", encode_jpeg(crop(names[1], 375, 500), quality=85, progressive=True, subsampling=sub)))
    cases.append(JpegCase("progressive-odd", encode_jpeg(crop(names[2], 123, 77), progressive=True)))
    cases.append(JpegCase("gray", encode_jpeg(crop(names[3], 300, 420).convert("L"), quality=90)))
    cases.append(JpegCase("gray-progressive", encode_jpeg(crop(names[4], 211, 300).convert("L"), progressive=True)))
    cases.append(JpegCase("restart-blocks", encode_jpeg(crop(names[5], 375, 500), quality=90, restart_marker_blocks=3)))
    cases.append(JpegCase("restart-rows", encode_jpeg(crop(names[6], 301, 499), quality=90, restart_marker_rows=1, subsampling=1)))
    cases.append(JpegCase("cmyk", encode_jpeg(crop(names[7], 200, 300).convert("CMYK"), quality=90)))
    # YCCK (Adobe transform 2), with a real black channel (PIL's convert("CMYK") leaves K at 0)
    for sub in (0, 2):
        rgb = np.asarray(crop(names[(8 + sub) % len(names)], 201, 307), dtype=np.int16)
        k = 255 - rgb.max(axis=2, keepdims=True)
        cmyk = np.concatenate([255 - rgb - k, k], axis=2).astype(np.uint8)
        cases.append(JpegCase(f"cmyk-ycck-sub{sub}", encode_ycck_jpeg(cmyk, quality=90, subsampling=sub)))
    for o in range(1, 9):
        cases.append(JpegCase(f"exif-{o}", with_orientation(crop(names[o % len(names)], 150, 230), o, quality=90)))
    return cases
