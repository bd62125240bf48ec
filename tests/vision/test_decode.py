"""decode_jpeg against PIL on the same libjpeg-turbo."""
import io

import numpy as np
import pytest
import torch
from PIL import Image, ImageOps

from _images import encode_jpeg, pil_decode
from fastloader import DecodeError, decode_jpeg


def test_full_decode_is_bit_identical_to_pil(jpeg_cases):
    for case in jpeg_cases:
        ours = decode_jpeg(case.data).numpy()
        ref = pil_decode(case.data)
        assert ours.dtype == np.uint8 and ours.shape == ref.shape, case.name
        assert np.array_equal(ours, ref), case.name


def test_gray_mode_matches_pil_convert_L(jpeg_cases):
    for case in jpeg_cases:
        assert np.array_equal(decode_jpeg(case.data, mode="L").numpy(), pil_decode(case.data, "L")), case.name


@pytest.mark.parametrize("scale,denominator", [(0.5, 2), (0.25, 4), (0.125, 8)])
def test_dct_scaled_decode_matches_pil_draft(jpeg_cases, scale, denominator):
    # PIL's draft() asks libjpeg for the same DCT-domain scaling.
    for case in jpeg_cases:
        with Image.open(io.BytesIO(case.data)) as img:
            w, h = img.size
            if case.name.startswith("cmyk") or min(w, h) < 8 * denominator:
                continue  # draft() would pick another scale
            img.draft("RGB", (w // denominator, h // denominator))
            ref = np.asarray(img.convert("RGB"))
        ours = decode_jpeg(case.data, scale=scale).numpy()
        assert ours.shape == (-(-h // denominator), -(-w // denominator), 3), case.name
        assert ours.shape == ref.shape and np.array_equal(ours, ref), case.name


def test_exif_orientation_matches_pil_exif_transpose(jpeg_cases):
    for case in (c for c in jpeg_cases if c.name.startswith("exif-")):
        with Image.open(io.BytesIO(case.data)) as img:
            ref = np.asarray(ImageOps.exif_transpose(img).convert("RGB"))
        ours = decode_jpeg(case.data, apply_exif_orientation=True).numpy()
        assert np.array_equal(ours, ref), case.name
        # without the flag, the stored pixels
        assert np.array_equal(decode_jpeg(case.data).numpy(), pil_decode(case.data)), case.name


def test_accepts_bytes_memoryview_array_and_tensor(jpeg_cases):
    data = jpeg_cases[0].data
    ref = decode_jpeg(data)
    for form in (bytearray(data), memoryview(data), np.frombuffer(data, np.uint8), torch.frombuffer(bytearray(data), dtype=torch.uint8)):
        assert torch.equal(decode_jpeg(form), ref)


def test_non_jpeg_formats_fall_back_to_pil(photos):
    img = Image.fromarray(photos["astronaut"][:100, :120])
    for fmt, options in (("PNG", {}), ("BMP", {}), ("TIFF", {}), ("WEBP", {"lossless": True})):
        buf = io.BytesIO()
        img.save(buf, fmt, **options)
        out = decode_jpeg(buf.getvalue())
        assert np.array_equal(out.numpy(), np.asarray(img)), fmt
        assert decode_jpeg(buf.getvalue(), mode="L").shape == (100, 120, 1)
        assert decode_jpeg(buf.getvalue(), scale=0.5).shape == (50, 60, 3)


def test_bad_arguments():
    data = encode_jpeg(Image.new("RGB", (16, 16)))
    with pytest.raises(ValueError, match="scale"):
        decode_jpeg(data, scale=0.3)
    with pytest.raises(ValueError, match="mode"):
        decode_jpeg(data, mode="CMYK")
    with pytest.raises(DecodeError, match="uint8"):
        decode_jpeg(torch.zeros(10, dtype=torch.float32))
    with pytest.raises(DecodeError, match="1-D"):
        decode_jpeg(torch.zeros(2, 5, dtype=torch.uint8))
    with pytest.raises(DecodeError, match="got int"):
        decode_jpeg(12)
