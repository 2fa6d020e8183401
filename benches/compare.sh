#!/usr/bin/env bash
# Herald vs Nchan (nginx's pub/sub module) in one run, on one machine, with the same load generator:
# for each scenario a fresh Herald, then a fresh nginx + Nchan (benches/nchan/nginx.conf, one worker),
# each pinned to core 0 with the generator pinned to core 1 (`--threads 1`). Prints both servers'
# figures and the Herald/Nchan ratios, and appends every RESULT line (with "name", "server" and "run"
# added) to target/compare.jsonl.  Usage: benches/compare.sh [quick]   (quick: the idle scenario only)
# Installs nginx + libnginx-mod-nchan with apt-get when missing (so it wants root). Only loopback traffic.
set -euo pipefail
cd "$(dirname "$0")/.."
ROOT=$PWD
NCHAN_MOD=/usr/lib/nginx/modules/ngx_nchan_module.so
if ! command -v nginx >/dev/null || [ ! -e "$NCHAN_MOD" ]; then
  echo "installing nginx + libnginx-mod-nchan" >&2
  apt-get update -q
  DEBIAN_FRONTEND=noninteractive apt-get install -y -q nginx-light libnginx-mod-nchan ||
    DEBIAN_FRONTEND=noninteractive apt-get install -y -q nginx libnginx-mod-nchan
fi
[ -e "$NCHAN_MOD" ] || { echo "no $NCHAN_MOD (dpkg -L libnginx-mod-nchan)" >&2; exit 1; }
command -v taskset >/dev/null || { echo "taskset (util-linux) is needed" >&2; exit 1; }

cargo build --release -q
cargo bench --bench load --no-run -q 2>/dev/null
LOAD=$(ls -t target/release/deps/load-* | grep -v '\.d$' | head -1)
"$LOAD" --self-test >/dev/null
# 10k subscriptions need 10k descriptors in the generator and in each server.
ulimit -n "$(ulimit -Hn)" 2>/dev/null || true
[ "$(ulimit -n)" = unlimited ] || [ "$(ulimit -n)" -ge 11000 ] ||
  echo "warning: ulimit -n is $(ulimit -n); 10k connections need more" >&2

OUT=target/compare.jsonl
RUN=$(date -u +%Y-%m-%dT%H:%M:%SZ)
WORK=$(mktemp -d /tmp/herald-compare.XXXXXX)
HERALD_PORT=18190
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
  for server in herald nchan; do
    "start_$server"
    log="$WORK/${name//\//_}-$server.log"
    line=$(taskset -c 1 "$LOAD" --target "$server" --url "$URL" --server-pid "$SAMPLE_PID" --threads 1 "$@" 2>&1 |
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
      f'cpu/delivery {f(r["server_cpu_us_per_delivery"])} us', flush=True)
PY
    fi
    sleep 1
  done
}

echo "run $RUN; logs in $WORK"
run idle-10k            --conns 10000 --topics 100  --rate 1    --duration 2
if [ "${1:-}" != quick ]; then
  run 10k-1topic-10/s     --conns 10000 --topics 1    --rate 10   --duration 10
  run 10k-1000topics-2k/s --conns 10000 --topics 1000 --rate 2000 --duration 10
fi

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
    ("delivered", lambda r: r["delivered"], 0),
    ("missing", lambda r: r["missing"], 0),
    ("duplicates + out-of-order", lambda r: r["duplicates"] + r["out_of_order"], 0),
]
fmt = lambda v, d: "-" if v is None else f"{v:.{d}f}"
print()
print(f'| {"scenario":<20} | {"figure":<29} | {"Herald":>10} | {"Nchan":>10} | {"Herald/Nchan":>12} |')
print(f'| {"-"*20} | {"-"*29} | {"-"*10:>10} | {"-"*10:>10} | {"-"*12:>12} |')
for n in names:
    h, c = rows.get((n, "herald")), rows.get((n, "nchan"))
    for label, get, d in metrics:
        if n.startswith("idle") and label not in ("open connections", "RSS per connection (KiB)"):
            continue
        hv = get(h) if h else None
        cv = get(c) if c else None
        ratio = f"{hv / cv:.2f}" if hv is not None and cv not in (None, 0) else "-"
        print(f"| {n:<20} | {label:<29} | {fmt(hv, d):>10} | {fmt(cv, d):>10} | {ratio:>12} |")
print(f"\nRESULT lines appended to {sys.argv[1]} (run {sys.argv[2]})")
PY
