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


def _app1(payload: bytes) -> bytes:
    return b"\xff\xe1" + (len(payload) + 2).to_bytes(2, "big") + payload


_TIFF_FORMATS = {1: "B", 3: "H", 4: "I", 5: "II", 6: "b", 8: "h", 9: "i", 10: "ii", 11: "f", 12: "d", 13: "I",
                 16: "Q", 20: "I"}  # 20: a type PIL does not know


def _exif(tag_type: int, value, count: int = 1, little: bool = True) -> bytes:
    """An Exif APP1 payload whose first IFD holds one orientation entry of the given type
    (a rational's value is a (numerator, denominator) pair), out of line when over 4 bytes."""
    import struct

    order = "<" if little else ">"
    fmt = _TIFF_FORMATS[tag_type]
    one = struct.pack(order + fmt, *(value if isinstance(value, tuple) else (value,)))
    data = one * count
    header = (b"II" if little else b"MM") + struct.pack(order + "HI", 42, 8)
    ifd_size = 2 + 12 + 4
    field = data.ljust(4, b"\0") if len(data) <= 4 else struct.pack(order + "I", 8 + ifd_size)
    entry = struct.pack(order + "HHI", 0x0112, tag_type, count) + field
    ifd = struct.pack(order + "H", 1) + entry + bytes(4)
    return b"Exif\0\0" + header + ifd + (data if len(data) > 4 else b"")


def _xmp(orientation: str) -> bytes:
    return (b"http://ns.adobe.com/xap/1.0/\0<x:xmpmeta><rdf:Description " + orientation.encode() +
            b"/></x:xmpmeta>")


@pytest.mark.parametrize("segments", [
    [_exif(4, 6)], [_exif(1, 8)], [_exif(8, 3, little=False)], [_exif(9, 5)], [_exif(3, 6, count=2)],
    [_exif(1, 8), _xmp('tiff:Orientation="6"')], [_exif(6, 6)], [_exif(5, (6, 1))], [_exif(5, (12, 2), little=False)],
    [_exif(5, (13, 2))], [_exif(5, (6, 0))], [_exif(10, (-6, -1))], [_exif(11, 6.0)], [_exif(11, 6.5)],
    [_exif(12, 8.0, little=False)], [_exif(13, 3)], [_exif(16, 6)], [_exif(4, 3, count=3)],
    [_exif(20, 6), _xmp('tiff:Orientation="3"')], [_exif(4, 6, count=2)[:-4], _xmp('tiff:Orientation="3"')],
    [_exif(3, 9)], [_exif(3, 0), _xmp('tiff:Orientation="6"')],
    [_xmp('tiff:Orientation="6"')], [_xmp("x:tiff:Orientation>7")], [_xmp('tiff:Orientation="x" tiff:Orientation="3"')],
    [_xmp('tiff:Orientation="6"'), _xmp('tiff:Other="6"')],
    [_exif(3, 1), _exif(3, 6)], [b"Exif\0\0II*\0", _exif(3, 6)], [_exif(3, 6), _xmp('tiff:Orientation="2"')],
])
def test_orientation_from_any_integer_exif_tag_or_xmp_as_pil_reads_it(photos, segments):
    plain = encode_jpeg(Image.fromarray(photos["coffee"][:40, :64]), quality=95)
    data = plain[:2] + b"".join(_app1(s) for s in segments) + plain[2:]
    with Image.open(io.BytesIO(data)) as img:
        want = np.asarray(ImageOps.exif_transpose(img).convert("RGB"))
    assert np.array_equal(decode_jpeg(data, apply_exif_orientation=True).numpy(), want)


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
