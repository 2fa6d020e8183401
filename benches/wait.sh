#!/usr/bin/env bash
# What --redis-wait-replicas costs: publish latency and throughput through one node, waiting for 0 and for 1
# replica, alternately, in one run. A primary (port 16392) and its replica (16393) of their own, no
# persistence; a fresh release node per run pinned to core 0, the load generator (publishing only: one idle
# connection) pinned to core 1, as in figures.sh. Prints one line per run; keeps the RESULT lines in
# target/wait.jsonl.  Usage: benches/wait.sh [rounds]
set -euo pipefail
cd "$(dirname "$0")/.."
cargo build --release -q
cargo bench --bench load --no-run -q 2>/dev/null
LOAD=$(ls -t target/release/deps/load-* | grep -v '\.d$' | head -1)
OUT=target/wait.jsonl
: > "$OUT"
PORT=18092
common=(--bind 127.0.0.1 --save "" --appendonly no --daemonize no)
redis-server --port 16392 "${common[@]}" --repl-diskless-sync-delay 0 >/dev/null &
PRIMARY=$!
redis-server --port 16393 "${common[@]}" --replicaof 127.0.0.1 16392 >/dev/null &
REPLICA=$!
NODE=
# Only what this script started.
trap 'kill $PRIMARY $REPLICA $NODE 2>/dev/null || true' EXIT
for _ in $(seq 100); do
  redis-cli -p 16393 info replication 2>/dev/null | grep -q master_link_status:up && break
  sleep 0.1
done

run() { # name, replicas to wait for, load args...
  local name=$1 replicas=$2; shift 2
  redis-cli -p 16392 flushall >/dev/null
  taskset -c 0 ./target/release/herald --listen 127.0.0.1:$PORT --redis-url redis://127.0.0.1:16392 \
    --redis-wait-replicas "$replicas" 2>/dev/null &
  NODE=$!
  for _ in $(seq 50); do curl -sf "http://127.0.0.1:$PORT/readyz" >/dev/null && break; sleep 0.1; done
  local line
  line=$(taskset -c 1 "$LOAD" --url "http://127.0.0.1:$PORT" --server-pid "$NODE" --threads 1 "$@" 2>&1 |
    grep '^RESULT ' | tail -1)
  kill "$NODE"; wait "$NODE" 2>/dev/null || true
  NODE=
  echo "{\"name\":\"$name\",${line#RESULT \{}" >> "$OUT"
  python3 - "$name" "$line" <<'PY'
import json, sys
r = json.loads(sys.argv[2][len("RESULT "):])
p = r["publish_rtt"]
ms = lambda v: "-" if v is None else f"{v:.2f}"
print(f'{sys.argv[1]:<20} published {r["publish_achieved_rate"]:>7.0f}/s  failed {r["events_publish_failed"]}  '
      f'publish p50 {ms(p["p50_ms"])} p99 {ms(p["p99_ms"])} max {ms(p["max_ms"])} ms')
PY
  sleep 1
}

for _ in $(seq "${1:-2}"); do
  run wait-0-2k/s 0 --conns 1 --topics 1000 --rate 2000 --duration 10 --publishers 16
  run wait-1-2k/s 1 --conns 1 --topics 1000 --rate 2000 --duration 10 --publishers 16
  run wait-0-max 0 --conns 1 --topics 1000 --rate 20000 --duration 10 --publishers 64
  run wait-1-max 1 --conns 1 --topics 1000 --rate 20000 --duration 10 --publishers 64
done
