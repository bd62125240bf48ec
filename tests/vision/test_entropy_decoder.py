"""fastloader's Huffman decoder (csrc/jpeg/huffman.cpp) against libjpeg-turbo's own, which
it replaces for sequential JPEGs: the same pixels for every image, scale, crop and
mode, and the same verdict on corrupt data, with two exceptions: ours reports every
invalid Huffman code, where libjpeg-turbo's fast path decodes it as a zero without a word,
and ours decodes a file whose only flaw is a missing end-of-image marker, which libjpeg
rejects because its bit reader reads past the last bits it needs. A third, by design: of
a JPEG with restart markers, a crop decodes only the restart intervals it touches, so
damage elsewhere in the file goes unread (as damage below a crop always has)."""
import contextlib

import numpy as np
import pytest
import torch
from PIL import Image

from _images import encode_jpeg
from fastloader import DecodeError, _C, decode_jpeg
from fastloader.vision import CenterCrop, ImagePipeline, RandomResizedCrop


@contextlib.contextmanager
def libjpeg_entropy_decoder():
    _C._use_own_entropy_decoder(False)
    try:
        yield
    finally:
        _C._use_own_entropy_decoder(True)


def outcome(fn, *args, **kwargs):
    try:
        return fn(*args, **kwargs)
    except DecodeError as e:
        return e


def both(fn, *args, **kwargs):
    ours = outcome(fn, *args, **kwargs)
    with libjpeg_entropy_decoder():
        ref = outcome(fn, *args, **kwargs)
    return ours, ref


def assert_same(ours, ref, label, stricter_on_bad_codes=False):
    if stricter_on_bad_codes and isinstance(ours, DecodeError) and not isinstance(ref, Exception):
        assert "bad Huffman code" in str(ours), f"{label}: ours raised {ours}, libjpeg decoded"
        return
    if isinstance(ref, Exception):
        assert isinstance(ours, DecodeError), f"{label}: libjpeg raised {ref}, ours decoded"
    else:
        assert not isinstance(ours, Exception), f"{label}: ours raised {ours}, libjpeg decoded"
        assert torch.equal(ours, ref), label


@pytest.fixture(scope="module")
def sequential_cases(jpeg_cases, photos):
    """The shared cases (progressive ones go to libjpeg's decoder: kept as a control) plus
    optimized Huffman tables, whose codes run past the 10-bit lookup."""
    extra = []
    for i, name in enumerate(sorted(photos)[:4]):
        img = Image.fromarray(photos[name])
        extra.append((f"{name}-optimized-q{95 + i}", encode_jpeg(img, quality=95 + i, optimize=True, subsampling=i % 3)))
    return [(c.name, c.data) for c in jpeg_cases] + extra


@pytest.mark.parametrize("scale", [1, 0.5, 0.25, 0.125])
def test_decode_matches_libjpeg_decoder(sequential_cases, scale):
    for name, data in sequential_cases:
        for mode in ("RGB", "L"):
            ours, ref = both(decode_jpeg, data, mode=mode, scale=scale)
            assert not isinstance(ref, Exception), name
            assert_same(ours, ref, f"{name} {mode} scale={scale}")


@pytest.mark.parametrize("size", [224, 64, 16])
def test_cropped_region_decodes_match_libjpeg_decoder(sequential_cases, size):
    # random crops skip rows above and columns beside the crop; small outputs use DCT scaling
    datas = [d for _, d in sequential_cases]
    for ops in ([RandomResizedCrop(size)], [CenterCrop(size)]):

        def batches():
            pipe = ImagePipeline(ops, num_threads=2, generator=torch.Generator().manual_seed(3))
            return [pipe(datas).clone() for _ in range(3)]

        ours = batches()
        with libjpeg_entropy_decoder():
            ref = batches()
        for a, b in zip(ours, ref):
            assert torch.equal(a, b), ops


@pytest.mark.parametrize("scale", [1, 0.125])
def test_mutated_jpegs_get_the_same_verdict(photos, scale):
    """At 1/8 scale no AC coefficient is kept: blocks are passed over, one coefficient per
    lookup, or several once an image's tables are those of the image before (each is
    decoded twice, so its second decode takes that path)."""
    rng = np.random.default_rng(11)
    sources = []
    for name, img in sorted(photos.items()):
        pil = Image.fromarray(img).resize((120, 96))
        sources.append(encode_jpeg(pil, quality=90))
        sources.append(encode_jpeg(pil, quality=90, subsampling=0, restart_marker_blocks=2))
        sources.append(encode_jpeg(pil.convert("L"), quality=80, optimize=True))
    verdicts = {"ok": 0, "error": 0, "bad code only we report": 0}
    for i in range(600):
        data = bytearray(sources[i % len(sources)])
        for _ in range(int(rng.integers(1, 4))):
            at = int(rng.integers(200, len(data) - 2))  # in the entropy-coded data
            if i % 2:
                data[at] = int(rng.integers(0, 256))
            else:
                del data[at : at + int(rng.integers(1, 16))]
        ours, ref = both(decode_jpeg, bytes(data), scale=scale)
        assert_same(ours, ref, f"mutation {i}", stricter_on_bad_codes=True)
        again = outcome(decode_jpeg, bytes(data), scale=scale)
        assert_same(again, ours, f"mutation {i}, decoded again")
        if isinstance(ours, Exception) and not isinstance(ref, Exception):
            verdicts["bad code only we report"] += 1
        else:
            verdicts["error" if isinstance(ref, Exception) else "ok"] += 1
    assert verdicts["ok"] > 50 and verdicts["error"] > 50, verdicts
    assert verdicts["bad code only we report"] < verdicts["error"] / 4, verdicts


def _restart_markers(data: bytes) -> list[int]:
    return [i for i in range(len(data) - 1) if data[i] == 0xFF and 0xD0 <= data[i + 1] <= 0xD7]


def test_restart_marker_errors(photos):
    data = encode_jpeg(Image.fromarray(photos[sorted(photos)[0]]), quality=90, restart_marker_blocks=4)
    markers = _restart_markers(data)
    assert len(markers) > 10
    at = markers[5]
    cases = {
        "wrong number": data[: at + 1] + bytes([0xD0 + (data[at + 1] - 0xD0 + 3) % 8]) + data[at + 2 :],
        "missing": data[:at] + data[at + 2 :],
        "not a restart": data[: at + 1] + b"\xfe" + data[at + 2 :],
    }
    for name, bad in cases.items():
        ours, ref = both(decode_jpeg, bad)
        assert isinstance(ref, DecodeError), name
        assert isinstance(ours, DecodeError), name
    number = (data[at + 1] - 0xD0 + 3) % 8
    expected = data[at + 1] - 0xD0
    with pytest.raises(DecodeError, match=f"found marker 0x{0xD0 + number:02x} instead of RST{expected}"):
        decode_jpeg(cases["wrong number"])
    with pytest.raises(DecodeError, match="Premature end of JPEG file"):
        decode_jpeg(data[: at + 2])  # ends right after a restart marker
    # extra bytes before a restart marker are libjpeg's warning, not an error
    padded = data[:at] + b"\x12\x34" + data[at:]
    ours, ref = both(decode_jpeg, padded)
    assert_same(ours, ref, "padded")


@pytest.fixture(scope="module")
def restart_cases(photos):
    """Restart intervals of 1, 2 and 5 MCUs and of one MCU row, in 4:4:4 and 4:2:0."""
    cases = []
    for name in sorted(photos)[:3]:
        img = Image.fromarray(photos[name])
        for subsampling in (0, 2):
            for interval in ({"restart_marker_blocks": 1}, {"restart_marker_blocks": 2},
                             {"restart_marker_blocks": 5}, {"restart_marker_rows": 1}):
                cases.append(encode_jpeg(img, quality=90, subsampling=subsampling, **interval))
    return cases


@pytest.mark.parametrize("fast_color", [True, False])
def test_crops_skip_restart_intervals_exactly(restart_cases, fast_color):
    # Small crops leave most intervals untouched (not decoded at all); larger ones and
    # DCT-scaled ones skip fewer. The pixels are those of libjpeg's decoder, which reads all.
    for ops in ([RandomResizedCrop(40, scale=(0.01, 0.1))], [RandomResizedCrop(96)], [CenterCrop(24)]):
        for seed in range(3):

            def batch():
                pipe = ImagePipeline(ops, fast_color=fast_color, generator=torch.Generator().manual_seed(seed))
                return pipe(restart_cases)

            ours = batch()
            with libjpeg_entropy_decoder():
                ref = batch()
            assert torch.equal(ours, ref), (ops, seed)


def test_damage_in_a_restart_interval_outside_the_crop_goes_unread(photos):
    data = encode_jpeg(Image.fromarray(photos[sorted(photos)[0]]), quality=90, restart_marker_blocks=2)
    sos = data.index(b"\xff\xda")
    scan = sos + 2 + int.from_bytes(data[sos + 2 : sos + 4], "big")
    first_marker = _restart_markers(data)[0]
    # the first interval (the top-left MCUs) cut short: its MCUs run out of bits
    damaged = data[: scan + 4] + data[first_marker:]
    with pytest.raises(DecodeError, match="premature end of data segment"):
        decode_jpeg(damaged)
    for fast_color in (True, False):
        pipe = ImagePipeline([CenterCrop(32)], fast_color=fast_color)
        assert torch.equal(pipe([damaged]), pipe([data]))


def test_missing_end_of_image_marker_decodes(photos):
    data = encode_jpeg(Image.fromarray(photos[sorted(photos)[2]]), quality=90)
    assert data.endswith(b"\xff\xd9")
    ours, ref = both(decode_jpeg, data[:-2])
    assert torch.equal(ours, decode_jpeg(data))
    assert isinstance(ref, DecodeError)  # libjpeg read ahead into the missing bytes


def test_truncation_names_libjpeg_error(photos):
    data = encode_jpeg(Image.fromarray(photos[sorted(photos)[1]]), quality=90)
    with pytest.raises(DecodeError, match="Premature end of JPEG file"):
        decode_jpeg(data[: len(data) * 2 // 3])
    with pytest.raises(DecodeError, match="premature end of data segment"):
        decode_jpeg(data[: len(data) * 2 // 3] + b"\xff\xd9")
