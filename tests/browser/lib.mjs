// Helpers for Herald's real-browser tests: the real `herald` binary, real `redis-server`s and Debian's
// headless Chromium driven by playwright-core. Every process started here is stopped by its PID; every wait
// is bounded.

import { spawn } from "node:child_process";
import { connect, createServer } from "node:net";
import { mkdirSync } from "node:fs";
import { setTimeout as sleep } from "node:timers/promises";
import { chromium } from "playwright-core";

export { sleep };

/** The herald binary under test (set by tests/browser.rs). */
export const HERALD_BIN = process.env.HERALD_BIN || "target/debug/herald";
/** Where screenshots are kept. */
export const ARTIFACTS = process.env.HERALD_ARTIFACTS || "target/browser-artifacts";
/** Test pages served with `--static-dir`. */
export const PAGES = new URL("./pages/", import.meta.url).pathname;
/** Chromium from Debian's package. */
export const CHROMIUM = process.env.CHROMIUM || "/usr/bin/chromium";

const started = [];

/** Stops everything still running (at exit, whatever happened). */
export function stopAll() {
  for (const child of started) {
    if (child.exitCode === null && child.signalCode === null) {
      try {
        process.kill(child.pid, "SIGKILL");
      } catch (_) {
        // Already gone.
      }
    }
  }
}
process.on("exit", stopAll);

/** A TCP port that nobody listens on right now. */
export function freePort() {
  return new Promise((resolve, reject) => {
    const server = createServer();
    server.once("error", reject);
    server.listen(0, "127.0.0.1", () => {
      const { port } = server.address();
      server.close(() => resolve(port));
    });
  });
}

/** Polls `check` (sync or async) until it returns a truthy value; throws with `what` after `ms`. */
export async function waitFor(what, check, ms = 10000, every = 25) {
  const deadline = Date.now() + ms;
  let last;
  for (;;) {
    try {
      last = await check();
      if (last) return last;
    } catch (e) {
      last = e;
    }
    if (Date.now() > deadline) throw new Error(`timed out after ${ms} ms waiting for ${what} (last: ${fmt(last)})`);
    await sleep(every);
  }
}

function fmt(v) {
  if (v instanceof Error) return v.message;
  try {
    return JSON.stringify(v);
  } catch (_) {
    return String(v);
  }
}

/** Asserts `cond`, with a message. */
export function assert(cond, message) {
  if (!cond) throw new Error("assertion failed: " + message);
}

/** Asserts deep equality of two JSON-able values. */
export function assertEqual(actual, expected, message) {
  const a = JSON.stringify(actual);
  const e = JSON.stringify(expected);
  if (a !== e) throw new Error(`${message}: expected ${e}, got ${a}`);
}

// -------------------------------------------------------------------------------------------------------
// herald
// -------------------------------------------------------------------------------------------------------

/** A running herald process. */
export class Herald {
  /**
   * Starts `herald ARGS` on `port` (0: any) and waits for its start-up line.
   * @param {string[]} args
   * @param {{port?: number, env?: object}} options
   */
  static async start(args = [], options = {}) {
    const port = options.port || 0;
    const all = ["--listen", `127.0.0.1:${port}`, ...args];
    for (let attempt = 0; ; attempt++) {
      const h = new Herald(all, options.env);
      try {
        await h.ready();
        return h;
      } catch (e) {
        // A fixed port that the previous process has not quite released: try again shortly.
        if (port && attempt < 20 && /cannot listen|Address already in use/.test(h.log())) {
          await sleep(100);
          continue;
        }
        h.kill();
        throw e;
      }
    }
  }

  constructor(args, env) {
    this.args = args;
    this.lines = [];
    this.child = spawn(HERALD_BIN, args, {
      env: { ...process.env, RUST_LOG: "info", ...(env || {}) },
      stdio: ["ignore", "ignore", "pipe"],
    });
    started.push(this.child);
    let partial = "";
    this.child.stderr.setEncoding("utf8");
    this.child.stderr.on("data", (chunk) => {
      partial += chunk;
      const parts = partial.split("\n");
      partial = parts.pop();
      this.lines.push(...parts);
    });
    this.exited = new Promise((resolve) => this.child.once("exit", (code, signal) => resolve({ code, signal })));
  }

  async ready() {
    await waitFor(
      "herald to log its address",
      () => {
        if (this.child.exitCode !== null) throw new Error("herald exited: " + this.log());
        const line = this.lines.find((l) => l.includes("herald listening"));
        const m = line && /addr=(\d+\.\d+\.\d+\.\d+:\d+)/.exec(line.replace(/\x1b\[[0-9;]*m/g, ""));
        if (m) this.addr = m[1];
        return m;
      },
      15000,
    );
    this.url = `http://${this.addr}`;
    this.port = Number(this.addr.split(":")[1]);
  }

  log() {
    return this.lines.join("\n");
  }

  get pid() {
    return this.child.pid;
  }

  /** SIGTERM, then waits for the exit (at most `ms`). */
  async stop(ms = 15000) {
    if (this.child.exitCode !== null) return this.exited;
    process.kill(this.pid, "SIGTERM");
    const result = await Promise.race([this.exited, sleep(ms).then(() => null)]);
    if (!result) {
      this.kill();
      throw new Error("herald did not exit within " + ms + " ms of SIGTERM");
    }
    return result;
  }

  kill() {
    if (this.child.exitCode === null && this.child.signalCode === null) process.kill(this.pid, "SIGKILL");
  }

  /** POST /publish as JSON; returns the id. */
  async publish(topics, data, type, token) {
    const body = { topics: [].concat(topics), data };
    if (type) body.type = type;
    const headers = { "Content-Type": "application/json" };
    if (token) headers.Authorization = "Bearer " + token;
    const res = await fetch(this.url + "/publish", { method: "POST", headers, body: JSON.stringify(body) });
    const json = await res.json();
    if (!res.ok) throw new Error(`publish answered ${res.status}: ${JSON.stringify(json)}`);
    return json.id;
  }

  /** One value of /metrics. */
  async metric(name) {
    const text = await (await fetch(this.url + "/metrics")).text();
    const line = text.split("\n").find((l) => l.startsWith(name + " "));
    if (!line) throw new Error(`no metric ${name}`);
    return Number(line.split(" ")[1]);
  }
}

/** A publisher sending `{seq, topic}` events at a fixed rate to one or more topics, round robin. */
export class Publisher {
  constructor(target, topics, perSecond, options = {}) {
    this.target = target; // an object with publish(), or a function returning one (after restarts)
    this.topics = topics;
    this.interval = 1000 / perSecond;
    this.seq = new Map(topics.map((t) => [t, 0]));
    this.sent = []; // {topic, seq, id}
    this.failures = 0;
    this.stopped = false;
    this.type = options.type || null;
    this.token = options.token || null;
  }

  start() {
    this.done = this.run();
    return this;
  }

  async run() {
    let i = 0;
    let next = Date.now();
    while (!this.stopped) {
      const topic = this.topics[i++ % this.topics.length];
      const seq = this.seq.get(topic) + 1;
      const target = typeof this.target === "function" ? this.target() : this.target;
      const startedAt = Date.now();
      try {
        const id = await target.publish(topic, JSON.stringify({ topic, seq }), this.type, this.token);
        this.seq.set(topic, seq);
        this.sent.push({ topic, seq, id, startedAt, doneAt: Date.now() });
      } catch (_) {
        // The node is down (a test restarts it): publish the same number again.
        this.failures++;
        i--;
      }
      next += this.interval;
      const wait = next - Date.now();
      if (wait > 0) await sleep(wait);
      else next = Date.now();
    }
  }

  async stop() {
    this.stopped = true;
    await this.done;
  }

  /** The sequence numbers of `topic` whose publish started after `from` and was answered before `to` (ms). */
  between(topic, from, to) {
    return this.sent.filter((s) => s.topic === topic && s.startedAt > from && s.doneAt < to).map((s) => s.seq);
  }

  /** The last sequence number published per topic. */
  last(topic) {
    return this.seq.get(topic);
  }
}

// -------------------------------------------------------------------------------------------------------
// redis-server
// -------------------------------------------------------------------------------------------------------

export class Redis {
  static async start() {
    const r = new Redis(await freePort());
    await r.launch();
    return r;
  }

  constructor(port) {
    this.port = port;
    this.url = `redis://127.0.0.1:${port}`;
  }

  async launch() {
    this.child = spawn(
      "redis-server",
      ["--port", String(this.port), "--bind", "127.0.0.1", "--save", "", "--appendonly", "no"],
      { stdio: "ignore" },
    );
    started.push(this.child);
    this.child.once("error", (e) => {
      this.error = e;
    });
    await waitFor("redis-server to listen", async () => {
      if (this.error) throw new Error("cannot start redis-server (install Debian's redis-server): " + this.error.message);
      return new Promise((resolve) => {
        const socket = connect(this.port, "127.0.0.1");
        socket.once("connect", () => {
          socket.end();
          resolve(true);
        });
        socket.once("error", () => resolve(false));
      });
    });
  }

  stop() {
    if (this.child && this.child.exitCode === null) process.kill(this.child.pid, "SIGKILL");
  }
}

/**
 * Two herald nodes on one fresh redis-server, started with `start(args, options)`: `a` on a fixed port (so that a
 * page of its origin can reconnect after `restartA()`), `b` on any. `stop()` stops the redis-server.
 */
export async function twoNodes(start, extraArgs = []) {
  const redis = await Redis.start();
  const port = await freePort();
  const args = ["--redis-url", redis.url, ...extraArgs];
  const nodes = { redis, port, a: await start(args, { port }), b: await start(args) };
  nodes.restartA = async () => (nodes.a = await start(args, { port }));
  nodes.stop = () => redis.stop();
  return nodes;
}

// -------------------------------------------------------------------------------------------------------
// Chromium
// -------------------------------------------------------------------------------------------------------

/** Launches headless Chromium (flags as this machine's network needs them). */
export async function launchBrowser() {
  return chromium.launch({
    executablePath: CHROMIUM,
    headless: true,
    args: [
      "--no-sandbox",
      "--disable-gpu",
      "--disable-quic",
      "--no-first-run",
      "--disable-background-networking",
      "--disable-component-update",
      "--disable-sync",
      "--disable-dev-shm-usage",
    ],
  });
}

/** Saves a screenshot of `page` as `<ARTIFACTS>/<name>.png`. */
export async function screenshot(page, name) {
  mkdirSync(ARTIFACTS, { recursive: true });
  await page.screenshot({ path: `${ARTIFACTS}/${name}.png`, fullPage: true });
}

/** What a page's Herald client (`window[name]`) knows, for failure reports: its state, role, cursor, share state. */
export async function diagnose(page, name = "h") {
  return page
    .evaluate((n) => {
      const h = window[n];
      if (!h) return "no client";
      const s = h._share;
      const share = s && {
        term: s.term,
        holder: s.holderId && s.holderId.slice(0, 6),
        me: s.id.slice(0, 6),
        cov: s.cov,
        holderState: s.holderState,
        members: [...s.members].map(([id, m]) => [id.slice(0, 6), m.topics, m.cursor, m.cov, m.fresh]),
        hold: s.hold && { state: s.hold.state, stream: s.hold.stream, cursor: s.hold.cursor, gen: s.hold.gen },
      };
      return JSON.stringify({ state: h.state, role: h.role, cursor: h.lastEventId, topics: h.topics, share });
    }, name)
    .catch((e) => "unreachable: " + e.message);
}

/** Collects a page's console output and errors, for the failure report. */
export function watchPage(page, label, sink) {
  page.on("console", (m) => sink.push(`[${label}] ${m.type()}: ${m.text()}`));
  page.on("pageerror", (e) => sink.push(`[${label}] pageerror: ${e.message}`));
}

/**
 * Checks what a page received for one topic: the sequence numbers, in order, each once, and (when
 * `from`/`to` are given) every number between them.
 */
export function checkSequence(label, seqs, { from, to } = {}) {
  for (let i = 1; i < seqs.length; i++) {
    if (seqs[i] === seqs[i - 1]) throw new Error(`${label}: ${seqs[i]} delivered twice`);
    if (seqs[i] !== seqs[i - 1] + 1) throw new Error(`${label}: gap or disorder between ${seqs[i - 1]} and ${seqs[i]}`);
  }
  if (from != null && seqs.length && seqs[0] > from) throw new Error(`${label}: starts at ${seqs[0]}, expected ≤ ${from}`);
  if (to != null && (!seqs.length || seqs[seqs.length - 1] < to))
    throw new Error(`${label}: ends at ${seqs[seqs.length - 1]}, expected ≥ ${to}`);
}

/** Herald ids compare as `<ms>-<seq>`. */
export function compareIds(a, b) {
  const [am, as] = a.split("-").map(Number);
  const [bm, bs] = b.split("-").map(Number);
  return am - bm || as - bs;
}
