#!/usr/bin/env bash
# Sets up a fresh Debian 12 / Python 3.11 machine for fastloader, idempotently:
# apt packages, a venv in ./.venv, torch (CPU) and the rest, pillow-simd in place of
# pillow, then the package itself with its compiled extension.
# Usage: bash .ci/setup.sh      (a second run skips what is already done)
set -euo pipefail
cd "$(dirname "$0")/.."

APT_PACKAGES="build-essential libturbojpeg0-dev libjpeg62-turbo-dev zlib1g-dev"
PY=${PYTHON:-python3}
VENV=.venv

missing=$(for p in $APT_PACKAGES; do dpkg -s "$p" >/dev/null 2>&1 || echo "$p"; done)
if [ -n "$missing" ]; then
  echo "[setup] apt-get install $missing"
  SUDO=""; [ "$(id -u)" = 0 ] || SUDO=sudo
  $SUDO apt-get update -qq
  DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq $missing >/dev/null
fi

[ -x "$VENV/bin/python" ] || { echo "[setup] creating $VENV"; "$PY" -m venv "$VENV"; }
pip() { "$VENV/bin/python" -m pip "$@"; }
stamp="$VENV/.fastloader-deps-$(cat .ci/requirements.txt | sha1sum | cut -c1-12)"
if [ ! -f "$stamp" ]; then
  echo "[setup] installing python dependencies"
  pip install -q --upgrade pip setuptools wheel
  # torch first and pinned: anything that pulls an unpinned torch would fetch a CUDA build.
  pip install -q torch==2.13.0
  pip install -q -r .ci/requirements.txt
  touch "$stamp"
fi

# pillow-simd owns the same PIL package as pillow (pulled in by scikit-image): put it in
# pillow's place last, built from source with AVX2 where the CPU has it.
if ! "$VENV/bin/python" -c "import PIL, sys; sys.exit('.post' not in PIL.__version__)" 2>/dev/null; then
  echo "[setup] building pillow-simd"
  pip uninstall -q -y pillow pillow-simd >/dev/null 2>&1 || true
  simd_flags=""; grep -qw avx2 /proc/cpuinfo && simd_flags="-mavx2"
  CC="cc $simd_flags" pip install -q --no-cache-dir --no-binary :all: --no-deps pillow-simd==12.1.1.post0
fi

echo "[setup] building fastloader"
pip install -q --no-build-isolation --no-deps -e .
"$VENV/bin/python" -c "import fastloader, fastloader._C; print('[setup] fastloader', fastloader.__version__, 'ready')"
