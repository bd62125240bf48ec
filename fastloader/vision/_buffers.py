"""Turns the byte containers users hand us into buffers the extension can read."""
from __future__ import annotations

from typing import Any

import numpy as np
import torch

from ..errors import DecodeError


def as_byte_buffer(data: Any, *, index: int | None = None, key: object = None) -> Any:
    """Returns `data` as an object exposing a 1-D byte buffer, without copying.

    Accepts bytes, bytearray, memoryview, a 1-D uint8 numpy array or a 1-D uint8 CPU tensor.
    """
    if isinstance(data, (bytes, bytearray)):
        return data
    if isinstance(data, memoryview):
        if not data.contiguous:
            raise DecodeError("memoryview must be contiguous", index=index, key=key)
        return data.cast("B") if data.format != "B" or data.ndim != 1 else data
    if isinstance(data, torch.Tensor):
        if data.dtype != torch.uint8 or data.dim() != 1 or data.device.type != "cpu":
            raise DecodeError(
                f"expected a 1-D uint8 CPU tensor of encoded bytes, got a {data.dtype} tensor "
                f"of shape {tuple(data.shape)} on {data.device}",
                index=index,
                key=key,
            )
        return data.contiguous().numpy()
    if isinstance(data, np.ndarray):
        if data.dtype != np.uint8 or data.ndim != 1:
            raise DecodeError(
                f"expected a 1-D uint8 array of encoded bytes, got {data.dtype} of shape {data.shape}",
                index=index,
                key=key,
            )
        return np.ascontiguousarray(data)
    raise DecodeError(
        f"expected encoded image bytes (bytes, memoryview, uint8 array or tensor), got {type(data).__name__}",
        index=index,
        key=key,
    )


def is_jpeg(buf: Any) -> bool:
    head = bytes(memoryview(buf)[:3])
    return head == b"\xff\xd8\xff"
