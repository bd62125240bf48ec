"""Corrupt, truncated, hostile or empty inputs: a DecodeError, never a crash."""
import struct

import numpy as np
import pytest
import torch
from PIL import Image

from _images import encode_jpeg
from fastloader import DecodeError, decode_jpeg
from fastloader.vision import CenterCrop, ImagePipeline, RandomResizedCrop


@pytest.fixture(scope="module")
def good(photos):
    return encode_jpeg(Image.fromarray(photos["chelsea"]), quality=90)


def test_empty_input():
    with pytest.raises(DecodeError, match="empty"):
        decode_jpeg(b"")


def test_not_an_image():
    with pytest.raises(DecodeError):
        decode_jpeg(b"this is not an image at all")


@pytest.mark.parametrize("keep", [0.1, 0.5, 0.9, 0.999])
def test_truncated_jpeg(good, keep):
    with pytest.raises(DecodeError):
        decode_jpeg(good[: int(len(good) * keep)])


def test_truncated_progressive(photos):
    data = encode_jpeg(Image.fromarray(photos["coffee"]), progressive=True)
    with pytest.raises(DecodeError):
        decode_jpeg(data[: len(data) // 2])


def _with_dimensions(data: bytes, height: int, width: int) -> bytes:
    """Rewrites the SOF0 marker's dimensions (a header that lies)."""
    at = data.index(b"\xff\xc0")
    return data[: at + 5] + struct.pack(">HH", height, width) + data[at + 9 :]


def test_header_over_max_pixels_is_rejected_before_allocating(good):
    hostile = _with_dimensions(good, 60000, 60000)  # 3.6 G pixels, 10 GB of RGB
    with pytest.raises(DecodeError, match="max_pixels"):
        decode_jpeg(hostile)
    with pytest.raises(DecodeError, match="max_pixels"):
        decode_jpeg(good, max_pixels=1000)


def test_pipeline_rejects_a_header_over_max_pixels_by_index(good):
    hostile = _with_dimensions(good, 60000, 60000)
    with pytest.raises(DecodeError, match="max_pixels") as info:
        ImagePipeline([CenterCrop(64)])([good, hostile], keys=["ok", "huge"])
    assert info.value.index == 1 and info.value.key == "huge"
    _, valid = ImagePipeline([CenterCrop(64)], max_pixels=1000, on_error="skip")([good, good])
    assert valid.tolist() == [False, False]


def test_pipeline_names_a_tensor_of_the_wrong_dtype_or_shape(good):
    pipe = ImagePipeline([CenterCrop(64)])
    encoded = torch.frombuffer(bytearray(good), dtype=torch.uint8)
    assert pipe([encoded, encoded]).shape == (2, 3, 64, 64)
    for bad in (encoded.float(), encoded.view(1, -1)):
        with pytest.raises(DecodeError, match="1-D uint8") as info:
            pipe([encoded, bad])
        assert info.value.index == 1


def test_pipeline_names_the_bad_sample(good):
    pipe = ImagePipeline([CenterCrop(64)])
    with pytest.raises(DecodeError) as info:
        pipe([good, good[:500], good], keys=["a", "b", "c"])
    assert info.value.index == 1 and info.value.key == "b"
    assert "sample 1" in str(info.value) and "'b'" in str(info.value)


def test_pipeline_skip_returns_valid_samples(good):
    pipe = ImagePipeline([CenterCrop(64)], on_error="skip")
    clean = ImagePipeline([CenterCrop(64)])([good, good])
    batch, valid = pipe([good, b"", good[:300], 42, good])
    assert valid.tolist() == [True, False, False, False, True]
    assert batch.shape[0] == 2
    assert np.array_equal(batch.numpy(), clean.numpy())


def test_random_mutations_of_real_jpegs_never_crash(photos):
    """1,000 real JPEGs with random bytes overwritten, dropped or duplicated: each decodes
    or raises DecodeError, through decode_jpeg and the fused pipeline."""
    rng = np.random.default_rng(7)
    sources = []
    for name, img in sorted(photos.items()):
        pil = Image.fromarray(img).resize((160, 120))
        sources.append(encode_jpeg(pil, quality=85))
        sources.append(encode_jpeg(pil, quality=70, progressive=True))
        sources.append(encode_jpeg(pil, quality=90, subsampling=0, restart_marker_blocks=2))
    mutated = []
    for i in range(1000):
        data = bytearray(sources[i % len(sources)])
        kind = i % 3
        for _ in range(int(rng.integers(1, 8))):
            at = int(rng.integers(2, len(data)))
            if kind == 0:
                data[at] = int(rng.integers(0, 256))
            elif kind == 1:
                del data[at : at + int(rng.integers(1, 64))]
            else:
                data[at:at] = data[at : at + int(rng.integers(1, 64))]
        mutated.append(bytes(data))
    outcomes = {"ok": 0, "error": 0}
    for data in mutated:
        try:
            decode_jpeg(data, apply_exif_orientation=True)
            outcomes["ok"] += 1
        except DecodeError:
            outcomes["error"] += 1
    assert outcomes["error"] > 100 and outcomes["ok"] + outcomes["error"] == 1000
    # 64 px outputs decode at full scale, 16 px ones at 1/4 or 1/8: both region decodes
    for size in (64, 16):
        pipe = ImagePipeline([RandomResizedCrop(size)], on_error="skip", apply_exif_orientation=True, num_threads=2)
        for start in range(0, 1000, 100):
            batch, valid = pipe(mutated[start : start + 100])
            assert batch.shape[0] == int(valid.sum())
