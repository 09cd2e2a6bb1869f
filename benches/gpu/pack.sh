#!/usr/bin/env bash
# Packs what a GPU-machine run needs into .carry/ (git-ignored, carried by the
# device tool): the named binaries from build/ and the shared libraries they
# load that the GPU machine (Ubuntu 24.04) lacks. Usage: pack.sh BINARY...
set -euo pipefail
cd "$(dirname "$0")/../.."
mkdir -p .carry/bin .carry/lib
for b in "$@"; do
  cp "build/$b" .carry/bin/
  # Libraries outside glibc/libstdc++ that Ubuntu 24.04 does not ship at these sonames.
  ldd "build/$b" | awk '/=>/ {print $3}' | grep -E 'libutf8proc|libcaf|libopenblas|libgfortran|libmsgpack|libfmt|libspdlog' |
    while read -r lib; do cp -L "$lib" .carry/lib/; done || true
done
du -sh .carry
