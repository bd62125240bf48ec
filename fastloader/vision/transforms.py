"""Image ops with torchvision's names and parameters. On their own they only describe
what to do; :class:`fastloader.vision.ImagePipeline` fuses a list of them into one
compiled call per batch."""
from __future__ import annotations

import math
import numbers
import random
from collections.abc import Sequence
from dataclasses import dataclass

import torch


def _size_pair(size: int | Sequence[int], name: str) -> tuple[int, int]:
    """torchvision's size convention: an int means a square, a pair is (height, width)."""
    if isinstance(size, numbers.Integral):
        pair = (int(size), int(size))
    elif isinstance(size, Sequence) and len(size) in (1, 2):
        pair = (int(size[0]), int(size[-1]))
    else:
        raise ValueError(f"{name}: size must be an int or a (height, width) pair, got {size!r}")
    if min(pair) <= 0:
        raise ValueError(f"{name}: size must be positive, got {size!r}")
    return pair


def _floats(values: float | Sequence[float]) -> tuple[float, ...]:
    """One value per channel, or one for all (torchvision broadcasts a scalar)."""
    return (float(values),) if isinstance(values, numbers.Real) else tuple(float(v) for v in values)


_PIL_BILINEAR = 2  # PIL.Image.BILINEAR (Resampling.BILINEAR), which torchvision also takes


def _check_bilinear(interpolation: object, antialias: bool | None, name: str) -> None:
    mode = getattr(interpolation, "value", interpolation)  # torchvision's InterpolationMode
    bilinear = mode == _PIL_BILINEAR if isinstance(mode, numbers.Integral) else str(mode).lower() == "bilinear"
    if not bilinear:
        raise ValueError(f"{name}: only bilinear interpolation is fused, got {interpolation!r}")
    if antialias is False:
        raise ValueError(f"{name}: antialias=False is not supported (outputs are always antialiased)")


@dataclass(frozen=True)
class RandomResizedCrop:
    """A random crop of random area and aspect ratio, resized to ``size`` (torchvision's)."""

    size: int | Sequence[int]
    scale: tuple[float, float] = (0.08, 1.0)
    ratio: tuple[float, float] = (3.0 / 4.0, 4.0 / 3.0)
    interpolation: str = "bilinear"
    antialias: bool | None = True

    def __post_init__(self) -> None:
        object.__setattr__(self, "size", _size_pair(self.size, "RandomResizedCrop"))
        _check_bilinear(self.interpolation, self.antialias, "RandomResizedCrop")
        for name in ("scale", "ratio"):
            lo, hi = getattr(self, name)
            # a scale may start at 0 (an empty crop is redrawn); a ratio's log must exist
            low_ok = lo >= 0 if name == "scale" else lo > 0
            if not (low_ok and hi > 0 and math.isfinite(lo) and math.isfinite(hi)):
                raise ValueError(f"RandomResizedCrop: {name} must be positive, got {(lo, hi)}")
            if lo > hi:
                raise ValueError(f"RandomResizedCrop: {name} should be of kind (min, max), got {(lo, hi)}")

    @staticmethod
    def get_params(
        height: int, width: int, scale: tuple[float, float], ratio: tuple[float, float], rng: random.Random
    ) -> tuple[int, int, int, int]:
        """torchvision's box sampling, (top, left, height, width), in plain Python: the
        reference for the compiled sampler (which draws from its own per-sample streams)."""
        area = height * width
        log_ratio = (math.log(ratio[0]), math.log(ratio[1]))
        for _ in range(10):
            target_area = area * rng.uniform(scale[0], scale[1])
            aspect = math.exp(rng.uniform(*log_ratio))
            w = int(round(math.sqrt(target_area * aspect)))
            h = int(round(math.sqrt(target_area / aspect)))
            if 0 < w <= width and 0 < h <= height:
                return rng.randint(0, height - h), rng.randint(0, width - w), h, w
        in_ratio = width / height
        if in_ratio < min(ratio):
            w, h = width, int(round(width / min(ratio)))
        elif in_ratio > max(ratio):
            w, h = int(round(height * max(ratio))), height
        else:
            w, h = width, height
        return (height - h) // 2, (width - w) // 2, h, w


@dataclass(frozen=True)
class Resize:
    """Resize to (height, width), or the shorter side to ``size`` when it is an int."""

    size: int | Sequence[int]
    interpolation: str = "bilinear"
    max_size: int | None = None
    antialias: bool | None = True

    def __post_init__(self) -> None:
        _check_bilinear(self.interpolation, self.antialias, "Resize")
        if isinstance(self.size, Sequence) and len(self.size) == 1:
            object.__setattr__(self, "size", int(self.size[0]))
        if isinstance(self.size, numbers.Integral):
            object.__setattr__(self, "size", int(self.size))  # a numpy integer too
            if self.size <= 0:
                raise ValueError(f"Resize: size must be positive, got {self.size}")
        else:
            if self.max_size is not None:
                raise ValueError("Resize: max_size is only allowed when size is an int")
            object.__setattr__(self, "size", _size_pair(self.size, "Resize"))

    def output_size(self, height: int, width: int) -> tuple[int, int]:
        """torchvision's rule for the resized (height, width) of a height x width image."""
        if not isinstance(self.size, int):
            return self.size
        short, long = (width, height) if width <= height else (height, width)
        new_short, new_long = self.size, int(self.size * long / short)
        if self.max_size is not None:
            if self.max_size <= self.size:
                raise ValueError(f"Resize: max_size={self.max_size} must exceed size={self.size}")
            if new_long > self.max_size:
                new_short, new_long = int(self.max_size * new_short / new_long), self.max_size
        return (new_long, new_short) if width <= height else (new_short, new_long)


@dataclass(frozen=True)
class CenterCrop:
    """The central (height, width) crop, zero-padded where the image is smaller."""

    size: int | Sequence[int]

    def __post_init__(self) -> None:
        object.__setattr__(self, "size", _size_pair(self.size, "CenterCrop"))


@dataclass(frozen=True)
class RandomHorizontalFlip:
    """Mirror left-right with probability ``p``."""

    p: float = 0.5

    def __post_init__(self) -> None:
        if not 0.0 <= self.p <= 1.0:
            raise ValueError(f"RandomHorizontalFlip: p must be in [0, 1], got {self.p}")


@dataclass(frozen=True)
class Normalize:
    """(x - mean) / std per channel, on float outputs (as after ToDtype(float, scale=True))."""

    mean: float | Sequence[float]
    std: float | Sequence[float]
    inplace: bool = False  # torchvision's; the fused batch is always a new tensor

    def __post_init__(self) -> None:
        object.__setattr__(self, "mean", _floats(self.mean))
        object.__setattr__(self, "std", _floats(self.std))
        if any(s == 0 for s in self.std):
            raise ValueError(f"Normalize: std evaluated to zero, leading to division by zero ({self.std})")


@dataclass(frozen=True)
class ToDtype:
    """Output dtype: uint8, float32, float16 or bfloat16; ``scale=True`` maps 0..255 to 0..1."""

    dtype: torch.dtype
    scale: bool = False

    def __post_init__(self) -> None:
        if self.dtype not in (torch.uint8, torch.float32, torch.float16, torch.bfloat16):
            raise ValueError(f"ToDtype: dtype must be uint8, float32, float16 or bfloat16, got {self.dtype}")


Transform = RandomResizedCrop | Resize | CenterCrop | RandomHorizontalFlip | Normalize | ToDtype
