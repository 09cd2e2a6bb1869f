#!/usr/bin/env bash
# Conformance with the official openai npm client: installs it (pinned, into
# BUILD/npm), starts `troupe serve` on an ephemeral port with an API key,
# runs conformance.test.mjs with node's test runner, stops the server.
# usage: run.sh TROUPE_BINARY BUILD_DIR
set -euo pipefail
bin=${1:?troupe binary}
build=${2:?build dir}
here=$(cd "$(dirname "$0")" && pwd)
mkdir -p "$build/npm"
cp "$here/package.json" "$here/conformance.test.mjs" "$build/npm/"
if [[ ! -d "$build/npm/node_modules/openai" ]]; then
  (cd "$build/npm" && npm install --silent --no-audit --no-fund >/dev/null)
fi
key="sk-troupe-test-$$"
log="$build/npm/serve.log"
"$bin" serve --port 0 --api-key "$key" --threads 2 >"$log" 2>&1 &
pid=$!
trap 'kill $pid 2>/dev/null; wait $pid 2>/dev/null || true' EXIT
for _ in $(seq 1 300); do
  port=$(sed -n 's#^listening on http://127.0.0.1:\([0-9]*\)$#\1#p' "$log")
  [[ -n "$port" ]] && break
  kill -0 $pid 2>/dev/null || { cat "$log"; exit 1; }
  sleep 0.1
done
[[ -n "${port:-}" ]] || { echo "server did not start"; cat "$log"; exit 1; }
cd "$build/npm"
TROUPE_URL="http://127.0.0.1:$port" TROUPE_KEY="$key" node --test conformance.test.mjs
