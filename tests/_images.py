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


_TJPF_CMYK = 11  # turbojpeg.h


def encode_ycck_jpeg(cmyk: np.ndarray, quality: int = 90, subsampling: int = 2) -> bytes:
    """An H x W x 4 CMYK array as a YCCK JPEG (Adobe transform 2), which PIL cannot write:
    the TurboJPEG API compresses CMYK pixels as YCCK. subsampling: TJSAMP_* (2 = 4:2:0)."""
    import ctypes
    import ctypes.util

    name = ctypes.util.find_library("turbojpeg")
    if name is None:
        raise RuntimeError("libturbojpeg not found (apt install libturbojpeg0; .ci/setup.sh does)")
    tj = ctypes.CDLL(name)
    tj.tjInitCompress.restype = ctypes.c_void_p
    tj.tjGetErrorStr2.restype = ctypes.c_char_p
    tj.tjCompress2.argtypes = [ctypes.c_void_p, ctypes.c_void_p, ctypes.c_int, ctypes.c_int, ctypes.c_int,
                               ctypes.c_int, ctypes.POINTER(ctypes.c_void_p), ctypes.POINTER(ctypes.c_ulong),
                               ctypes.c_int, ctypes.c_int, ctypes.c_int]
    tj.tjFree.argtypes = [ctypes.c_void_p]
    tj.tjDestroy.argtypes = [ctypes.c_void_p]
    tj.tjGetErrorStr2.argtypes = [ctypes.c_void_p]
    src = np.ascontiguousarray(cmyk, dtype=np.uint8)
    h, w, c = src.shape
    assert c == 4
    handle = tj.tjInitCompress()
    out, size = ctypes.c_void_p(), ctypes.c_ulong(0)
    try:
        if tj.tjCompress2(handle, src.ctypes.data, w, w * 4, h, _TJPF_CMYK, ctypes.byref(out), ctypes.byref(size),
                          subsampling, quality, 0) != 0:
            raise RuntimeError(tj.tjGetErrorStr2(handle).decode())
        return ctypes.string_at(out, size.value)
    finally:
        if out:
            tj.tjFree(out)
        tj.tjDestroy(handle)
