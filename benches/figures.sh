#!/usr/bin/env bash
# Reproduces the README's load figures: a fresh release server per run, pinned to core 0 (one core, like
# Nchan's single worker), the load generator pinned to core 1. Prints one summary line per run and keeps
# every RESULT line in target/figures.jsonl.  Usage: benches/figures.sh [quick]
set -euo pipefail
cd "$(dirname "$0")/.."
cargo build --release -q
cargo bench --bench load --no-run -q 2>/dev/null
LOAD=$(ls -t target/release/deps/load-* | grep -v '\.d$' | head -1)
OUT=target/figures.jsonl
: > "$OUT"
PORT=18090

run() { # name, load args...
  local name=$1; shift
  taskset -c 0 ./target/release/herald --listen 127.0.0.1:$PORT --history-size 1000 2>/dev/null &
  local hp=$!
  for _ in $(seq 50); do curl -sf "http://127.0.0.1:$PORT/healthz" >/dev/null && break; sleep 0.1; done
  local line
  line=$(taskset -c 1 "$LOAD" --url "http://127.0.0.1:$PORT" --server-pid "$hp" --threads 1 "$@" 2>&1 | grep '^RESULT ' | tail -1)
  kill "$hp"; wait "$hp" 2>/dev/null || true
  echo "{\"name\":\"$name\",${line#RESULT \{}" >> "$OUT"
  python3 - "$name" "$line" <<'PY'
import json, sys
r = json.loads(sys.argv[2][len("RESULT "):])
l = r["latency"]
print(f'{sys.argv[1]:<28} open {r["conns_open"]:>6}  rss/conn {r["server_rss_per_conn_kib"]:.2f} KiB  '
      f'published {r["publish_achieved_rate"]:.0f}/s  delivered {r["delivered_per_sec"]:.0f}/s  '
      f'missing {r["missing"]} dup {r["duplicates"]}  p50 {l["p50_ms"]:.2f} p99 {l["p99_ms"]:.2f} max {l["max_ms"]:.1f} ms  '
      f'cpu/delivery {r["server_cpu_us_per_delivery"]:.2f} us')
PY
  sleep 1
}

run idle-1k             --conns 1000  --topics 100  --rate 1    --duration 2
run idle-10k            --conns 10000 --topics 100  --rate 1    --duration 2
[ "${1:-}" = quick ] && exit 0
run 10k-1topic-10/s     --conns 10000 --topics 1    --rate 10   --duration 10
run 10k-1topic-25/s     --conns 10000 --topics 1    --rate 25   --duration 10
run 10k-1topic-50/s     --conns 10000 --topics 1    --rate 50   --duration 10
run 10k-1000topics-2k/s --conns 10000 --topics 1000 --rate 2000 --duration 10
run 10k-1000topics-5k/s --conns 10000 --topics 1000 --rate 5000 --duration 10 --publishers 16
run 10k-1000topics-10k/s --conns 10000 --topics 1000 --rate 10000 --duration 10 --publishers 32
