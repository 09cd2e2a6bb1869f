#!/usr/bin/env bash
# Packs what a GPU-machine run needs into a carry folder (git-ignored, carried
# by the device tool): the named binaries from the build folder and the shared
# libraries they load that the GPU machine (Ubuntu 24.04) lacks.
# Usage: [BUILD=build] [CARRY=.carry] pack.sh BINARY...   (BINARY relative to BUILD)
set -euo pipefail
cd "$(dirname "$0")/../.."
BUILD=${BUILD:-build}
CARRY=${CARRY:-.carry}
mkdir -p "$CARRY/bin" "$CARRY/lib"
for b in "$@"; do
  cp "$BUILD/$b" "$CARRY/bin/"
  # Libraries outside glibc/libstdc++ that Ubuntu 24.04 does not ship at these sonames.
  ldd "$BUILD/$b" | awk '/=>/ {print $3}' | grep -E 'libutf8proc|libcaf|libopenblas|libgfortran|libquadmath|libgomp|libtomlplusplus|libmsgpack|libfmt|libspdlog' |
    while read -r lib; do cp -L "$lib" "$CARRY/lib/"; done || true
done
du -sh "$CARRY"
