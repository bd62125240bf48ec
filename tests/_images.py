"""Test helpers for images: JPEG encoding with PIL, the PIL reference decode, PSNR, and a
dataset of encoded images."""
from __future__ import annotations

import io
from dataclasses import dataclass

import numpy as np
import torch
from PIL import Image


@dataclass(frozen=True)
class JpegCase:
    name: str
    data: bytes


def encode_jpeg(img: Image.Image, **options) -> bytes:
    buf = io.BytesIO()
    img.save(buf, "JPEG", **options)
    return buf.getvalue()


def with_orientation(img: Image.Image, orientation: int, **options) -> bytes:
    exif = Image.Exif()
    exif[0x0112] = orientation
    return encode_jpeg(img, exif=exif.tobytes(), **options)


def pil_decode(data: bytes, mode: str = "RGB") -> np.ndarray:
    with Image.open(io.BytesIO(data)) as img:
        arr = np.asarray(img.convert(mode))
    return arr.reshape(arr.shape[0], arr.shape[1], -1)


def psnr(a: np.ndarray, b: np.ndarray) -> float:
    mse = np.mean((a.astype(np.float64) - b.astype(np.float64)) ** 2)
    return float("inf") if mse == 0 else 10 * np.log10(255.0**2 / mse)


class EncodedImages(torch.utils.data.Dataset):
    """Encoded image bytes as a map-style dataset (decoding happens in the collate)."""

    def __init__(self, datas):
        self.datas = datas

    def __len__(self):
        return len(self.datas)

    def __getitem__(self, i):
        return self.datas[i]
