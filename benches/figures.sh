#!/usr/bin/env bash
# Reproduces the README's load figures: a fresh release server per run, pinned to core 0 (one core, like
# Nchan's single worker), the load generator pinned to core 1. Prints one summary line per run and keeps
# every RESULT line in target/figures.jsonl.  Usage: benches/figures.sh [quick|redis|two-nodes]
# `redis` runs the Redis-backend scenarios against a redis-server of its own (port 16390, no persistence).
# `two-nodes` runs two Herald nodes (ports 18090 and 18091, both pinned to core 0) sharing a redis-server of
# its own (port 16391, no persistence); connections and publishers alternate between the nodes (the load
# generator's comma-separated --url), and server RSS and CPU are summed over both (--server-pid list),
# each node's own figures printed below the summary line.
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
NODE_PIDS=()
if [ "${1:-}" = two-nodes ]; then
  redis-server --port 16391 --bind 127.0.0.1 --save "" --appendonly no --daemonize no >/dev/null &
  REDIS_PID=$!
  # Only what this script started: the redis-server and the nodes of a run cut short.
  trap 'kill $REDIS_PID ${NODE_PIDS[@]+"${NODE_PIDS[@]}"} 2>/dev/null || true' EXIT
  for _ in $(seq 50); do redis-cli -p 16391 ping >/dev/null 2>&1 && break; sleep 0.1; done
fi

summarise() { # name, RESULT line: one summary line (and one per server when there are several)
  python3 - "$1" "$2" <<'PY'
import json, sys
r = json.loads(sys.argv[2][len("RESULT "):])
l = r["latency"]
print(f'{sys.argv[1]:<28} open {r["conns_open"]:>6}  rss/conn {r["server_rss_per_conn_kib"]:.2f} KiB  '
      f'published {r["publish_achieved_rate"]:.0f}/s  delivered {r["delivered_per_sec"]:.0f}/s  '
      f'missing {r["missing"]} dup {r["duplicates"]}  p50 {l["p50_ms"]:.2f} p99 {l["p99_ms"]:.2f} max {l["max_ms"]:.1f} ms  '
      f'cpu/delivery {r["server_cpu_us_per_delivery"]:.2f} us  '
      f'publish p50 {r["publish_rtt"]["p50_ms"]:.2f} p99 {r["publish_rtt"]["p99_ms"]:.2f} ms')
if len(r.get("servers", [])) > 1:
    print(f'{"":<28} out of order {r["out_of_order"]}  unexpected {r["unexpected"]}  closed early {r["conns_closed_early"]}')
    f = lambda v, spec: "-" if v is None else format(v, spec)
    for s in r["servers"]:
        print(f'{"":<28} node {s.get("url") or s["pid"]}: open {f(s["conns_open"], "")}  '
              f'rss/conn {f(s["rss_per_conn_kib"], ".2f")} KiB  cpu {f(s["cpu_publish_secs"], ".2f")} s  '
              f'delivered {f(s["delivered"], "")}  cpu/delivery {f(s["cpu_us_per_delivery"], ".2f")} us')
PY
}

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
  summarise "$name" "$line"
  sleep 1
}

run_two_nodes() { # name, load args...: two fresh nodes on one Redis, both pinned to core 0
  local name=$1; shift
  redis-cli -p 16391 flushall >/dev/null
  local port urls=()
  NODE_PIDS=()
  for port in 18090 18091; do
    taskset -c 0 ./target/release/herald --listen 127.0.0.1:$port --history-size 1000 \
      --redis-url redis://127.0.0.1:16391 2>/dev/null &
    NODE_PIDS+=($!)
    urls+=("http://127.0.0.1:$port")
  done
  for port in 18090 18091; do
    for _ in $(seq 50); do curl -sf "http://127.0.0.1:$port/healthz" >/dev/null && break; sleep 0.1; done
  done
  local line
  line=$(taskset -c 1 "$LOAD" --url "$(IFS=,; echo "${urls[*]}")" --server-pid "$(IFS=,; echo "${NODE_PIDS[*]}")" \
    --threads 1 "$@" 2>&1 | grep '^RESULT ' | tail -1)
  kill "${NODE_PIDS[@]}"; wait "${NODE_PIDS[@]}" 2>/dev/null || true
  NODE_PIDS=()
  echo "{\"name\":\"$name\",${line#RESULT \{}" >> "$OUT"
  summarise "$name" "$line"
  sleep 1
}

if [ "${1:-}" = two-nodes ]; then
  run_two_nodes two-nodes-10k-1topic-10/s     --conns 10000 --topics 1    --rate 10   --duration 10
  run_two_nodes two-nodes-10k-1000topics-2k/s --conns 10000 --topics 1000 --rate 2000 --duration 10 --publishers 16
  exit 0
fi

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
