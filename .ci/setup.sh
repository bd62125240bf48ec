#!/usr/bin/env bash
# Sets up a Debian 12 / Python 3.11 machine for fastloader, idempotently: apt packages, a
# venv in ./.venv, torch (CPU) and the rest, pillow-simd in place of pillow, then the
# package itself with its compiled extension. A second run skips what is done.
#   bash .ci/setup.sh
set -euo pipefail
cd "$(dirname "$0")/.."

PY=${PYTHON:-python3}
VENV=.venv
# libturbojpeg0: the tests write YCCK JPEGs with it (PIL cannot)
APT_PACKAGES="build-essential libjpeg62-turbo-dev zlib1g-dev libwebp-dev libturbojpeg0"
# A bare Debian python3 needs these for venvs and for compiling extensions.
"$PY" -c "import venv, ensurepip" 2>/dev/null || APT_PACKAGES="$APT_PACKAGES python3-venv"
"$PY" -c "import sysconfig, os, sys; sys.exit(not os.path.exists(os.path.join(sysconfig.get_paths()['include'], 'Python.h')))" \
  || APT_PACKAGES="$APT_PACKAGES python3-dev"

missing=$(for p in $APT_PACKAGES; do dpkg -s "$p" >/dev/null 2>&1 || echo "$p"; done)
if [ -n "$missing" ]; then
  echo "[setup] apt-get install" $missing
  SUDO=""; [ "$(id -u)" = 0 ] || SUDO=sudo
  $SUDO apt-get update -qq
  DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq $missing >/dev/null
fi

[ -x "$VENV/bin/python" ] || { echo "[setup] creating $VENV"; "$PY" -m venv "$VENV"; }
export PATH="$PWD/$VENV/bin:$PATH"
pip() { "$VENV/bin/python" -m pip "$@"; }

stamp="$VENV/.deps-$(sha1sum .ci/requirements.txt | cut -c1-12)"
if [ ! -f "$stamp" ]; then
  echo "[setup] installing python dependencies"
  pip install -q --upgrade pip setuptools wheel
  # torch first and pinned: anything that pulls an unpinned torch would fetch a CUDA build.
  pip install -q torch==2.13.0
  pip install -q -r .ci/requirements.txt
  touch "$stamp"
fi

# pillow-simd owns the same PIL package as pillow (pulled in by scikit-image): put it in
# pillow's place last, built from source with AVX2 where the CPU has it, and with WebP.
if ! "$VENV/bin/python" -c "import sys, PIL; from PIL import features
sys.exit('.post' not in PIL.__version__ or not features.check('webp'))" 2>/dev/null; then
  echo "[setup] building pillow-simd"
  pip uninstall -q -y pillow pillow-simd >/dev/null 2>&1 || true
  simd=""; grep -qw avx2 /proc/cpuinfo && simd="-mavx2"
  CC="cc $simd" pip install -q --no-cache-dir --no-binary :all: --no-deps pillow-simd==12.1.1.post0
fi

# The extension: rebuilt only when a source is newer than the built module.
so=$(ls fastloader/_C*.so 2>/dev/null | head -1 || true)
if [ -z "$so" ] || [ -n "$(find csrc setup.py -newer "$so" -print -quit)" ] \
   || ! (root=$PWD; cd / && "$root/$VENV/bin/python" -c "import fastloader._C") 2>/dev/null; then
  echo "[setup] building fastloader (C++ extension, about a minute)"
  MAX_JOBS=$(nproc) pip install -q --no-build-isolation --no-deps -e .
fi
echo "[setup] ready: $("$VENV/bin/python" -c "import fastloader, torch, PIL; print('fastloader', fastloader.__version__, '| torch', torch.__version__, '| PIL', PIL.__version__)")"
