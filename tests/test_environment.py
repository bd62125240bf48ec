"""The set-up gives the PIL baseline its best shot: the SIMD build, on the same libjpeg-turbo."""
import PIL
from PIL import features

import fastloader
from fastloader import _C


def test_pil_is_the_simd_build():
    # pillow-simd versions carry a ".postN" suffix; plain pillow (pulled by scikit-image)
    # would have replaced it if the set-up had not installed pillow-simd last.
    assert ".post" in PIL.__version__, f"PIL {PIL.__version__} is not pillow-simd"


def test_pil_uses_libjpeg_turbo_and_reads_webp():
    assert features.check_feature("libjpeg_turbo")
    assert features.check("webp"), "pillow-simd was built without libwebp-dev"


def test_extension_loads():
    assert hasattr(_C, "decode_jpeg") and hasattr(_C, "augment_batch")
    assert issubclass(fastloader.DecodeError, ValueError)
