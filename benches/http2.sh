#!/usr/bin/env bash
# Reproduces the README's HTTP/2 figures with benches/http2.rs: a fresh release server per run pinned to core 0,
# the generator (and a proxy, when there is one) on core 1. Prints each run's summary and keeps every RESULT line
# in target/http2.jsonl.  Usage: benches/http2.sh [STREAMS [memory|cpu|proxies]]   (default 10000, all three)
#   1. server memory per idle stream, HTTP/1.1 (one connection each) and h2c (1000 streams per connection);
#   2. server CPU per delivery at 10 events/s to every stream, HTTP/1.1 and h2c, twice each, alternating;
#   3. STREAMS HTTP/1.1 subscribers behind HAProxy (proto h2) and behind Caddy (h2c://): the connections that
#      reach Herald, and every subscriber getting every event. HAProxy reserves two descriptors per client
#      connection and refuses a maxconn it could not serve, so under an open-files limit of 20,000 (this
#      workplace's) it gets at most 9,900 subscribers.
# Needs haproxy and caddy (Debian packages). Stops only the processes it started.
set -euo pipefail
cd "$(dirname "$0")/.."
STREAMS=${1:-10000}
PART=${2:-all}
HAPROXY_STREAMS=$(( STREAMS < 9900 ? STREAMS : 9900 ))
PORT=18100
PROXY_PORT=18101
cargo build --release -q
cargo bench --bench http2 --no-run -q 2>/dev/null
GEN=$(ls -t target/release/deps/http2-* | grep -v '\.d$' | head -1)
OUT=target/http2.jsonl
: > "$OUT"
WORK=$(mktemp -d)
PIDS=()
trap 'kill ${PIDS[@]+"${PIDS[@]}"} 2>/dev/null || true; rm -rf "$WORK"' EXIT

start_herald() {
  taskset -c 0 ./target/release/herald --listen 127.0.0.1:$PORT 2>/dev/null &
  HERALD=$!
  PIDS+=("$HERALD")
  for _ in $(seq 100); do curl -sf "http://127.0.0.1:$PORT/healthz" >/dev/null && return; sleep 0.1; done
  echo "herald did not start" >&2; exit 1
}
stop() { kill "$@" 2>/dev/null || true; wait "$@" 2>/dev/null || true; }
gen() { # name, generator args...
  local name=$1; shift
  echo "== $name"
  taskset -c 1 "$GEN" --url "http://127.0.0.1:$PORT" --server-pid "$HERALD" "$@" | tee -a "$OUT" | tail -1 >/dev/null
}
wait_port() { for _ in $(seq 100); do (exec 3<>/dev/tcp/127.0.0.1/"$1") 2>/dev/null && return; sleep 0.1; done; echo "port $1 not open" >&2; return 1; }

if [ "$PART" = all ] || [ "$PART" = memory ]; then
  start_herald; gen "idle, HTTP/1.1" --proto h1 --streams "$STREAMS" --idle 5; stop "$HERALD"
  start_herald; gen "idle, h2c" --proto h2 --per-conn 1000 --streams "$STREAMS" --idle 5; stop "$HERALD"
fi
if [ "$PART" = all ] || [ "$PART" = cpu ]; then
  for round in 1 2; do
    start_herald; gen "10 events/s, HTTP/1.1 ($round)" --proto h1 --streams "$STREAMS" --idle 1 --rate 10 --duration 10
    stop "$HERALD"
    start_herald; gen "10 events/s, h2c ($round)" --proto h2 --per-conn 1000 --streams "$STREAMS" --idle 1 --rate 10 --duration 10
    stop "$HERALD"
  done
fi
if [ "$PART" != all ] && [ "$PART" != proxies ]; then exit 0; fi

# The proxies' configurations are the README's (tests/proxies.rs), with room for STREAMS clients.
cat > "$WORK/haproxy.cfg" <<CFG
global
    maxconn $((HAPROXY_STREAMS + 90))
    tune.h2.max-concurrent-streams 1000
defaults
    mode http
    timeout connect 5s
    timeout client 1m
    timeout server 1m
    http-reuse always
    option http-no-delay
frontend subscribers
    bind 127.0.0.1:$PROXY_PORT
    default_backend herald
backend herald
    server herald1 127.0.0.1:$PORT proto h2
CFG
start_herald
taskset -c 1 haproxy -db -f "$WORK/haproxy.cfg" >"$WORK/haproxy.log" 2>&1 &
PROXY=$!; PIDS+=("$PROXY"); wait_port $PROXY_PORT || { cat "$WORK/haproxy.log"; exit 1; }
gen "$HAPROXY_STREAMS subscribers behind HAProxy (proto h2)" --via "http://127.0.0.1:$PROXY_PORT" --proto h1 --streams "$HAPROXY_STREAMS" --idle 1 --rate 1 --duration 3
stop "$PROXY" "$HERALD"

cat > "$WORK/Caddyfile" <<CFG
{
    admin off
    auto_https off
}

http://:$PROXY_PORT {
    bind 127.0.0.1
    reverse_proxy h2c://127.0.0.1:$PORT
}
CFG
start_herald
HOME=$WORK XDG_DATA_HOME=$WORK XDG_CONFIG_HOME=$WORK taskset -c 1 caddy run --config "$WORK/Caddyfile" --adapter caddyfile >"$WORK/caddy.log" 2>&1 &
PROXY=$!; PIDS+=("$PROXY"); wait_port $PROXY_PORT || { cat "$WORK/caddy.log"; exit 1; }
gen "$STREAMS subscribers behind Caddy (h2c://)" --via "http://127.0.0.1:$PROXY_PORT" --proto h1 --streams "$STREAMS" --idle 1 --rate 1 --duration 3
stop "$PROXY" "$HERALD"
