#!/usr/bin/env bash
# The CUDA backend's whole benchmark suite (issue 5) in one device call.
#
#   here:  benches/gpu/suite.sh pack          # configure + build (nvcc), pack binaries and the
#                                             # libraries the GPU machine lacks into .carry-suite/
#   there: benches/gpu/suite.sh run "$OUT"    # device tool: carry [".carry-suite"]
#
# `run` writes suite.log (everything printed), suite.json (every bench's
# JSON under one key per bench) and decode_roofline.png into OUT (the device
# tool returns at most 8 files). Order: device facts, the CUDA tests, kernel
# and attention tables against the ceilings and PyTorch SDPA, GEMV and
# sampling, then the engine and transformers on the same shapes, then the
# plot. Environment: SUITE_PARTS (default "tests kernels attention gemv
# sample engine peer"; also sanitize: compute-sanitizer
# memcheck and racecheck on the kernel tests), PEER_BUDGET_S (transformers' time budget, default 240).
set -uo pipefail
cd "$(dirname "$0")/../.."
BUILD=${BUILD:-build-gpu}
CARRY=${CARRY:-.carry-suite}
BINS="troupe_kernels_cuda_tests:tests bench_cuda_kernels bench_cuda_attention bench_cuda_engine bench_cuda_gemv bench_cuda_sample"

pack() {
  command -v nvcc >/dev/null || [ -x /usr/local/cuda/bin/nvcc ] || { echo "suite.sh pack: nvcc not found" >&2; exit 1; }
  cmake -S . -B "$BUILD" -G Ninja -DCMAKE_BUILD_TYPE=Release -DTROUPE_CUDA=ON >/dev/null || exit 1
  local targets="" paths=""
  for b in $BINS; do
    targets+=" ${b%%:*}"
    case $b in *:*) paths+=" ${b#*:}/${b%%:*}" ;; *) paths+=" $b" ;; esac
  done
  cmake --build "$BUILD" -j"$(nproc)" --target $targets || exit 1
  rm -rf "$CARRY"
  BUILD=$BUILD CARRY=$CARRY benches/gpu/pack.sh $paths >/dev/null || exit 1
  strip "$CARRY"/bin/* "$CARRY"/lib/* 2>/dev/null
  # The device tool carries at most 64 MiB with the tree: OpenBLAS alone is ~36 MB.
  xz -T0 -6 "$CARRY"/lib/*.so*
  du -sh "$CARRY"
  echo "device call: carry [\"$CARRY\"], command: bash benches/gpu/suite.sh run \"\$OUT\""
}

run() {
  local out=${1:?usage: suite.sh run OUT_DIR}
  local parts=${SUITE_PARTS:-tests kernels attention gemv sample engine peer}
  local j="$out/json"
  mkdir -p "$j"
  local lib
  lib=$(mktemp -d)
  cp "$CARRY"/lib/* "$lib"/ && unxz "$lib"/*.xz
  export LD_LIBRARY_PATH="$lib:${LD_LIBRARY_PATH:-}"
  # cuDNN 9.19 of the Python environment first (another libcudnn on the machine is slower).
  local cudnn
  cudnn=$(python3 -c 'import nvidia.cudnn as m; print(list(m.__path__)[0])' 2>/dev/null) &&
    export LD_LIBRARY_PATH="$cudnn/lib:$LD_LIBRARY_PATH"
  local bin="$CARRY/bin" t0=$SECONDS
  {
    echo "== device"
    nvidia-smi --query-gpu=name,memory.total,driver_version,clocks.max.sm,clocks.max.mem --format=csv
    python3 -c 'import torch, transformers; print("torch", torch.__version__, "transformers", transformers.__version__)'
    for p in $parts; do
      echo "== $p (t=$((SECONDS - t0)) s)"
      case $p in
        tests)  # on one GPU the two-process transfer-engine cases run with both sides on it
          [ "$(nvidia-smi -L | wc -l)" -lt 2 ] && export TROUPE_TE_SAME_GPU=1
          TROUPE_FIXTURES_DIR=$PWD/tests/fixtures "$bin/troupe_kernels_cuda_tests" ;;
        kernels) "$bin/bench_cuda_kernels" --json "$j/kernels.json" ;;
        attention) "$bin/bench_cuda_attention" --json "$j/attention.json"
                   python3 benches/gpu/attention_sdpa.py "$j/sdpa.json" ;;
        gemv) "$bin/bench_cuda_gemv" --json "$j/gemv.json" ;;
        sample) "$bin/bench_cuda_sample" --json "$j/sample.json" ;;
        engine) "$bin/bench_cuda_engine" --json "$j/engine.json" ;;
        sanitize)  # memcheck on every kernel test but the whole-model ones, racecheck on the shared-memory kernels
          local cs=compute-sanitizer
          command -v $cs >/dev/null || cs=/usr/local/cuda/bin/compute-sanitizer
          TROUPE_FIXTURES_DIR=$PWD/tests/fixtures $cs --tool memcheck --error-exitcode 9 \
            "$bin/troupe_kernels_cuda_tests" -tce='cuda model*' | tail -4
          echo "memcheck exit ${PIPESTATUS[0]}"
          $cs --tool racecheck --error-exitcode 9 "$bin/troupe_kernels_cuda_tests" \
            -tc='attention decode*,attention prefill (CUDA*,*rmsnorm*,sample_cuda radix*,sample_cuda mixed*,gemv kernels chained*' | tail -4
          echo "racecheck exit ${PIPESTATUS[0]}" ;;
        peer) python3 benches/gpu/transformers_peer.py --json "$j/peer.json" --time-budget "${PEER_BUDGET_S:-240}" ;;
        *) echo "suite.sh: unknown part '$p'" ;;
      esac
      echo "-- $p exit $?"
    done
    [ -f "$j/engine.json" ] && python3 benches/gpu/plot_decode.py "$j/engine.json" \
      "$([ -f "$j/peer.json" ] && echo "$j/peer.json" || echo -)" "$out/decode_roofline.png"
    python3 - "$j" "$out/suite.json" <<'PY'
import json, os, sys
d = sys.argv[1]
merged = {f[:-5]: json.load(open(os.path.join(d, f))) for f in sorted(os.listdir(d)) if f.endswith(".json")}
json.dump(merged, open(sys.argv[2], "w"), indent=1)
PY
    rm -rf "$j"
    echo "== done in $((SECONDS - t0)) s"
  } 2>&1 | tee "$out/suite.log"
}

case ${1:-} in
  pack) pack ;;
  run) shift; run "$@" ;;
  *) echo "usage: suite.sh pack | suite.sh run OUT_DIR" >&2; exit 2 ;;
esac
