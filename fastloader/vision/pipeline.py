"""Fuses a list of image ops into one compiled call per batch."""
from __future__ import annotations

import warnings
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import torch

from .. import _C
from ..errors import DecodeError
from ._buffers import as_byte_buffer, is_jpeg
from ._output import OutputPool
from .decode import DEFAULT_MAX_PIXELS, MAX_SCANS, decode_with_pil, mode_code
from .transforms import CenterCrop, Normalize, RandomHorizontalFlip, RandomResizedCrop, Resize, ToDtype

LAYOUTS = {"NCHW": 0, "NHWC": 1}
ON_ERROR = ("raise", "skip")


@dataclass(frozen=True)
class _Plan:
    """What a list of ops amounts to: one geometry, a flip, a per-channel value table."""

    crop: RandomResizedCrop | None
    resize: Resize | None
    center: CenterCrop | None
    out_size: tuple[int, int]
    flip_p: float
    dtype: torch.dtype
    value_ops: tuple[ToDtype | Normalize, ...]


def _plan(transforms: Sequence[Any]) -> _Plan:
    crop = resize = center = None
    flip_p = 0.0
    dtype = torch.uint8
    value_ops: list[ToDtype | Normalize] = []
    for t in transforms:
        if isinstance(t, RandomResizedCrop):
            if crop or resize or center:
                raise ValueError("RandomResizedCrop cannot be fused after another crop or resize")
            crop = t
        elif isinstance(t, Resize):
            if crop or resize or center:
                raise ValueError("Resize can only come first among the geometry ops (Resize, then CenterCrop)")
            resize = t
        elif isinstance(t, CenterCrop):
            if crop or center:
                raise ValueError("CenterCrop cannot be fused after RandomResizedCrop or another CenterCrop")
            center = t
        elif isinstance(t, RandomHorizontalFlip):
            flip_p = _two_flips(flip_p, t.p)
        elif isinstance(t, ToDtype):
            if dtype.is_floating_point and t.dtype == torch.uint8:
                raise ValueError("ToDtype(torch.uint8) after a float conversion is not supported")
            dtype = t.dtype
            value_ops.append(t)
        elif isinstance(t, Normalize):
            if not dtype.is_floating_point:
                raise ValueError("Normalize needs a float input: put ToDtype(torch.float32, scale=True) before it")
            value_ops.append(t)
        else:
            raise TypeError(f"cannot fuse {type(t).__name__}; supported: RandomResizedCrop, Resize, "
                            "CenterCrop, RandomHorizontalFlip, Normalize, ToDtype")
    if crop is not None:
        out_size = crop.size
    elif center is not None:
        out_size = center.size
    elif resize is not None and not isinstance(resize.size, int):
        out_size = resize.size
    else:
        raise ValueError("the ops must fix the output size to batch: RandomResizedCrop, "
                         "CenterCrop, or Resize((height, width))")
    return _Plan(crop, resize, center, out_size, flip_p, dtype, tuple(value_ops))


def _two_flips(p: float, q: float) -> float:
    """Two independent flips leave the image mirrored when exactly one fires."""
    return p * (1 - q) + q * (1 - p)


def _encoded_bytes_array(images: Any) -> bool:
    """A 1-D byte array or tensor: one encoded image, not a batch (a 1-D object array of
    encoded images is one)."""
    dtype = getattr(images, "dtype", None)
    return getattr(images, "ndim", None) == 1 and str(dtype) in ("uint8", "int8", "torch.uint8", "torch.int8")


def _value_table(plan: _Plan, channels: int) -> torch.Tensor | None:
    """channels x 256 float32 table of what the ToDtype/Normalize ops make of each uint8
    value: the ops run on a tensor of the 256 values as torchvision's v2 functionals run
    them on an image, each in the dtype the values have at that point (float16 and
    bfloat16 results are float32 values exactly)."""
    if not plan.dtype.is_floating_point:
        return None
    values = torch.arange(256, dtype=torch.uint8).repeat(channels, 1)
    for op in plan.value_ops:
        if isinstance(op, ToDtype):
            values = _to_dtype(values, op)
        else:
            values = _normalize(values, op, channels)
    return values.float().contiguous()


def _to_dtype(values: torch.Tensor, op: ToDtype) -> torch.Tensor:
    """torchvision.transforms.v2.functional.to_dtype on an image (float to uint8 is refused
    by _plan)."""
    if values.dtype == op.dtype:
        return values
    if op.scale and not values.dtype.is_floating_point:
        return values.to(op.dtype).mul_(1.0 / 255)
    return values.to(op.dtype)


def _normalize(values: torch.Tensor, op: Normalize, channels: int) -> torch.Tensor:
    """torchvision.transforms.v2.functional.normalize: mean and std in the image's dtype."""
    if len(op.mean) not in (1, channels) or len(op.std) not in (1, channels):
        raise ValueError(f"Normalize: mean/std need 1 or {channels} values")
    mean = torch.tensor(op.mean, dtype=values.dtype)[:, None]
    std = torch.tensor(op.std, dtype=values.dtype)[:, None]
    return values.sub(mean).div_(std)


def _value_recipe(plan: _Plan, channels: int) -> torch.Tensor | None:
    """The steps of the value table as channels x (multiplier, mean, std), value = (v *
    multiplier - mean) / std in float32, when the ops are float32 conversions and at most
    one Normalize, last: the kernel computes such values instead of looking them up (the
    gather is the slow part), once it has checked that they match the table."""
    if plan.dtype != torch.float32:
        return None
    dtype, multiplier, mean, std = torch.uint8, 1.0, (0.0,), (1.0,)
    normalized = False
    for op in plan.value_ops:
        if isinstance(op, ToDtype):
            if op.dtype != dtype:
                if op.dtype != torch.float32 or dtype != torch.uint8:
                    return None
                multiplier = 1.0 / 255 if op.scale else 1.0
                dtype = op.dtype
        elif dtype != torch.float32 or normalized:
            return None
        else:
            mean, std, normalized = op.mean, op.std, True
    steps = torch.empty(channels, 3, dtype=torch.float32)
    steps[:, 0] = multiplier
    steps[:, 1] = torch.tensor(mean, dtype=torch.float32).expand(channels)
    steps[:, 2] = torch.tensor(std, dtype=torch.float32).expand(channels)
    return steps


class ImagePipeline:
    """Decode + crop/resize + flip + convert/normalize for a whole batch, in one C++ call.

    ``ImagePipeline([RandomResizedCrop(224), RandomHorizontalFlip(), ToDtype(torch.float32,
    scale=True), Normalize(mean, std)])(list_of_encoded_images)`` returns an N x 3 x 224 x 224
    float batch. Each image is decoded at the smallest DCT scale that still covers its crop
    at the output size, only over the rows and columns the crop needs, resized with
    antialiased bilinear filtering, then written straight into the batch tensor; samples
    run in parallel with the GIL released.

    Randomness comes from ``generator`` (or torch's global generator): the same seed gives
    the same batch whatever the thread count. With ``on_error="skip"`` a call returns
    ``(batch_of_valid_samples, valid_mask)``; with ``"raise"`` (default) just the batch, and
    the first bad sample raises :class:`fastloader.DecodeError` naming its index and key.

    ``fast_color=True`` (default): a YCbCr JPEG decoded at full scale (no DCT scaling, no
    EXIF rotation) is resampled as stored, its chroma from its own (subsampled) resolution,
    and converted to RGB at the output size, skipping libjpeg-turbo's chroma upsampling and
    colour conversion of the whole crop: ~15% faster, and over 43 dB PSNR against PIL's
    decode + crop + resize on the benchmark set, where ``fast_color=False`` (PIL's way:
    decode to RGB, then resize) stays within one level of it.

    ``fast_idct=True`` uses libjpeg-turbo's fast integer IDCT (FFCV's choice): within a
    level or two of the default accurate one, which decodes exactly as PIL does; on this
    project's machine it was not measurably faster.

    Batches are written into buffers the pipeline reuses once the caller has dropped every
    reference to an earlier batch (tensor, view or numpy array) and it went to no other
    process, or into ``out=``.
    """

    def __init__(
        self,
        transforms: Sequence[Any],
        *,
        mode: str = "RGB",
        layout: str = "NCHW",
        apply_exif_orientation: bool = False,
        dct_scaling: bool = True,
        fast_idct: bool = False,
        fast_color: bool = True,
        on_error: str = "raise",
        pin_memory: bool = False,
        num_threads: int | None = None,
        generator: torch.Generator | None = None,
        max_pixels: int = DEFAULT_MAX_PIXELS,
    ) -> None:
        self.mode_code = mode_code(mode)
        if layout not in LAYOUTS:
            raise ValueError(f"layout must be one of {sorted(LAYOUTS)}, got {layout!r}")
        if on_error not in ON_ERROR:
            raise ValueError(f"on_error must be one of {ON_ERROR}, got {on_error!r}")
        if num_threads is not None and num_threads < 1:
            raise ValueError(f"num_threads must be >= 1, got {num_threads}")
        self.transforms = list(transforms)
        self.plan = _plan(self.transforms)
        self.mode, self.layout, self.on_error = mode, layout, on_error
        self.channels = 3 if mode == "RGB" else 1
        self.apply_exif_orientation = apply_exif_orientation
        self.dct_scaling = dct_scaling
        self.fast_idct = fast_idct
        self.fast_color = fast_color
        self.num_threads = num_threads
        self.generator = generator
        self.max_pixels = max_pixels
        self.pin_memory = pin_memory and torch.cuda.is_available()
        if pin_memory and not self.pin_memory:
            warnings.warn("pin_memory=True but no CUDA device is available: batches are not pinned")
        self.lut = _value_table(self.plan, self.channels)
        self.recipe = _value_recipe(self.plan, self.channels)
        self._pool = OutputPool()

    def __getstate__(self) -> dict:
        # Sent to spawned DataLoader workers: the batch buffers stay behind.
        state = self.__dict__.copy()
        state["_pool"] = OutputPool()
        return state

    @property
    def dtype(self) -> torch.dtype:
        return self.plan.dtype

    def output_shape(self, batch_size: int) -> tuple[int, int, int, int]:
        """The shape of a batch of ``batch_size`` samples, known before any decode."""
        h, w = self.plan.out_size
        c = self.channels
        return (batch_size, c, h, w) if self.layout == "NCHW" else (batch_size, h, w, c)

    def __repr__(self) -> str:
        ops = ", ".join(repr(t) for t in self.transforms)
        return f"ImagePipeline([{ops}], mode={self.mode!r}, layout={self.layout!r})"

    def __call__(
        self, images: Sequence[Any], *, keys: Sequence[object] | None = None, out: torch.Tensor | None = None
    ) -> torch.Tensor | tuple[torch.Tensor, torch.Tensor]:
        if isinstance(images, (bytes, bytearray, memoryview, str)) or _encoded_bytes_array(images):
            raise TypeError("an ImagePipeline takes a batch: a list of encoded images (for one image, "
                            f"pass [image]), got {type(images).__name__}")
        n = len(images)
        if keys is not None and len(keys) != n:
            raise ValueError(f"got {len(keys)} keys for {n} images")
        errors: list[str] = [""] * n
        buffers = [self._source(i, img, keys, errors) for i, img in enumerate(images)]
        threads = self.num_threads or torch.get_num_threads()
        sizes, probe_errors = _C.probe_images(
            buffers, self.apply_exif_orientation, self.max_pixels, MAX_SCANS, threads
        )
        errors = [e or p for e, p in zip(errors, probe_errors)]
        geometry, flips = self._geometry(sizes, [not e for e in errors])
        batch = self._output(n, out)
        kernel_errors = _C.augment_batch(
            buffers, geometry, flips, batch, self.mode_code, LAYOUTS[self.layout], self.lut,
            self.apply_exif_orientation, self.dct_scaling, self.fast_idct, self.max_pixels, MAX_SCANS, threads,
            getattr(self, "recipe", None),  # absent from pipelines pickled before it existed
            getattr(self, "fast_color", False),
        )
        errors = [e or k for e, k in zip(errors, kernel_errors)]
        valid = torch.tensor([not e for e in errors], dtype=torch.bool)
        if self.on_error == "raise":
            for i, e in enumerate(errors):
                if e:
                    raise DecodeError(e, index=i, key=keys[i] if keys is not None else None)
            return batch
        return (batch if bool(valid.all()) else batch[valid]), valid

    def _source(self, i: int, image: Any, keys: Sequence[object] | None, errors: list[str]) -> Any:
        """A buffer for the kernel: the encoded JPEG, or pixels decoded by PIL for other formats."""
        key = keys[i] if keys is not None else None
        try:
            buf = as_byte_buffer(image, index=i, key=key)
            if is_jpeg(buf) or len(memoryview(buf)) == 0:
                return buf
            return decode_with_pil(buf, self.mode, 8, self.apply_exif_orientation, self.max_pixels)
        except DecodeError as e:
            errors[i] = e.reason
            return b""  # the kernel fails it again, cheaply

    def _geometry(self, sizes: torch.Tensor, ok: list[bool]) -> tuple[torch.Tensor, torch.Tensor]:
        """Per sample: source box, resized size, output window (float64, N x 8), and flips."""
        plan = self.plan
        n = sizes.shape[0]
        sizes = sizes.clone()
        sizes[~torch.tensor(ok, dtype=torch.bool)] = 1  # placeholders; their samples fail anyway
        out_h, out_w = plan.out_size
        geometry = torch.zeros(n, 8, dtype=torch.float64)
        if plan.crop is not None:
            c = plan.crop
            seed = int(torch.randint(0, 2**62, (1,), generator=self.generator))
            boxes = _C.sample_resized_crops(sizes, c.scale[0], c.scale[1], c.ratio[0], c.ratio[1], seed)
            top, left, h, w = boxes.unbind(1)
            geometry[:, 0], geometry[:, 1] = left, top
            geometry[:, 2], geometry[:, 3] = left + w, top + h
            geometry[:, 4], geometry[:, 5] = out_w, out_h
        else:
            rows = []
            for h, w in sizes.tolist():
                rh, rw = plan.resize.output_size(h, w) if plan.resize else (h, w)
                wy, wx = _center_offset(rh, out_h), _center_offset(rw, out_w)
                if plan.center is None:
                    wy = wx = 0
                rows.append((0, 0, w, h, rw, rh, wx, wy))
            geometry = torch.tensor(rows, dtype=torch.float64).reshape(n, 8)
        if plan.flip_p > 0:
            flips = torch.rand(n, generator=self.generator) < plan.flip_p
        else:
            flips = torch.zeros(n, dtype=torch.bool)
        return geometry, flips

    def _output(self, n: int, out: torch.Tensor | None) -> torch.Tensor:
        shape = self.output_shape(n)
        if out is None:
            return self._pool.get(shape, self.dtype, self.pin_memory)
        if tuple(out.shape) != shape or out.dtype != self.dtype or not out.is_contiguous() or out.device.type != "cpu":
            raise ValueError(
                f"out must be a contiguous CPU {self.dtype} tensor of shape {shape}, "
                f"got {out.dtype} {tuple(out.shape)} on {out.device}"
            )
        return out


def _center_offset(size: int, crop: int) -> int:
    """torchvision's center_crop offset, padding (negative offset) when the crop is larger."""
    if crop > size:
        return -((crop - size) // 2)
    return int(round((size - crop) / 2.0))


Compose = ImagePipeline
