#!/usr/bin/env bash
# On the GPU machine: `troupe serve --device cuda` end to end against the CPU
# backend in the same call. Greedy completions from both must be identical;
# then bench serve drives 256 concurrent streams at the CUDA server.
# Usage: serve_cuda.sh TROUPE_BINARY OUT_DIR
set -uo pipefail
B=$1
OUT=$2
cd "$(dirname "$0")/../.."
wait_ready() {
  for _ in $(seq 1 300); do
    python3 -c "import urllib.request,sys; urllib.request.urlopen('http://127.0.0.1:$1/health', timeout=2)" 2>/dev/null && return 0
    sleep 0.2
  done
  return 1
}
post() {  # port path json -> body
  python3 - "$1" "$2" "$3" <<'PY'
import json, sys, urllib.request
req = urllib.request.Request(f"http://127.0.0.1:{sys.argv[1]}{sys.argv[2]}", data=sys.argv[3].encode(),
                             headers={"Content-Type": "application/json"})
print(urllib.request.urlopen(req, timeout=60).read().decode())
PY
}
"$B" devices > "$OUT/devices.txt" 2>&1
"$B" serve --device cuda --port 18000 --admin-key adm > "$OUT/serve_cuda.log" 2>&1 &
GPU=$!
"$B" serve --device cpu --port 18001 --threads 8 > "$OUT/serve_cpu.log" 2>&1 &
CPU=$!
wait_ready 18000 || { echo "cuda server not ready"; cat "$OUT/serve_cuda.log"; }
wait_ready 18001 || { echo "cpu server not ready"; cat "$OUT/serve_cpu.log"; }
same=0
for p in "A day for" "The best way to" "Never" "You will"; do
  body="{\"prompt\": \"$p\", \"max_tokens\": 48, \"temperature\": 0, \"ignore_eos\": true}"
  g=$(post 18000 /v1/completions "$body" | python3 -c 'import json,sys; print(json.load(sys.stdin)["choices"][0]["text"])')
  c=$(post 18001 /v1/completions "$body" | python3 -c 'import json,sys; print(json.load(sys.stdin)["choices"][0]["text"])')
  if [ "$g" == "$c" ]; then same=$((same + 1)); fi
  printf '%s\n--- cuda: %q\n--- cpu:  %q\n' "$p" "$g" "$c" >> "$OUT/greedy.txt"
done
echo "greedy completions identical (cuda vs cpu): $same / 4" | tee -a "$OUT/greedy.txt"
post 18000 /v1/chat/completions '{"messages":[{"role":"user","content":"A fortune, please"}],"max_tokens":24,"temperature":0,"stream":true,"stream_options":{"include_usage":true}}' > "$OUT/chat_stream.txt"
tail -3 "$OUT/chat_stream.txt"
"$B" bench serve --url http://127.0.0.1:18000 --num-prompts 512 --max-concurrency 256 --random-input-len 64 \
  --random-output-len 32 --vocab-size 4000 --measure-overhead --result-json "$OUT/serve_cuda_256.json" > "$OUT/bench_cuda.txt" 2>&1
grep -E "Successful|Failed|Peak|throughput|Median TTFT|Median TPOT|Gateway|Share|minus floor|server mean|Engine, by" "$OUT/bench_cuda.txt"
python3 -c "import urllib.request; print(urllib.request.urlopen(urllib.request.Request('http://127.0.0.1:18000/admin/state', headers={'Authorization':'Bearer adm'})).read().decode())"
kill -TERM $GPU $CPU
wait $GPU $CPU
grep -E "device|listening" "$OUT/serve_cuda.log" | head -5
