"""Built-in benchmark data, cut from the real photographs that scikit-image and
scikit-learn bundle (no download), cached on disk after the first build."""
from __future__ import annotations

import io
import sys
from pathlib import Path

import numpy as np

from .._cache import cache_root

# Colour photographs shipped inside the scikit-image / scikit-learn wheels.
SKIMAGE_PHOTOS = ("astronaut", "chelsea", "coffee", "rocket", "hubble_deep_field", "retina",
                  "immunohistochemistry")
SKLEARN_PHOTOS = ("china.jpg", "flower.jpg")


def cache_dir() -> Path:
    return Path(cache_root())


def _progress(items: list, desc: str):
    try:
        from tqdm import tqdm
    except ImportError:
        print(desc, file=sys.stderr)
        return items
    return tqdm(items, desc=desc, unit="img", file=sys.stderr)


def bundled_photos() -> dict[str, np.ndarray]:
    """The bundled real colour photographs, as H x W x 3 uint8 arrays, by name."""
    import skimage.data
    from sklearn.datasets import load_sample_image

    photos: dict[str, np.ndarray] = {}
    for name in SKIMAGE_PHOTOS:
        try:
            img = np.asarray(getattr(skimage.data, name)())
        except Exception:  # absent from this scikit-image, or would need the network
            continue
        if img.ndim == 3 and img.shape[2] >= 3 and img.dtype == np.uint8:
            photos[name] = np.ascontiguousarray(img[..., :3])
    for name in SKLEARN_PHOTOS:
        photos[name.split(".")[0]] = np.ascontiguousarray(load_sample_image(name))
    return photos


def imagenet_like(n: int = 2000, *, seed: int = 0, quality: int = 90, restart_blocks: int = 0) -> list[Path]:
    """``n`` JPEGs around 500x375 (or 375x500), quality 90, 4:2:0, like ImageNet's: random
    crops of the bundled photos at varied scales, aspect ratios, flips and colour casts.
    With `restart_blocks`, the same images (the same pixels) with a restart marker every
    that many MCUs."""
    if not 0 <= restart_blocks <= 65535:
        raise ValueError(f"restart_blocks must be in 0..65535, got {restart_blocks}")
    restarts = f"_r{restart_blocks}" if restart_blocks else ""
    out = cache_dir() / f"imagenet_like_v1_n{n}_s{seed}_q{quality}{restarts}"
    paths = [out / f"{i:06d}.jpg" for i in range(n)]
    if (out / "DONE").exists():
        return paths
    from PIL import Image

    out.mkdir(parents=True, exist_ok=True)
    photos = list(bundled_photos().values())
    rng = np.random.default_rng(seed)
    for path in _progress(paths, f"building {n} benchmark JPEGs in {out}"):
        src = photos[rng.integers(len(photos))]
        h, w = src.shape[:2]
        frac = rng.uniform(0.35, 1.0)
        aspect = np.exp(rng.uniform(np.log(0.6), np.log(1.6)))
        ch = int(min(h, np.sqrt(frac * h * w / aspect)))
        cw = int(min(w, ch * aspect))
        y, x = rng.integers(0, h - ch + 1), rng.integers(0, w - cw + 1)
        crop = src[y : y + ch, x : x + cw].astype(np.float32)
        crop = np.clip(255.0 * (crop / 255.0) ** rng.uniform(0.8, 1.25) * rng.uniform(0.85, 1.15, 3), 0, 255)
        landscape = rng.random() < 0.75
        long_side, short_side = int(rng.normal(500, 25)), int(rng.normal(375, 25))
        size = (long_side, short_side) if landscape else (short_side, long_side)
        img = Image.fromarray(crop.astype(np.uint8)).resize(size, Image.Resampling.BICUBIC)
        if rng.random() < 0.5:
            img = img.transpose(Image.Transpose.FLIP_LEFT_RIGHT)
        buf = io.BytesIO()
        img.save(buf, "JPEG", quality=quality, **({"restart_marker_blocks": restart_blocks} if restart_blocks else {}))
        path.write_bytes(buf.getvalue())
    (out / "DONE").write_text(f"{n}\n")
    return paths
