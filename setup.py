"""Builds fastloader._C: a CppExtension always; CUDA sources only when the installed torch
has CUDA and nvcc is found (FASTLOADER_FORCE_CPU=1 turns them off). FASTLOADER_SANITIZE=1
builds it with AddressSanitizer and UBSan (see .ci/sanitize)."""
import glob
import os
import shutil

from setuptools import setup
from torch.utils import cpp_extension


def cuda_sources() -> list[str]:
    import torch

    if os.environ.get("FASTLOADER_FORCE_CPU") == "1" or torch.version.cuda is None:
        return []
    home = cpp_extension.CUDA_HOME
    nvcc = os.path.join(home, "bin", "nvcc") if home else shutil.which("nvcc")
    if not nvcc or not os.path.exists(nvcc):
        return []
    return sorted(glob.glob("csrc/cuda/*.cu"))


def simd_flags() -> list[str]:
    """AVX2, and AVX-512 (F, BW) for the kernels written for both widths, where the build
    machine has them (the extension is always built where it runs). FASTLOADER_NO_AVX2=1
    turns both off, FASTLOADER_NO_AVX512=1 the latter."""
    if os.environ.get("FASTLOADER_NO_AVX2") == "1":
        return []
    try:
        with open("/proc/cpuinfo") as f:
            flags = f.read()
    except OSError:
        return []
    if " avx2" not in flags or " fma" not in flags:
        return []
    wide = " avx512f" in flags and " avx512bw" in flags and os.environ.get("FASTLOADER_NO_AVX512") != "1"
    return ["-mavx2", "-mfma", *(["-mavx512f", "-mavx512bw"] if wide else [])]


sources = sorted(glob.glob("csrc/**/*.cpp", recursive=True))
cu = cuda_sources()
# FASTLOADER_SANITIZE=1: an AddressSanitizer + UBSan build, for .ci/sanitize.
sanitize = os.environ.get("FASTLOADER_SANITIZE") == "1"
sanitizers = ["-fsanitize=address,undefined", "-fno-sanitize-recover=undefined", "-fno-omit-frame-pointer", "-g"]
# -ffp-contract=off: a * b - c rounded twice, as torch computes it (GCC would fuse it into
# one FMA, and float outputs would no longer equal torch's ops bit for bit).
cxx_flags = ["-O1" if sanitize else "-O3", "-std=c++20", "-Wall", "-Wno-unknown-pragmas", "-ffp-contract=off",
             *simd_flags(), *(sanitizers if sanitize else [])]
common = dict(
    name="fastloader._C",
    libraries=["jpeg"],
    extra_link_args=["-fsanitize=address,undefined"] if sanitize else [],
)
if cu:
    ext = cpp_extension.CUDAExtension(
        sources=sources + cu,
        define_macros=[("FASTLOADER_WITH_CUDA", "1")],
        extra_compile_args={"cxx": cxx_flags, "nvcc": ["-O3"]},
        **common,
    )
else:
    ext = cpp_extension.CppExtension(sources=sources, extra_compile_args=cxx_flags, **common)

setup(
    ext_modules=[ext],
    cmdclass={"build_ext": cpp_extension.BuildExtension},  # ninja when installed: parallel, incremental
)
