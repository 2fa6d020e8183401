#!/usr/bin/env python3
"""Resume cost with Redis: RSS and publish latency while several clients resume over a long history.

usage: benches/resume.py target/release/herald [--events 30000] [--data 150] [--topics 64] [--clients 8]
       [--port 26999]

Starts its own redis-server (on --port) and herald (with --history-size 100000, so nothing is trimmed),
fills the history through POST /publish (each event on 2 of the topics: 30000 x 2 x 150 B = 9 MB of data),
then opens CLIENTS streams on all topics at once with Last-Event-ID = the first id, each reading until the
last id, while another process publishes to another topic every 20 ms. Reports each client's status, the
server's RSS (idle, peak, 2 s after the clients left), herald's and redis's CPU time, and the latency of
the publishes made while the clients resumed.
"""
import multiprocessing as mp, argparse, http.client, json, os, random, re, socket, subprocess, threading, time

ap = argparse.ArgumentParser()
ap.add_argument("herald")
ap.add_argument("--events", type=int, default=30000)
ap.add_argument("--data", type=int, default=150)
ap.add_argument("--topics", type=int, default=64)
ap.add_argument("--clients", type=int, default=8)
ap.add_argument("--port", type=int, default=26999)
args = ap.parse_args()

redis = subprocess.Popen(["redis-server", "--port", str(args.port), "--bind", "127.0.0.1", "--save", "",
                          "--appendonly", "no"], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
time.sleep(0.5)
herald = subprocess.Popen([args.herald, "--listen", "127.0.0.1:0", "--redis-url", f"redis://127.0.0.1:{args.port}",
                           "--max-topics", str(args.topics), "--history-size", "100000"], stderr=subprocess.PIPE, text=True)
addr = None
for line in herald.stderr:
    m = re.search(r"addr=(\S+)", line)
    if m and "listening" in line:
        addr = m.group(1)
        break
threading.Thread(target=lambda: [None for _ in herald.stderr], daemon=True).start()
host, port = addr.rsplit(":", 1)
port = int(port)


def cpu_s(pid):
    with open(f"/proc/{pid}/stat") as f:
        parts = f.read().rsplit(")", 1)[1].split()
    return (int(parts[11]) + int(parts[12])) / os.sysconf("SC_CLK_TCK")


def rss_kib():
    with open(f"/proc/{herald.pid}/status") as f:
        for l in f:
            if l.startswith("VmRSS:"):
                return int(l.split()[1])


def publish(conn, topics, data):
    body = json.dumps({"topics": topics, "data": data})
    t0 = time.monotonic()
    conn.request("POST", "/publish", body, {"Content-Type": "application/json"})
    r = conn.getresponse()
    payload = r.read()
    return r.status, payload, time.monotonic() - t0


topics = [f"t/{i}" for i in range(args.topics)]
ids = [None] * args.events
def filler(start, step):
    conn = http.client.HTTPConnection(host, port)
    rnd = random.Random(start)
    for i in range(start, args.events, step):
        ts = rnd.sample(topics, 2)
        st, payload, _ = publish(conn, ts, f"{i:08}" + "x" * (args.data - 8))
        assert st == 200, payload
        ids[i] = json.loads(payload)["id"]
t0 = time.monotonic()
fillers = [threading.Thread(target=filler, args=(k, 8)) for k in range(8)]
[t.start() for t in fillers]
[t.join() for t in fillers]
first = min(ids, key=lambda s: tuple(map(int, s.split("-"))))
last = max(ids, key=lambda s: tuple(map(int, s.split("-"))))
print(f"filled {args.events} events x 2 topics x {args.data} B in {time.monotonic() - t0:.1f} s; "
      f"redis used_memory: {subprocess.run(['redis-cli', '-p', str(args.port), 'info', 'memory'], capture_output=True, text=True).stdout.split('used_memory_human:')[1].split()[0]}")
time.sleep(1)
rss_idle = rss_kib()

stop = mp.Event()
latq = mp.Queue()
def publisher():
    conn = http.client.HTTPConnection(host, port)
    while not stop.is_set():
        st, _, dt = publish(conn, ["lat"], "x")
        latq.put((time.monotonic(), dt, st))
        time.sleep(0.02)

peak = [rss_idle]
def sampler():
    while not stop.is_set():
        peak[0] = max(peak[0], rss_kib())
        time.sleep(0.02)

results = mp.Queue()
def resumer(k):
    t0 = time.monotonic()
    s = socket.create_connection((host, port))
    path = "/events?topics=" + ",".join(topics)
    s.sendall(f"GET {path} HTTP/1.1\r\nHost: x\r\nLast-Event-ID: {first}\r\n\r\n".encode())
    buf = b""
    while b"\r\n\r\n" not in buf:
        chunk = s.recv(65536)
        if not chunk:
            break
        buf += chunk
    status = int(buf.split(b" ", 2)[1]) if buf else 0
    n = 0
    if status == 200:
        s.settimeout(60)
        data = buf
        tail = b""
        marker = f"\nid: {last}\n".encode()
        while True:
            window = tail + data
            n += window.count(b"\nid: ") - tail.count(b"\nid: ")
            if marker in window:
                break
            tail = data[-64:]
            try:
                data = s.recv(1 << 20)
            except socket.timeout:
                break
            if not data:
                break
    s.close()
    results.put((k, status, n, time.monotonic() - t0))

cpu0 = (cpu_s(herald.pid), cpu_s(redis.pid))
pub = mp.Process(target=publisher)
pub.start()
threads = [threading.Thread(target=sampler)]
[t.start() for t in threads]
time.sleep(0.5)
start = time.monotonic()
rs = [mp.Process(target=resumer, args=(k,)) for k in range(args.clients)]
[t.start() for t in rs]
res = [results.get() for _ in rs]
[t.join() for t in rs]
took = time.monotonic() - start
end = time.monotonic()
cpu1 = (cpu_s(herald.pid), cpu_s(redis.pid))
time.sleep(0.5)
stop.set()
[t.join() for t in threads]
lat = []
pub.join(timeout=5)
while not latq.empty():
    lat.append(latq.get())
during = [d for t, d, _ in lat if start <= t - d <= end]  # started while the clients resumed
bad = [s for _, _, s in lat if s != 200]
time.sleep(2)
rss_after = rss_kib()
for r in sorted(res):
    print(f"client {r[0]}: status {r[1]}, {r[2]} events, {r[3]:.2f} s")
srt = sorted(during) or [0]
q = [srt[min(len(srt) - 1, int(len(srt) * p / 100))] for p in range(1, 100)]
print(f"resumes took {took:.2f} s; RSS idle {rss_idle / 1024:.0f} MiB, peak {peak[0] / 1024:.0f} MiB, "
      f"2 s after {rss_after / 1024:.0f} MiB")
print(f"CPU during the resumes: herald {cpu1[0] - cpu0[0]:.2f} s, redis {cpu1[1] - cpu0[1]:.2f} s")
print(f"publishes during the resumes: {len(during)}, p50 {q[49] * 1000:.1f} ms, p99 {q[98] * 1000:.1f} ms, "
      f"max {max(during) * 1000:.1f} ms; non-200: {len(bad)}")
herald.terminate(); redis.terminate()
herald.wait(); redis.wait()
