#!/usr/bin/env bash
# Reproduces the README's load figures: a fresh release server per run, pinned to core 0 (one core, like
# Nchan's single worker), the load generator pinned to core 1. Prints one summary line per run and keeps
# every RESULT line in target/figures.jsonl.  Usage: benches/figures.sh [quick|redis]
# `redis` runs the Redis-backend scenarios against a redis-server of its own (port 16390, no persistence).
set -euo pipefail
cd "$(dirname "$0")/.."
cargo build --release -q
cargo bench --bench load --no-run -q 2>/dev/null
LOAD=$(ls -t target/release/deps/load-* | grep -v '\.d$' | head -1)
OUT=target/figures.jsonl
: > "$OUT"
PORT=18090
BACKEND_ARGS=()
if [ "${1:-}" = redis ]; then
  redis-server --port 16390 --bind 127.0.0.1 --save "" --appendonly no --daemonize no >/dev/null &
  REDIS_PID=$!
  trap 'kill $REDIS_PID 2>/dev/null || true' EXIT
  for _ in $(seq 50); do redis-cli -p 16390 ping >/dev/null 2>&1 && break; sleep 0.1; done
  BACKEND_ARGS=(--redis-url redis://127.0.0.1:16390)
fi

run() { # name, load args...
  local name=$1; shift
  [ ${#BACKEND_ARGS[@]} -gt 0 ] && redis-cli -p 16390 flushall >/dev/null
  taskset -c 0 ./target/release/herald --listen 127.0.0.1:$PORT --history-size 1000 "${BACKEND_ARGS[@]}" 2>/dev/null &
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
      f'cpu/delivery {r["server_cpu_us_per_delivery"]:.2f} us  '
      f'publish p50 {r["publish_rtt"]["p50_ms"]:.2f} p99 {r["publish_rtt"]["p99_ms"]:.2f} ms')
PY
  sleep 1
}

if [ "${1:-}" = redis ]; then
  run redis-idle-10k             --conns 10000 --topics 100  --rate 1    --duration 2
  run redis-10k-1topic-10/s      --conns 10000 --topics 1    --rate 10   --duration 10
  run redis-10k-1topic-1000/s    --conns 10000 --topics 1    --rate 1000 --duration 5 --publishers 16
  run redis-10k-1000topics-2k/s  --conns 10000 --topics 1000 --rate 2000 --duration 10 --publishers 16
  run redis-publish-only-5k/s    --conns 1     --topics 1000 --rate 5000 --duration 10 --publishers 32
  exit 0
fi
run idle-1k             --conns 1000  --topics 100  --rate 1    --duration 2
run idle-10k            --conns 10000 --topics 100  --rate 1    --duration 2
[ "${1:-}" = quick ] && exit 0
run 10k-1topic-10/s     --conns 10000 --topics 1    --rate 10   --duration 10
run 10k-1topic-25/s     --conns 10000 --topics 1    --rate 25   --duration 10
run 10k-1topic-50/s     --conns 10000 --topics 1    --rate 50   --duration 10
run 10k-1000topics-2k/s --conns 10000 --topics 1000 --rate 2000 --duration 10
run 10k-1000topics-5k/s --conns 10000 --topics 1000 --rate 5000 --duration 10 --publishers 16
run 10k-1000topics-10k/s --conns 10000 --topics 1000 --rate 10000 --duration 10 --publishers 32
