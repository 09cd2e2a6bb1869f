#!/usr/bin/env bash
# Installs every Debian 12 package that building, running and testing troupe need.
# Idempotent: packages already present are skipped, and `apt-get update` runs at
# most once per invocation (only when something is missing).
set -euo pipefail

packages=(
  build-essential cmake ninja-build ccache pkg-config git
  libcaf-dev                 # actors (CAF 0.17)
  libucx-dev ucx-utils       # transport
  libssl-dev                 # libcrypto: HMAC-SHA256 of the node handshake
  libmsgpack-cxx-dev         # wire format
  libspdlog-dev libfmt-dev   # logging
  doctest-dev                # tests
  libtomlplusplus-dev        # config
  libboost-dev               # Beast/Asio (header-only), msgpack adaptors
  nlohmann-json3-dev         # JSON (config.json, HTTP bodies)
  libcli11-dev               # command line
  libpcre2-dev               # tokenizer pre-tokenization
  libutf8proc-dev            # tokenizer Unicode normalization (NFC, NFKC) and categories
  libopenblas-dev            # CPU GEMM
  gnuplot-nox                # PNG plots of benchmarks
)

missing=()
for p in "${packages[@]}"; do
  if ! dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed"; then
    missing+=("$p")
  fi
done

# Tests fetch real tokenizers with npm; Debian's npm brings Node.js along. A
# Node.js that already ships npm (e.g. NodeSource's) is left alone.
if ! command -v npm >/dev/null 2>&1; then
  missing+=(npm)
fi

if ((${#missing[@]} == 0)); then
  echo "install-deps: all ${#packages[@]} packages present"
  exit 0
fi

sudo=""
if [[ $(id -u) -ne 0 ]]; then sudo="sudo"; fi
echo "install-deps: installing ${missing[*]}"
$sudo apt-get update -qq
DEBIAN_FRONTEND=noninteractive $sudo apt-get install -y -qq --no-install-recommends "${missing[@]}"
