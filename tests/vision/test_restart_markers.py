"""add_restart_markers: a lossless rewrite (the same pixels, libjpeg's and PIL's alike, the
same markers) with a restart interval of the asked size; clear errors for bad input."""
import io

import numpy as np
import pytest
import torch
from PIL import Image

from _images import encode_jpeg
from fastloader import DecodeError, decode_jpeg
from fastloader.vision import ImagePipeline, RandomResizedCrop, add_restart_markers


def restart_interval(data: bytes) -> int:
    """The DRI segment's interval (the file must have exactly one)."""
    assert data.count(b"\xff\xdd") == 1
    at = data.index(b"\xff\xdd")
    assert data[at + 2 : at + 4] == b"\x00\x04"
    return int.from_bytes(data[at + 4 : at + 6], "big")


@pytest.mark.parametrize("every", [1, 4])
def test_pixels_are_unchanged(jpeg_cases, every):
    # every case: sizes, subsamplings, progressive (rewritten as sequential), grayscale,
    # existing restart markers (replaced), CMYK and YCCK, EXIF orientations
    for case in jpeg_cases:
        out = add_restart_markers(case.data, every_mcus=every)
        assert restart_interval(out) == every, case.name
        for mode in ("RGB", "L"):
            ref = decode_jpeg(case.data, mode=mode, apply_exif_orientation=True)
            assert torch.equal(decode_jpeg(out, mode=mode, apply_exif_orientation=True), ref), (case.name, mode)
        with Image.open(io.BytesIO(case.data)) as a, Image.open(io.BytesIO(out)) as b:
            assert np.array_equal(np.asarray(a.convert("RGB")), np.asarray(b.convert("RGB"))), case.name


def test_extreme_valid_coefficients_are_rewritten():
    # at quality 100 (quantizers of 1) a black block's DC is -1024 and a white one's 1016,
    # the widest DC difference baseline coding carries; sharp edges give large ACs
    rng = np.random.default_rng(0)
    black_white = np.kron(rng.integers(0, 2, (6, 6)) * 255, np.ones((8, 8))).astype(np.uint8)
    for mode in ("L", "RGB"):
        data = encode_jpeg(Image.fromarray(black_white).convert(mode), quality=100, subsampling=0)
        out = add_restart_markers(data, every_mcus=1)
        assert torch.equal(decode_jpeg(out), decode_jpeg(data)), mode


def test_markers_are_kept(photos):
    img = Image.fromarray(photos[sorted(photos)[0]]).crop((0, 0, 120, 90))
    exif = Image.Exif()
    exif[0x0112] = 6  # orientation
    exif[0x010F] = "fastloader"  # make
    icc = bytes(range(256)) * 3
    buf = io.BytesIO()
    img.save(buf, "JPEG", quality=90, exif=exif.tobytes(), icc_profile=icc, comment=b"a comment")
    out = add_restart_markers(buf.getvalue(), every_mcus=2)
    with Image.open(io.BytesIO(out)) as b:
        assert b.getexif()[0x0112] == 6 and b.getexif()[0x010F] == "fastloader"
        assert b.info["icc_profile"] == icc and b.info["comment"] == b"a comment"
        assert b.info["jfif"]  # written once, by libjpeg
    assert out.count(b"JFIF\x00") == 1


def test_random_crops_of_the_result_match_the_original(photos):
    datas = [encode_jpeg(Image.fromarray(photos[n]), quality=90) for n in sorted(photos)[:4]]
    marked = [add_restart_markers(d, every_mcus=3) for d in datas]
    for fast_color in (True, False):
        def batch(images):
            ops = [RandomResizedCrop(64)]
            return ImagePipeline(ops, fast_color=fast_color, generator=torch.Generator().manual_seed(7))(images)
        assert torch.equal(batch(marked), batch(datas))


def test_bad_input(photos):
    data = encode_jpeg(Image.fromarray(photos[sorted(photos)[1]]), quality=90)
    with pytest.raises(DecodeError, match="Premature end of JPEG file"):
        add_restart_markers(data[: len(data) // 2])
    with pytest.raises(DecodeError, match="empty input"):
        add_restart_markers(b"")
    png = io.BytesIO()
    Image.fromarray(photos[sorted(photos)[1]]).save(png, "PNG")
    with pytest.raises(DecodeError, match="not a JPEG"):
        add_restart_markers(png.getvalue())
    with pytest.raises(DecodeError, match="exceeds max_pixels=100"):
        add_restart_markers(data, max_pixels=100)
    with pytest.raises(DecodeError, match="expected encoded image bytes"):
        add_restart_markers(12)
    for every in (0, 65536, 2.0, True):
        with pytest.raises(ValueError, match="every_mcus must be an int in 1..65535"):
            add_restart_markers(data, every_mcus=every)


def test_damaged_jpegs_are_refused_or_rewritten_exactly(photos):
    """Random damage: the rewrite either raises DecodeError or decodes to exactly what the
    damaged file decodes to; never a file that decodes otherwise, or not at all (libjpeg's
    reader takes some bad codes for zeros, and damage can push DC values out of range)."""
    sources = [encode_jpeg(Image.fromarray(photos[n]), quality=90) for n in sorted(photos)[:3]]
    sources.append(encode_jpeg(Image.fromarray(photos[sorted(photos)[0]]), quality=90, progressive=True))
    rng = np.random.default_rng(3)
    outcomes = {"rewritten": 0, "refused": 0}
    for i in range(400):
        data = bytearray(sources[i % len(sources)])
        for _ in range(int(rng.integers(1, 4))):
            at = int(rng.integers(200, len(data) - 2))
            if i % 2:
                data[at] = int(rng.integers(0, 256))
            else:
                del data[at : at + int(rng.integers(1, 16))]
        try:
            out = add_restart_markers(bytes(data))
        except DecodeError:
            outcomes["refused"] += 1
            continue
        outcomes["rewritten"] += 1
        assert torch.equal(decode_jpeg(out), decode_jpeg(bytes(data))), i
    assert outcomes["rewritten"] > 50 and outcomes["refused"] > 50, outcomes
