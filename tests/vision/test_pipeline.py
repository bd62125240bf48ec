"""The fused ImagePipeline against the same ops done with PIL and torch, one at a time."""
import io
import random

import numpy as np
import pytest
import torch
from PIL import Image, ImageOps

from _images import EncodedImages, encode_jpeg, pil_decode, psnr, with_orientation
from fastloader import _C, decode_jpeg
from fastloader.vision import (
    CenterCrop, ImagePipeline, Normalize, RandomHorizontalFlip, RandomResizedCrop, Resize, ToDtype,
)

MEAN, STD = (0.485, 0.456, 0.406), (0.229, 0.224, 0.225)


@pytest.fixture(scope="module")
def images(jpeg_cases):
    """The test JPEGs big enough to crop, stored orientation only."""
    return [c for c in jpeg_cases if min(pil_decode(c.data).shape[:2]) >= 32 and not c.name.startswith("exif")]


def pil_resized_crop(data: bytes, box: tuple[int, int, int, int], size: tuple[int, int], mode="RGB") -> np.ndarray:
    """The torchvision recipe on PIL: full decode, crop (left, top, right, bottom), bilinear resize."""
    with Image.open(io.BytesIO(data)) as img:
        out = img.convert(mode).crop(box).resize((size[1], size[0]), Image.Resampling.BILINEAR)
    arr = np.asarray(out)
    return arr.reshape(arr.shape[0], arr.shape[1], -1)


def planned(pipe: ImagePipeline, datas: list[bytes], seed: int):
    """The crop geometry and flips a call with generator seed `seed` will use."""
    sizes, _ = _C.probe_images(datas, pipe.apply_exif_orientation, pipe.max_pixels, 500, 1)
    pipe.generator = torch.Generator().manual_seed(seed)
    geometry, flips = pipe._geometry(sizes, [True] * len(datas))
    pipe.generator = torch.Generator().manual_seed(seed)
    return geometry, flips


def test_resize_center_crop_matches_pil_within_one_level(images):
    pipe = ImagePipeline([Resize(256), CenterCrop(224)], layout="NHWC", dct_scaling=False, fast_idct=False, fast_color=False)
    batch = pipe([c.data for c in images]).numpy()
    for case, out in zip(images, batch):
        with Image.open(io.BytesIO(case.data)) as img:
            img = img.convert("RGB")
            w, h = img.size
            rw, rh = (256, int(256 * h / w)) if w <= h else (int(256 * w / h), 256)
            ref = np.asarray(img.resize((rw, rh), Image.Resampling.BILINEAR))
        top, left = int(round((rh - 224) / 2.0)), int(round((rw - 224) / 2.0))
        ref = ref[max(top, 0) : top + 224, max(left, 0) : left + 224]
        if ref.shape != (224, 224, 3):
            continue  # padded: checked in test_center_crop_pads_like_torchvision
        assert np.abs(out.astype(int) - ref).max() <= 1, case.name


@pytest.mark.parametrize("size", [(7, 5), (33, 17), (300, 401)])
def test_odd_and_extreme_output_sizes_match_pil_within_one_level(images, size):
    """Odd widths (the last pixel of each row takes its own path), a downscale so large
    that the whole row is one kernel, and an upscale."""
    pipe = ImagePipeline([Resize(size)], layout="NHWC", dct_scaling=False, fast_idct=False, fast_color=False)
    batch = pipe([c.data for c in images]).numpy()
    for case, out in zip(images, batch):
        with Image.open(io.BytesIO(case.data)) as img:
            ref = np.asarray(img.convert("RGB").resize((size[1], size[0]), Image.Resampling.BILINEAR))
        assert np.abs(out.astype(int) - ref).max() <= 1, case.name


def test_random_resized_crop_matches_pil_crop_and_resize(images):
    datas = [c.data for c in images]
    pipe = ImagePipeline([RandomResizedCrop(96), RandomHorizontalFlip()], layout="NHWC", dct_scaling=False, fast_idct=False, fast_color=False)
    geometry, flips = planned(pipe, datas, seed=3)
    batch = pipe(datas).numpy()
    assert 0 < int(flips.sum()) < len(datas)
    for case, out, g, flip in zip(images, batch, geometry.tolist(), flips.tolist()):
        ref = pil_resized_crop(case.data, tuple(int(v) for v in g[:4]), (96, 96))
        if flip:
            ref = ref[:, ::-1]
        assert np.abs(out.astype(int) - ref).max() <= 1, case.name


def test_random_resized_crop_uses_its_scale_and_ratio(images):
    """scale=(1, 1) at the image's own aspect ratio can only pick the whole image; a fixed
    scale and ratio fix each box's area and shape (torchvision's rounding)."""
    for case in images[:8]:
        h, w = pil_decode(case.data).shape[:2]
        pipe = ImagePipeline([RandomResizedCrop(48, scale=(1.0, 1.0), ratio=(w / h, w / h))], layout="NHWC",
                             dct_scaling=False, fast_color=False)
        out = pipe([case.data]).numpy()[0]
        assert np.abs(out.astype(int) - pil_resized_crop(case.data, (0, 0, w, h), (48, 48))).max() <= 1, case.name
    datas = [c.data for c in images]
    pipe = ImagePipeline([RandomResizedCrop(48, scale=(0.25, 0.25), ratio=(1.0, 1.0))], layout="NHWC")
    geometry, _ = planned(pipe, datas, seed=5)
    for case, g in zip(images, geometry.tolist()):
        h, w = pil_decode(case.data).shape[:2]
        side = int(round((0.25 * w * h) ** 0.5))
        if side <= min(w, h):  # else torchvision falls back to a center crop
            assert (g[2] - g[0], g[3] - g[1]) == (side, side), case.name


def test_dct_scaled_path_psnr_at_least_35db(jpeg_cases):
    """Small outputs make the pipeline decode at 1/2, 1/4 or 1/8 scale: against PIL's full
    decode + the same crop + bilinear resize, every image of the test set (down to 1x1,
    EXIF ones as stored) stays above 35 dB."""
    images = jpeg_cases
    datas = [c.data for c in images]
    scales_seen = set()
    for size, seed in ((8, 4), (16, 0), (32, 1), (64, 2), (112, 3)):
        pipe = ImagePipeline([RandomResizedCrop(size, scale=(0.3, 1.0))], layout="NHWC")
        geometry, _ = planned(pipe, datas, seed)
        batch = pipe(datas).numpy()
        unscaled = _without_dct_scaling(pipe, datas, seed)
        for case, out, plain, g in zip(images, batch, unscaled, geometry.tolist()):
            box = tuple(int(v) for v in g[:4])
            ref = pil_resized_crop(case.data, box, (size, size))
            assert psnr(out, ref) >= 35.0, (case.name, size, box, psnr(out, ref))
            h, w = pil_decode(case.data).shape[:2]
            k = _dct_scale(w, h, g)
            # the kernel took the scaled path exactly where the rule says (it filters differently)
            assert (k < 8) == (not np.array_equal(out, plain)), (case.name, size, k)
            scales_seen.add(k)
    assert {1, 2, 4} <= scales_seen, scales_seen


@pytest.mark.parametrize("ops", [
    [RandomResizedCrop(224), RandomHorizontalFlip()],
    [RandomResizedCrop((33, 17)), RandomHorizontalFlip()],
    [Resize(160), CenterCrop(128)],
])
def test_fast_color_psnr_against_pil(jpeg_cases, ops):
    """The default fast_color path (Y, Cb, Cr planes resampled as stored, colour converted
    at the output size) against PIL's decode + crop + bilinear resize: every image of the
    test set above 40 dB, decoded at full scale."""
    datas = [c.data for c in jpeg_cases]
    pipe = ImagePipeline(ops, layout="NHWC", dct_scaling=False)
    geometry, flips = planned(pipe, datas, seed=8)
    batch = pipe(datas).numpy()
    out_h, out_w = batch.shape[1:3]
    for case, out, g, flip in zip(jpeg_cases, batch, geometry.tolist(), flips.tolist()):
        box = tuple(int(v) for v in g[:4])
        resized = pil_resized_crop(case.data, box, (int(g[5]), int(g[4])))
        ref = resized[int(g[7]):int(g[7]) + out_h, int(g[6]):int(g[6]) + out_w]
        if ref.shape[:2] != (out_h, out_w):
            continue  # padded: not this path
        if flip:
            ref = ref[:, ::-1]
        assert psnr(out, ref) >= 40.0, (case.name, box, psnr(out, ref))


def test_fast_color_applies_to_full_scale_ycbcr_jpegs_only(jpeg_cases, photos):
    """Gray and progressive JPEGs, DCT-scaled decodes, EXIF rotations and padded windows
    take PIL's path whatever fast_color says. A 4:4:4 JPEG has no chroma to resample
    differently: converting colour after resizing rather than before moves the rounding of
    the two resampling passes into YCbCr (where Cr weighs 1.4 in R): within 3 levels."""
    by_name = {c.name: c.data for c in jpeg_cases}
    def both(ops, datas, **kw):
        fast, pil = (ImagePipeline(ops, layout="NHWC", fast_color=f, generator=torch.Generator().manual_seed(1),
                                   **kw)(datas).numpy() for f in (True, False))
        return fast.astype(int), pil.astype(int)
    same = [by_name["gray"], by_name["gray-progressive"], by_name["progressive-sub2"]]
    fast, pil = both([Resize((64, 80))], same, dct_scaling=False)
    assert np.array_equal(fast, pil)
    fast, pil = both([Resize((16, 20))], [by_name["q75"]])  # decoded at 1/8 scale
    assert np.array_equal(fast, pil)
    rotated = with_orientation(Image.fromarray(photos["coffee"]).resize((120, 90)), 6, quality=90)
    fast, pil = both([Resize((64, 48))], [rotated], dct_scaling=False, apply_exif_orientation=True)
    assert np.array_equal(fast, pil)
    small = [c.data for c in jpeg_cases if c.name.endswith("17x33-q90-sub2")]
    fast, pil = both([CenterCrop((40, 40))], small, dct_scaling=False)  # padded on every side
    assert np.array_equal(fast, pil)
    full = [c.data for c in jpeg_cases if "-sub0" in c.name and "375x500" in c.name]
    fast, pil = both([RandomResizedCrop(96)], full, dct_scaling=False)
    assert 0 < np.abs(fast - pil).max() <= 3
    subsampled = [c.data for c in jpeg_cases if "-sub2" in c.name and "375x500" in c.name]
    fast, pil = both([Resize((96, 128))], subsampled, dct_scaling=False)
    assert np.abs(fast - pil).max() > 3  # chroma from its own resolution: the other path


def _without_dct_scaling(pipe: ImagePipeline, datas: list[bytes], seed: int) -> np.ndarray:
    """The batch `pipe` makes with generator seed `seed`, decoded at full scale throughout."""
    plain = ImagePipeline(pipe.transforms, layout=pipe.layout, dct_scaling=False)
    plain.generator = torch.Generator().manual_seed(seed)
    return plain(datas).numpy()


def _dct_scale(w: int, h: int, g: list[float]) -> int:
    """The scale the kernel picks: the smallest k/8 keeping the crop 1.5x the output size."""
    for k in (1, 2, 4):
        if (g[2] - g[0]) * k / 8 >= 1.5 * g[4] and (g[3] - g[1]) * k / 8 >= 1.5 * g[5]:
            return k
    return 8


def v2_values(image: torch.Tensor, ops) -> torch.Tensor:
    """torchvision.transforms.v2's ToDtype and Normalize on an N x C x H x W uint8 batch, as
    its functionals compute them (to_dtype_image: int to float is `.to(dtype).mul_(1 / 255)`,
    a float input is only converted; normalize_image: mean and std in the image's dtype)."""
    for op in ops:
        if isinstance(op, ToDtype):
            if image.dtype == op.dtype:
                continue
            if op.scale and not image.is_floating_point():
                image = image.to(op.dtype).mul_(1.0 / 255)
            else:
                image = image.to(op.dtype)
        else:
            mean = torch.as_tensor(op.mean, dtype=image.dtype).view(-1, 1, 1)
            std = torch.as_tensor(op.std, dtype=image.dtype).view(-1, 1, 1)
            image = image.sub(mean).div_(std)
    return image


@pytest.mark.parametrize("values", [
    [ToDtype(torch.float32, scale=True), Normalize(MEAN, STD)],
    [ToDtype(torch.float16, scale=True), Normalize(MEAN, STD)],
    [ToDtype(torch.bfloat16, scale=True), Normalize(MEAN, STD)],
    [ToDtype(torch.float32)],
    [ToDtype(torch.float32, scale=True), ToDtype(torch.float16, scale=True)],  # float to float: no rescale
    [ToDtype(torch.float32, scale=True), ToDtype(torch.float32, scale=True), Normalize(0.5, 0.25)],
    [ToDtype(torch.float32), Normalize(MEAN, STD), ToDtype(torch.bfloat16, scale=True), Normalize(0.1, 2.0)],
])
def test_float_output_matches_torchvision_v2_ops_on_the_uint8_result(images, values):
    datas = [c.data for c in images[:8]]
    ops = [Resize(160), CenterCrop(128)]
    u8 = ImagePipeline(ops)(datas)
    got = ImagePipeline(ops + values)(datas)
    want = v2_values(u8, values)
    assert got.dtype == want.dtype and torch.equal(got, want)


@pytest.mark.parametrize("width", [128, 131])
def test_float_output_with_flips_any_width_and_unaligned_out(images, width):
    """The float write path (8 pixels at a time, a tail, streamed stores only where
    aligned): flipped and unflipped samples, into a batch tensor at an odd address."""
    datas = [c.data for c in images[:12]]
    ops = [RandomResizedCrop((96, width)), RandomHorizontalFlip()]
    u8 = ImagePipeline(ops, generator=torch.Generator().manual_seed(5))(datas)
    values = [ToDtype(torch.float32, scale=True), Normalize(MEAN, STD)]
    ref = v2_values(u8, values)
    pipe = ImagePipeline(ops + values, generator=torch.Generator().manual_seed(5))
    out = torch.empty(ref.numel() + 1)[1:].view(ref.shape)
    assert out.data_ptr() % 32
    assert pipe(datas, out=out) is out and torch.equal(out, ref)
    pipe.generator.manual_seed(5)
    assert torch.equal(pipe(datas), ref)


@pytest.mark.parametrize("values, has_recipe", [
    ([ToDtype(torch.float32, scale=True), Normalize(MEAN, STD)], True),
    ([ToDtype(torch.float32, scale=True)], True),
    ([ToDtype(torch.float32), Normalize((100.0,), (57.3,))], True),
    ([ToDtype(torch.float32, scale=True), Normalize(MEAN, STD), Normalize((0.5,), (2.0,))], False),
])
def test_computed_float_values_equal_torch_ops(images, values, has_recipe):
    """Float values are computed from the ops' float32 steps where those reproduce the
    value table exactly, else looked up: either way torch's ops give the same bits; a
    recipe that does not match the table is not used."""
    datas = [c.data for c in images[:8]]
    ops = [RandomResizedCrop((64, 72)), RandomHorizontalFlip()]
    ref = v2_values(ImagePipeline(ops, generator=torch.Generator().manual_seed(3))(datas), values)
    pipe = ImagePipeline(ops + values, generator=torch.Generator().manual_seed(3))
    assert (pipe.recipe is not None) == has_recipe
    if has_recipe:  # the steps reproduce the table, so the kernel computes the values
        mul, m, sd = (pipe.recipe[:, k, None].numpy() for k in range(3))
        computed = (np.arange(256, dtype=np.float32) * mul - m) / sd
        assert computed.dtype == np.float32 and computed.tobytes() == pipe.lut.numpy().tobytes()
        # and the compiled check agrees (a fused multiply-subtract would round otherwise)
        assert _C.recipe_reproduces_table(pipe.lut, pipe.recipe, pipe.mode_code)
    assert torch.equal(pipe(datas), ref)
    if has_recipe:
        pipe.recipe = pipe.recipe * 1.001  # off by a little: must fall back to the table
        pipe.generator.manual_seed(3)
        assert torch.equal(pipe(datas), ref)


def test_layouts_and_flip(images):
    datas = [c.data for c in images[:6]]
    nchw = ImagePipeline([Resize((100, 120))])(datas)
    nhwc = ImagePipeline([Resize((100, 120))], layout="NHWC")(datas)
    flipped = ImagePipeline([Resize((100, 120)), RandomHorizontalFlip(p=1.0)])(datas)
    assert nchw.shape == (6, 3, 100, 120) and nhwc.shape == (6, 100, 120, 3)
    assert torch.equal(nchw.permute(0, 2, 3, 1), nhwc)
    assert torch.equal(flipped, nchw.flip(-1))


def test_gray_pipeline(images):
    datas = [c.data for c in images[:4]]
    gray = ImagePipeline([Resize((64, 64))], mode="L", dct_scaling=False, fast_idct=False)(datas)
    assert gray.shape == (4, 1, 64, 64)
    for data, out in zip(datas, gray):
        ref = pil_resized_crop(data, (0, 0, *pil_decode(data).shape[1::-1]), (64, 64), mode="L")
        assert np.abs(out[0].numpy().astype(int) - ref[..., 0]).max() <= 1


def test_center_crop_pads_like_torchvision(photos):
    small = encode_jpeg(Image.fromarray(photos["astronaut"][:40, :50]), quality=95)
    out = ImagePipeline([CenterCrop((45, 61))], layout="NHWC", dct_scaling=False, fast_idct=False)([small])[0].numpy()
    full = decode_jpeg(small).numpy()
    # torchvision pads (crop - size) // 2 on the top/left, the rest bottom/right, with zeros
    top, left = (45 - 40) // 2, (61 - 50) // 2
    assert np.array_equal(out[top : top + 40, left : left + 50], full)
    assert out[:top].max() == 0 and out[:, :left].max() == 0 and out[top + 40 :].max() == 0


def test_roi_decode_is_exact(images):
    """CenterCrop without resize decodes only the region: same pixels as a full decode."""
    for case in images:
        full = pil_decode(case.data)
        h, w = full.shape[:2]
        ch, cw = max(1, h // 2 - 3), max(1, w // 3 + 5)
        out = ImagePipeline([CenterCrop((ch, cw))], layout="NHWC", dct_scaling=False, fast_idct=False, fast_color=False)([case.data])[0].numpy()
        top, left = int(round((h - ch) / 2.0)), int(round((w - cw) / 2.0))
        assert np.array_equal(out, full[top : top + ch, left : left + cw]), case.name


def test_exif_orientation_in_the_pipeline(jpeg_cases):
    oriented = [c for c in jpeg_cases if c.name.startswith("exif-")]
    datas = [c.data for c in oriented]
    pipe = ImagePipeline([CenterCrop((100, 90))], layout="NHWC", apply_exif_orientation=True, dct_scaling=False, fast_idct=False, fast_color=False)
    batch = pipe(datas).numpy()
    for case, out in zip(oriented, batch):
        full = decode_jpeg(case.data, apply_exif_orientation=True).numpy()
        h, w = full.shape[:2]
        top, left = int(round((h - 100) / 2.0)), int(round((w - 90) / 2.0))
        assert np.array_equal(out, full[top : top + 100, left : left + 90]), case.name


@pytest.mark.parametrize("orientation", range(1, 9))
def test_exif_orientation_with_dct_scaling_matches_pil(photos, orientation):
    """A size that is no multiple of 8: the partial last block of a DCT-scaled decode is
    at the stored image's far edge, which a mirror or rotation brings to the near one."""
    img = Image.fromarray(photos["coffee"]).resize((1401, 1201), Image.Resampling.BICUBIC)
    data = with_orientation(img, orientation, quality=95)
    pipe = ImagePipeline([Resize((116, 100))], layout="NHWC", apply_exif_orientation=True)
    got = pipe([data])[0].numpy()
    with Image.open(io.BytesIO(data)) as stored:
        want = np.asarray(ImageOps.exif_transpose(stored).convert("RGB").resize((100, 116), Image.Resampling.BILINEAR))
    assert psnr(got, want) >= 39, psnr(got, want)


def test_same_seed_same_batch_whatever_the_thread_count(images):
    datas = [c.data for c in images] * 2
    ops = [RandomResizedCrop(64), RandomHorizontalFlip(), ToDtype(torch.float32, scale=True)]
    batches = [
        ImagePipeline(ops, num_threads=t, generator=torch.Generator().manual_seed(42))(datas) for t in (1, 2, 3)
    ]
    assert torch.equal(batches[0], batches[1]) and torch.equal(batches[0], batches[2])
    other = ImagePipeline(ops, generator=torch.Generator().manual_seed(43))(datas)
    assert not torch.equal(batches[0], other)
    torch.manual_seed(5)
    a = ImagePipeline(ops)(datas).clone()
    torch.manual_seed(5)
    assert torch.equal(a, ImagePipeline(ops)(datas))


def test_reused_buffers_never_overwrite_a_held_batch(images):
    datas = [c.data for c in images[:4]]
    pipe = ImagePipeline([RandomResizedCrop(32)], generator=torch.Generator().manual_seed(0))
    first = pipe(datas)
    kept = first.clone()
    view = pipe(datas)[1:]  # only a view survives
    for _ in range(6):
        pipe(datas)
    assert torch.equal(first, kept)
    assert view.untyped_storage().data_ptr() not in {b.untyped_storage().data_ptr() for b in [pipe(datas)]}
    out = torch.empty(pipe.output_shape(4), dtype=torch.uint8)
    assert pipe(datas, out=out) is out


@pytest.mark.parametrize("mode", ["RGB", "L"])
def test_non_jpeg_inputs_in_a_batch(photos, mode):
    img = Image.fromarray(photos["coffee"][:120, :160])
    png = io.BytesIO()
    img.save(png, "PNG")
    jpeg = encode_jpeg(img, quality=100, subsampling=0)
    out = ImagePipeline([Resize((60, 80))], layout="NHWC", mode=mode)([png.getvalue(), jpeg])
    want = np.asarray(img.convert(mode).resize((80, 60), Image.BILINEAR)).reshape(60, 80, -1)
    assert np.abs(out[0].numpy().astype(int) - want).max() <= 1
    assert psnr(out[0].numpy(), out[1].numpy()) > 35


@pytest.mark.parametrize("height,width", [(375, 500), (500, 375), (224, 224), (100, 1000)])
def test_random_resized_crop_boxes_follow_torchvision(height, width):
    """Same algorithm as torchvision's get_params (reference in plain Python): boxes in
    bounds, and the same distribution of area, aspect and position over 20k draws."""
    n = 20000
    boxes = _C.sample_resized_crops(torch.tensor([[height, width]] * n), 0.08, 1.0, 3 / 4, 4 / 3, 11).double()
    rng = random.Random(0)
    ref = torch.tensor([RandomResizedCrop.get_params(height, width, (0.08, 1.0), (3 / 4, 4 / 3), rng) for _ in range(n)]).double()
    top, left, h, w = boxes.unbind(1)
    assert (top >= 0).all() and (left >= 0).all() and (top + h <= height).all() and (left + w <= width).all()
    for stat in (lambda b: b[:, 2] * b[:, 3] / (height * width), lambda b: b[:, 3] / b[:, 2],
                 lambda b: b[:, 0] / height, lambda b: b[:, 1] / width):
        ours, theirs = stat(boxes).sort().values, stat(ref).sort().values
        assert abs(ours.mean() - theirs.mean()) < 0.01
        # two-sample Kolmogorov-Smirnov distance
        grid = torch.cat([ours, theirs])
        cdf = lambda x: torch.searchsorted(x, grid, right=True).double() / n
        assert (cdf(ours) - cdf(theirs)).abs().max() < 0.025


def test_random_resized_crop_fallback_is_torchvision_center_crop():
    # 10 x 1000 never fits an aspect ratio in [3/4, 4/3]: the central crop at the max ratio
    boxes = _C.sample_resized_crops(torch.tensor([[10, 1000]] * 5), 0.08, 1.0, 3 / 4, 4 / 3, 3)
    expected = RandomResizedCrop.get_params(10, 1000, (0.08, 1.0), (3 / 4, 4 / 3), random.Random(0))
    assert (boxes == torch.tensor(expected)).all()


def test_pickles_without_its_batch_buffers(images):
    import pickle

    pipe = ImagePipeline([CenterCrop(64)], generator=torch.Generator().manual_seed(3))
    pipe([c.data for c in images[:8]])
    copy = pickle.loads(pickle.dumps(pipe))
    assert len(pickle.dumps(pipe)) < 100_000 and copy.generator.initial_seed() == 3
    assert torch.equal(copy([images[0].data]), pipe([images[0].data]))


def test_empty_batch():
    for ops in ([RandomResizedCrop(32)], [Resize(40), CenterCrop(32)]):
        assert ImagePipeline(ops)([]).shape == (0, 3, 32, 32)
        batch, valid = ImagePipeline(ops, on_error="skip")([])
        assert batch.shape == (0, 3, 32, 32) and valid.shape == (0,)


def test_fusing_rules():
    with pytest.raises(ValueError, match="ToDtype"):
        ImagePipeline([CenterCrop(8), Normalize(MEAN, STD)])
    with pytest.raises(ValueError, match="output size"):
        ImagePipeline([Resize(256)])
    with pytest.raises(TypeError, match="cannot fuse"):
        ImagePipeline([CenterCrop(8), object()])
    with pytest.raises(ValueError, match="std"):
        Normalize(MEAN, (0.2, 0.0, 0.1))
    with pytest.raises(ValueError, match="min, max"):
        RandomResizedCrop(224, scale=(1.0, 0.5))
    with pytest.raises(ValueError, match="bilinear"):
        Resize(10, interpolation="nearest")
    pipe = ImagePipeline([RandomResizedCrop(224), ToDtype(torch.bfloat16, scale=True)], layout="NHWC")
    assert pipe.output_shape(8) == (8, 224, 224, 3) and pipe.dtype == torch.bfloat16
    with pytest.raises(ValueError, match="out must be"):
        pipe([b""], out=torch.empty(1, 3, 224, 224))


def test_torchvision_argument_forms(images):
    """What torchvision accepts: PIL's interpolation constant, a scale from 0, scalar
    mean/std and `inplace`, a numpy integer size; one image instead of a batch is refused
    (iterating its bytes as images would be nonsense)."""
    from PIL import Image

    datas = [c.data for c in images[:4]]
    by_name = ImagePipeline([Resize(48), CenterCrop(40)])(datas)
    by_pil = ImagePipeline([Resize(np.int64(48), interpolation=Image.Resampling.BILINEAR), CenterCrop(40)])(datas)
    assert torch.equal(by_name, by_pil)
    assert torch.equal(by_name, ImagePipeline([Resize(48, interpolation=2), CenterCrop(40)])(datas))
    with pytest.raises(ValueError, match="bilinear"):
        Resize(10, interpolation=Image.Resampling.BICUBIC)
    assert ImagePipeline([RandomResizedCrop(32, scale=(0.0, 1.0))])(datas).shape == (4, 3, 32, 32)
    scalar = Normalize(0.5, 0.25, inplace=True)
    assert (scalar.mean, scalar.std) == ((0.5,), (0.25,))
    as_objects = np.empty(len(datas), dtype=object)
    as_objects[:] = datas
    assert torch.equal(ImagePipeline([CenterCrop(8)])(as_objects), ImagePipeline([CenterCrop(8)])(datas))
    for one in (datas[0], bytearray(datas[0]), torch.frombuffer(bytearray(datas[0]), dtype=torch.uint8),
                np.frombuffer(datas[0], dtype=np.uint8)):
        for on_error in ("raise", "skip"):
            with pytest.raises(TypeError, match=r"a batch.*\[image\]"):
                ImagePipeline([CenterCrop(8)], on_error=on_error)(one)


def test_in_torch_dataloader_workers_after_use_in_the_parent(images):
    """The README's drop-in use: the pipeline as collate_fn in forked DataLoader workers,
    after the parent already ran it with several OpenMP threads (no hang, same batches)."""
    datas = [c.data for c in images[:12]]
    pipe = ImagePipeline([Resize(72), CenterCrop(64)], num_threads=2)
    expected = pipe(datas).clone()
    loader = torch.utils.data.DataLoader(
        EncodedImages(datas), batch_size=4, num_workers=2, collate_fn=lambda b: pipe(b).clone(), timeout=60
    )
    assert torch.equal(torch.cat(list(loader)), expected)


class _Collate:
    """The README's collate: pipeline batch and labels, no copy."""

    def __init__(self, pipe):
        self.pipe = pipe

    def __call__(self, samples):
        return self.pipe(samples)


def test_batches_sent_from_workers_are_never_overwritten(images):
    """DataLoader workers move a batch's storage to shared memory to send it; the pipeline
    must not reuse that buffer for a later batch while the main process holds it."""
    datas = [c.data for c in images] * 4
    pipe = ImagePipeline([Resize(72), CenterCrop(64)])
    expected = [pipe(datas[i : i + 4]).clone() for i in range(0, len(datas), 4)]
    loader = torch.utils.data.DataLoader(
        EncodedImages(datas), batch_size=4, num_workers=2, collate_fn=_Collate(pipe), prefetch_factor=4, timeout=60
    )
    received = list(loader)  # all held at once
    assert len(received) == len(expected)
    for got, want in zip(received, expected):
        assert torch.equal(got, want)


def test_pin_memory_without_cuda_warns_and_still_works(images):
    if torch.cuda.is_available():
        pytest.skip("CUDA present: pinning is real")
    with pytest.warns(UserWarning, match="pin_memory"):
        pipe = ImagePipeline([CenterCrop(16)], pin_memory=True)
    assert pipe([images[0].data]).shape == (1, 3, 16, 16)


def test_large_photo_uses_dct_scaling_and_keeps_quality(photos):
    """A 3000x2250 photo cropped to 224: decoded at 1/2..1/8 scale, still > 35 dB."""
    big = Image.fromarray(photos["retina"]).resize((3000, 2250), Image.Resampling.BICUBIC)
    data = encode_jpeg(big, quality=90)
    pipe = ImagePipeline([RandomResizedCrop(224)], layout="NHWC", num_threads=2)
    geometry, _ = planned(pipe, [data] * 6, seed=9)
    batch = pipe([data] * 6).numpy()
    unscaled = _without_dct_scaling(pipe, [data] * 6, seed=9)
    scales = set()
    for out, plain, g in zip(batch, unscaled, geometry.tolist()):
        assert psnr(out, pil_resized_crop(data, tuple(int(v) for v in g[:4]), (224, 224))) >= 35.0
        k = _dct_scale(3000, 2250, g)
        assert (k < 8) == (not np.array_equal(out, plain)), k
        scales.add(k)
    assert scales & {1, 2, 4}
