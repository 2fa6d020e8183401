#!/usr/bin/env bash
# Herald beside the floor and Nchan (nginx's pub/sub module) in one run, on one machine, with the same load
# generator: for each scenario a fresh Herald, then a fresh floor (benches/floor.rs: one thread that only
# answers an event-stream head and writes each event to every subscriber with one non-blocking write), then
# a fresh nginx + Nchan (benches/nchan/nginx.conf, one worker), each pinned to core 0 with the generator
# pinned to core 1 (`--threads 1`). Prints the servers' figures and the Herald/floor and Herald/Nchan
# ratios, and appends every RESULT line (with "name", "server" and "run" added) to target/compare.jsonl.
# Usage: benches/compare.sh [quick]   (quick: the idle scenario only)
# BASELINE=/path/to/an/older/herald benches/compare.sh also runs that binary ("before"), after Herald.
# Installs nginx + libnginx-mod-nchan with apt-get when missing (so it wants root); when that fails, Nchan is
# left out and said so. Only loopback traffic.
set -euo pipefail
cd "$(dirname "$0")/.."
ROOT=$PWD
NCHAN_MOD=/usr/lib/nginx/modules/ngx_nchan_module.so
if ! command -v nginx >/dev/null || [ ! -e "$NCHAN_MOD" ]; then
  echo "installing nginx + libnginx-mod-nchan" >&2
  { apt-get update -q &&
    { DEBIAN_FRONTEND=noninteractive apt-get install -y -q nginx-light libnginx-mod-nchan ||
      DEBIAN_FRONTEND=noninteractive apt-get install -y -q nginx libnginx-mod-nchan; }; } || true
fi
SERVERS=(herald floor nchan)
if ! command -v nginx >/dev/null || [ ! -e "$NCHAN_MOD" ]; then
  echo "warning: no nginx with $NCHAN_MOD: Nchan is left out of this run" >&2
  SERVERS=(herald floor)
fi
if [ -n "${BASELINE:-}" ]; then
  SERVERS=(herald before "${SERVERS[@]:1}")
fi
command -v taskset >/dev/null || { echo "taskset (util-linux) is needed" >&2; exit 1; }

cargo build --release -q
cargo bench --bench load --no-run -q 2>/dev/null
cargo bench --bench floor --no-run -q 2>/dev/null
LOAD=$(ls -t target/release/deps/load-* | grep -v '\.d$' | head -1)
FLOOR=$(ls -t target/release/deps/floor-* | grep -v '\.d$' | head -1)
"$LOAD" --self-test >/dev/null
# 10k subscriptions need 10k descriptors in the generator and in each server.
ulimit -n "$(ulimit -Hn)" 2>/dev/null || true
[ "$(ulimit -n)" = unlimited ] || [ "$(ulimit -n)" -ge 11000 ] ||
  echo "warning: ulimit -n is $(ulimit -n); 10k connections need more" >&2

OUT=target/compare.jsonl
RUN=$(date -u +%Y-%m-%dT%H:%M:%SZ)
WORK=$(mktemp -d /tmp/herald-compare.XXXXXX)
HERALD_PORT=18190
FLOOR_PORT=18170
NCHAN_PORT=18180 # fixed in benches/nchan/nginx.conf
SERVER_PID=      # the process we stop (Herald, or nginx's master)

stop_server() {
  if [ -n "$SERVER_PID" ]; then
    kill "$SERVER_PID" 2>/dev/null || true
    wait "$SERVER_PID" 2>/dev/null || true
    SERVER_PID=
  fi
}
trap stop_server EXIT

wait_healthy() { # port
  for _ in $(seq 100); do
    curl -sf "http://127.0.0.1:$1/healthz" >/dev/null && return 0
    sleep 0.1
  done
  echo "server on port $1 did not come up" >&2
  return 1
}

# Starts a fresh server; sets SERVER_PID (to stop), SAMPLE_PID (to measure) and URL.
start_herald() {
  taskset -c 0 ./target/release/herald --listen 127.0.0.1:$HERALD_PORT --history-size 1000 \
    2>>"$WORK/herald.log" &
  SERVER_PID=$!
  SAMPLE_PID=$SERVER_PID
  URL=http://127.0.0.1:$HERALD_PORT
  wait_healthy $HERALD_PORT
}

start_before() {
  taskset -c 0 "$BASELINE" --listen 127.0.0.1:$HERALD_PORT --history-size 1000 2>>"$WORK/before.log" &
  SERVER_PID=$!
  SAMPLE_PID=$SERVER_PID
  URL=http://127.0.0.1:$HERALD_PORT
  wait_healthy $HERALD_PORT
}

start_floor() {
  taskset -c 0 "$FLOOR" --listen 127.0.0.1:$FLOOR_PORT 2>>"$WORK/floor.log" &
  SERVER_PID=$!
  SAMPLE_PID=$SERVER_PID
  URL=http://127.0.0.1:$FLOOR_PORT
  wait_healthy $FLOOR_PORT
}

start_nchan() {
  local prefix="$WORK/nginx"
  rm -rf "$prefix"
  mkdir -p "$prefix/tmp"
  taskset -c 0 nginx -e stderr -p "$prefix/" -c "$ROOT/benches/nchan/nginx.conf" 2>>"$WORK/nginx.log" &
  SERVER_PID=$!
  URL=http://127.0.0.1:$NCHAN_PORT
  wait_healthy $NCHAN_PORT
  # Measure the single worker (the master only supervises it).
  SAMPLE_PID=$(pgrep -P "$SERVER_PID" | head -1)
  [ -n "$SAMPLE_PID" ] || { echo "no nginx worker under $SERVER_PID" >&2; return 1; }
}

run() { # name, load args...
  local name=$1; shift
  local server line log
  for server in "${SERVERS[@]}"; do
    "start_$server"
    log="$WORK/${name//\//_}-$server.log"
    line=$(taskset -c 1 "$LOAD" --target "$([ "$server" = nchan ] && echo nchan || echo herald)" --url "$URL" --server-pid "$SAMPLE_PID" --threads 1 "$@" 2>&1 |
      tee "$log" | grep '^RESULT ' | tail -1) || true
    stop_server
    if [ -z "$line" ]; then
      echo "$name / $server: no RESULT (log: $log)" >&2
      tail -5 "$log" >&2
    else
      echo "{\"name\":\"$name\",\"server\":\"$server\",\"run\":\"$RUN\",${line#RESULT \{}" >> "$OUT"
      python3 - "$name" "$server" "$line" <<'PY'
import json, sys
r = json.loads(sys.argv[3][len("RESULT "):])
l = r["latency"]
f = lambda v, d=2: "-" if v is None else f"{v:.{d}f}"
print(f'{sys.argv[1]:<22} {sys.argv[2]:<6} open {r["conns_open"]:>6}  rss/conn {f(r["server_rss_per_conn_kib"])} KiB  '
      f'published {r["publish_achieved_rate"]:.0f}/s  delivered {f(r["delivered_per_sec"], 0)}/s  '
      f'missing {r["missing"]} dup {r["duplicates"]} ooo {r["out_of_order"]}  '
      f'p50 {f(l["p50_ms"])} p99 {f(l["p99_ms"])} max {f(l["max_ms"], 1)} ms  '
      f'cpu/delivery {f(r["server_cpu_us_per_delivery"])} us  publish p99 {f(r["publish_rtt"]["p99_ms"])} ms' +
      (f'  probe p99 {f(r["probe_rtt"]["p99_ms"])} ms' if "probe_rtt" in r else ""), flush=True)
PY
    fi
    sleep 1
  done
}

echo "run $RUN; logs in $WORK"
echo "servers: ${SERVERS[*]}; load before: $(cut -d' ' -f1-3 /proc/loadavg)"
run idle-10k              --conns 10000 --topics 100  --rate 1     --duration 2
if [ "${1:-}" != quick ]; then
  run 10k-1topic-10/s       --conns 10000 --topics 1    --rate 10    --duration 10
  run 10k-1topic-25/s       --conns 10000 --topics 1    --rate 25    --duration 10
  run 10k-1topic-50/s       --conns 10000 --topics 1    --rate 50    --duration 10
  # A publisher of a quiet topic (100 publishes/s to a topic nobody subscribes to) while the fan-out runs.
  run 10k-1topic-10/s-probe --conns 10000 --topics 1    --rate 10    --duration 10 --probe-rate 100
  run 10k-1000topics-2k/s   --conns 10000 --topics 1000 --rate 2000  --duration 10
  # The publish ceiling on one core: more asked than any of them publishes.
  run 1000topics-ceiling    --conns 10000 --topics 1000 --rate 40000 --duration 10 --publishers 64
fi
echo "load after: $(cut -d' ' -f1-3 /proc/loadavg)"

python3 - "$OUT" "$RUN" <<'PY'
import json, sys
rows = {}
names = []
for l in open(sys.argv[1]):
    r = json.loads(l)
    if r.get("run") != sys.argv[2]:
        continue
    if r["name"] not in names:
        names.append(r["name"])
    rows[(r["name"], r["server"])] = r
metrics = [
    ("open connections", lambda r: r["conns_open"], 0),
    ("RSS per connection (KiB)", lambda r: r["server_rss_per_conn_kib"], 2),
    ("CPU per delivered event (us)", lambda r: r["server_cpu_us_per_delivery"], 2),
    ("latency p50 (ms)", lambda r: r["latency"]["p50_ms"], 2),
    ("latency p99 (ms)", lambda r: r["latency"]["p99_ms"], 2),
    ("events published (of planned)", lambda r: r["events_published_ok"], 0),
    ("publish rate achieved (/s)", lambda r: r["publish_achieved_rate"], 1),
    ("publish p99 (ms)", lambda r: r["publish_rtt"]["p99_ms"], 2),
    ("quiet-topic publish p99 (ms)", lambda r: r.get("probe_rtt", {}).get("p99_ms"), 2),
    ("delivered", lambda r: r["delivered"], 0),
    ("missing", lambda r: r["missing"], 0),
    ("duplicates + out-of-order", lambda r: r["duplicates"] + r["out_of_order"], 0),
]
fmt = lambda v, d: "-" if v is None else f"{v:.{d}f}"
ratio = lambda a, b: f"{a / b:.2f}" if a is not None and b not in (None, 0) else "-"
print()
print(f'| {"scenario":<22} | {"figure":<29} | {"Herald":>10} | {"before":>10} | {"floor":>10} | {"Nchan":>10} | {"H/floor":>7} | {"H/Nchan":>7} |')
print(f'| {"-"*22} | {"-"*29} | {"-"*10} | {"-"*10} | {"-"*10} | {"-"*10} | {"-"*7} | {"-"*7} |')
for n in names:
    h, f_, c = rows.get((n, "herald")), rows.get((n, "floor")), rows.get((n, "nchan"))
    b = rows.get((n, "before"))
    for label, get, d in metrics:
        if n.startswith("idle") and label not in ("open connections", "RSS per connection (KiB)"):
            continue
        if label.startswith("quiet") and not n.endswith("probe"):
            continue
        hv, bv, fv, cv = (get(x) if x else None for x in (h, b, f_, c))
        print(f"| {n:<22} | {label:<29} | {fmt(hv, d):>10} | {fmt(bv, d):>10} | {fmt(fv, d):>10} | {fmt(cv, d):>10} | {ratio(hv, fv):>7} | {ratio(hv, cv):>7} |")
print(f"\nRESULT lines appended to {sys.argv[1]} (run {sys.argv[2]})")
PY
