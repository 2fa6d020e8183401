// herald.js in one tab: events with their ids, the dispatcher, subscribe/unsubscribe under load, resets,
// reconnection across restarts, 503 during shutdown and 401 at token expiry.

import { createHmac } from "node:crypto";
import { connect } from "node:net";
import {
  Herald,
  PAGES,
  Publisher,
  assert,
  assertEqual,
  checkSequence,
  compareIds,
  freePort,
  screenshot,
  sleep,
  twoNodes,
  waitFor,
  watchPage,
} from "./lib.mjs";

/** Starts herald serving the test pages, and remembers it for the failure report. */
export async function startHerald(ctx, args = [], options = {}) {
  const h = await Herald.start(["--static-dir", PAGES, ...args], options);
  ctx.servers.push(h);
  return h;
}

/** Opens the test page on `herald` in `context` (a new one when omitted) and starts a client in it. */
export async function openClient(ctx, herald, options, { context, label = "page" } = {}) {
  const ctxt = context || (await ctx.browser.newContext());
  const page = await ctxt.newPage();
  watchPage(page, label, ctx.console);
  await page.goto(herald.url + "/client.html");
  await page.evaluate((o) => window.start(o), options);
  return page;
}

/** The page's record (see pages/client.html). */
export function log(page) {
  return page.evaluate(() => window.log);
}

export async function waitState(page, state, ms = 10000) {
  await waitFor(`state ${state}`, () => page.evaluate((s) => window.h.state === s, state), ms);
}

/** Sequence numbers a page received for `topic`, in delivery order. */
export async function seqs(page, topic) {
  const { events } = await log(page);
  return events.filter((e) => JSON.parse(e.data).topic === topic).map((e) => JSON.parse(e.data).seq);
}

/** Waits until the page has received `topic`'s event number `seq`. */
export async function waitSeq(page, topic, seq, ms = 15000) {
  await waitFor(`${topic} #${seq} in the page`, async () => (await seqs(page, topic)).includes(seq), ms, 50);
}

/** An HS256 JWT for `claims`. */
export function jwt(secret, claims) {
  const b64 = (v) => Buffer.from(JSON.stringify(v)).toString("base64url");
  const head = b64({ alg: "HS256", typ: "JWT" });
  const body = b64(claims);
  const sig = createHmac("sha256", secret).update(`${head}.${body}`).digest("base64url");
  return `${head}.${body}.${sig}`;
}

// -------------------------------------------------------------------------------------------------------

/** Events published over HTTP reach the page with their ids, types, data and topics; import() works. */
export async function events_reach_the_page(ctx) {
  const herald = await startHerald(ctx);
  const page = await openClient(ctx, herald, { topics: ["t/1", "t/2"], types: ["x.typed"] });
  await waitState(page, "open");
  const published = [];
  published.push(await herald.publish("t/1", "plain"));
  published.push(await herald.publish("t/2", "typed", "x.typed"));
  published.push(await herald.publish(["t/3", "t/1"], "two topics, one of them ours"));
  await herald.publish("t/3", "not ours");
  published.push(await herald.publish(["t/1", "t/2"], "line 1\r\nline 2\rline 3"));
  await waitFor("four events", async () => (await log(page)).events.length >= 4);
  await sleep(200);
  const { events } = await log(page);
  assertEqual(
    events,
    [
      { type: "message", id: published[0], data: "plain", topics: ["t/1"] },
      { type: "x.typed", id: published[1], data: "typed", topics: ["t/2"] },
      { type: "message", id: published[2], data: "two topics, one of them ours", topics: ["t/1"] },
      { type: "message", id: published[3], data: "line 1\nline 2\nline 3", topics: ["t/1", "t/2"] },
    ],
    "events in the page",
  );
  assertEqual(await page.evaluate(() => window.h.lastEventId), published[3], "lastEventId");
  // once() fires once; off() stops a listener; a typed event never reaches `message`.
  const counts = await page.evaluate(() => {
    window.counts = { once: 0, on: 0, off: 0 };
    const off = () => window.counts.off++;
    window.h.once("message", () => window.counts.once++);
    window.h.on("message", () => window.counts.on++);
    window.h.on("message", off);
    window.h.off("message", off);
    return window.counts;
  });
  assertEqual(counts, { once: 0, on: 0, off: 0 }, "no calls yet");
  await herald.publish("t/1", "a");
  await herald.publish("t/2", "b", "x.typed");
  await herald.publish("t/1", "c");
  await waitFor("the dispatcher counts", () => page.evaluate(() => window.counts.on === 2));
  assertEqual(await page.evaluate(() => window.counts), { once: 1, on: 2, off: 0 }, "dispatcher counts");
  // import() of the same file defines the global too.
  const imported = await page.evaluate(async () => {
    const saved = globalThis.Herald;
    delete globalThis.Herald;
    await import("/herald.js?fresh");
    const ok = typeof globalThis.Herald === "function" && globalThis.Herald !== saved;
    globalThis.Herald = saved;
    return ok;
  });
  assert(imported, "import('/herald.js') defines the global Herald");
  assertEqual(await herald.metric("herald_connections_open"), 1, "one stream");
  await screenshot(page, "events_reach_the_page");
  await page.evaluate(() => window.h.close());
  assertEqual(await page.evaluate(() => window.h.state), "closed", "state after close()");
  await waitFor("the stream to be closed", async () => (await herald.metric("herald_connections_open")) === 0);
}

/**
 * subscribe() and unsubscribe() under a 50 events/s publish stream: the topic that stays subscribed loses
 * and repeats nothing; each toggled topic gets, while subscribed, everything from the moment it was
 * subscribed, and nothing once it was unsubscribed.
 */
export async function subscribe_unsubscribe_under_load(ctx) {
  const herald = await startHerald(ctx);
  const page = await openClient(ctx, herald, { topics: ["a", "b"], share: false });
  await waitState(page, "open");
  const publisher = new Publisher(herald, ["a", "b", "c"], 50).start();
  await toggleAndCheck([page], publisher);
  await screenshot(page, "subscribe_unsubscribe_under_load");
}

/**
 * The same with two tabs sharing one stream: the follower changes its topics, then the holder does; the
 * holder's stream follows the union, and neither tab loses or repeats an event.
 */
export async function subscribe_unsubscribe_shared(ctx) {
  const herald = await startHerald(ctx);
  const context = await ctx.browser.newContext();
  const holder = await openClient(ctx, herald, { topics: ["a", "b"] }, { context, label: "holder" });
  await waitFor("the first tab to hold", async () => (await holder.evaluate(() => window.h.role)) === "holder");
  const follower = await openClient(ctx, herald, { topics: ["a", "b"] }, { context, label: "follower" });
  await waitState(holder, "open");
  await waitState(follower, "open");
  assertEqual(await follower.evaluate(() => window.h.role), "follower", "the second tab's role");
  const publisher = new Publisher(herald, ["a", "b", "c"], 50).start();
  await toggleAndCheck([follower, holder], publisher);
  assertEqual(await herald.metric("herald_connections_open"), 1, "one stream for both tabs");
}

/**
 * Toggles topics b and c of `pages[0]` (then of the others) under the publisher's load, and checks every
 * page: "a" (never unsubscribed) complete; b and c complete within each subscribed period, from the moment
 * of the subscribe() call, and absent outside them.
 */
async function toggleAndCheck(pages, publisher) {
  for (const page of pages) await waitSeq(page, "a", Math.max(2, publisher.last("a")));
  const marks = new Map(pages.map((p) => [p, []]));
  // Each toggle: [topic, subscribe?]; ["a", true] is a no-op (already subscribed).
  const plan = [
    ["c", true],
    ["b", false],
    ["b", true],
    ["c", false],
    ["a", true],
    ["c", true],
    ["b", false],
    ["b", true],
    ["c", false],
    ["c", true],
  ];
  for (const page of pages) {
    for (const [topic, on] of plan) {
      await sleep(350 + Math.random() * 300);
      const called = Date.now();
      const at = await page.evaluate(
        ([t, o]) => {
          if (o) window.h.subscribe(t);
          else window.h.unsubscribe(t);
          return window.log.events.length;
        },
        [topic, on],
      );
      // Every event whose publish starts after this moment was published after the call returned.
      marks.get(page).push({ topic, on, called, returned: Date.now(), at });
    }
  }
  await sleep(500);
  await publisher.stop();
  for (const page of pages) {
    const finalTopics = await page.evaluate(() => window.h.topics.sort());
    assertEqual(finalTopics, ["a", "b", "c"], "topics at the end");
    for (const t of finalTopics) await waitSeq(page, t, publisher.last(t));
    const { events } = await log(page);
    const parsed = events.map((e, i) => ({ i, id: e.id, ...JSON.parse(e.data), topics: e.topics }));
    for (let i = 1; i < parsed.length; i++) {
      assert(compareIds(parsed[i - 1].id, parsed[i].id) < 0, `ids rise: ${parsed[i - 1].id} then ${parsed[i].id}`);
    }
    // "a" never left: everything from its first event to the last one published, once each, in order.
    checkSequence("a", parsed.filter((e) => e.topic === "a").map((e) => e.seq), { to: publisher.last("a") });
    // Toggled topics: split deliveries into the periods between the calls.
    for (const topic of ["b", "c"]) {
      let subscribed = topic === "b";
      let start = 0;
      let since = -Infinity;
      const periods = [];
      const own = marks.get(page).filter((m) => m.topic === topic);
      for (const m of [...own, { at: Infinity, on: !subscribed, called: Infinity }]) {
        const inRange = parsed.filter((e) => e.topic === topic && e.i >= start && e.i < m.at);
        // Owed: every event published after subscribe() returned and before unsubscribe() was called.
        if (subscribed) periods.push({ seqs: inRange.map((e) => e.seq), owed: publisher.between(topic, since, m.called) });
        else assert(inRange.length === 0, `${topic}: delivered while unsubscribed: ${JSON.stringify(inRange)}`);
        if (m.on && !subscribed) since = m.returned;
        subscribed = m.on;
        start = m.at;
      }
      // After unsubscribe() returns nothing of the topic is delivered; everything published after subscribe()
      // returned is (what was published just before may or may not be).
      const all = [];
      periods.forEach((p, n) => {
        checkSequence(`${topic} period ${n}`, p.seqs);
        const missing = p.owed.filter((seq) => !p.seqs.includes(seq));
        assert(!missing.length, `${topic} period ${n}: missing ${missing} (got ${p.seqs})`);
        all.push(...p.seqs);
      });
      for (let k = 1; k < all.length; k++) assert(all[k] > all[k - 1], `${topic} repeated ${all[k]}`);
      assertEqual(all[all.length - 1], publisher.last(topic), `${topic}: the last event arrived`);
    }
  }
}

/** herald.reset reaches the app as a `reset` event with its topics and reason, never as an event. */
export async function reset_reaches_the_app(ctx) {
  const port = await freePort();
  let herald = await startHerald(ctx, ["--retry", "300"], { port });
  const page = await openClient(ctx, herald, { topics: ["r/1", "r/2"], lastEventId: "1-0", share: false, types: ["herald.reset"] });
  await waitFor("a reset", async () => (await log(page)).resets.length === 1);
  // An id from before this node's time: nothing was published yet, so it is one it never issued.
  assertEqual((await log(page)).resets[0], { topics: ["r/1", "r/2"], reason: "unknown_id" }, "the reset");
  const id = await herald.publish("r/1", "before the restart");
  await waitFor("the event", async () => (await log(page)).events.length === 1);
  // The memory backend forgets everything when it restarts: resuming from `id` is a reset.
  await herald.stop();
  herald = await startHerald(ctx, ["--retry", "300"], { port });
  await waitFor("a second reset", async () => (await log(page)).resets.length === 2, 15000);
  const { resets, events } = await log(page);
  assertEqual(resets[1].topics, ["r/1", "r/2"], "topics of the second reset");
  assert(["history_lost", "unknown_id"].includes(resets[1].reason), `reason ${resets[1].reason}`);
  assert(events.every((e) => e.type !== "herald.reset"), "no herald.reset event reached the app");
  assertEqual(events[0].id, id, "the event before the restart");
  await waitState(page, "open");
  await herald.publish("r/2", "after");
  await waitFor("the event after the restart", async () => (await log(page)).events.length === 2);
  await screenshot(page, "reset_reaches_the_app");
}

/**
 * A node restarted on the Redis backend while events are published through another node: the page
 * reconnects, resumes from its last id and misses nothing.
 */
export async function restart_on_redis_resumes(ctx) {
  const nodes = await twoNodes((args, options) => startHerald(ctx, args, options), ["--retry", "300"]);
  try {
    const page = await openClient(ctx, nodes.a, { topics: ["news"], share: false });
    await waitState(page, "open");
    const publisher = new Publisher(nodes.b, ["news"], 40).start();
    await waitSeq(page, "news", 5);
    await nodes.a.stop();
    await waitFor("the page to notice", () => page.evaluate(() => window.h.state === "connecting"));
    await sleep(1000); // events keep coming through the other node meanwhile
    await nodes.restartA();
    await waitState(page, "open", 20000);
    await sleep(1000);
    await publisher.stop();
    await waitSeq(page, "news", publisher.last("news"));
    checkSequence("news", await seqs(page, "news"), { from: 1, to: publisher.last("news") });
    const { states, resets, errors } = await log(page);
    assertEqual(resets, [], "no reset: Redis kept everything");
    assertEqual(errors, [], "no error");
    assert(states.includes("connecting") && states[states.length - 1] === "open", `states ${states}`);
    await screenshot(page, "restart_on_redis_resumes");
  } finally {
    nodes.stop();
  }
}

/**
 * A node that shuts down ends its streams and answers 503 while it drains; the client retries past the
 * 503 (which EventSource would never do) and resumes on the restarted node with nothing lost.
 */
export async function retry_503_during_shutdown(ctx) {
  const start = (args, options) => startHerald(ctx, args, options);
  const nodes = await twoNodes(start, ["--retry", "200", "--shutdown-grace", "4"]);
  try {
    const page = await openClient(ctx, nodes.a, { topics: ["s"], share: false });
    await waitState(page, "open");
    const publisher = new Publisher(nodes.b, ["s"], 30).start();
    await waitSeq(page, "s", 3);
    // An unfinished publish keeps the node in its grace period, still answering (503) while it drains.
    const slow = connect(nodes.a.port, "127.0.0.1");
    await new Promise((resolve) => slow.once("connect", resolve));
    slow.write("POST /publish HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\nContent-Length: 100\r\n\r\n{");
    await sleep(100);
    process.kill(nodes.a.pid, "SIGTERM");
    await waitFor("a 503 while draining", async () => (await log(page)).retrying.some((r) => r.status === 503), 4000);
    slow.destroy();
    await nodes.a.exited;
    await nodes.restartA();
    await waitState(page, "open", 20000);
    await sleep(500);
    await publisher.stop();
    await waitSeq(page, "s", publisher.last("s"));
    checkSequence("s", await seqs(page, "s"), { from: 1, to: publisher.last("s") });
    const { errors, resets } = await log(page);
    assertEqual(errors, [], "a 503 is not final");
    assertEqual(resets, [], "nothing lost");
    await screenshot(page, "retry_503_during_shutdown");
  } finally {
    nodes.stop();
  }
}

/**
 * A stream ends when its token expires; the client asks getToken() again, is refused with 401 while the
 * app still hands out the expired token, retries, and resumes with the fresh token with nothing lost.
 */
export async function token_expiry_401_retried(ctx) {
  const secret = "browser-test-secret";
  const herald = await startHerald(ctx, ["--jwt-secret", secret, "--retry", "200"]);
  const now = () => Math.floor(Date.now() / 1000);
  const publishToken = jwt(secret, { herald: { publish: ["*"] }, exp: now() + 600 });
  const short = jwt(secret, { herald: { subscribe: ["p"] }, exp: now() + 3 });
  const page = await openClient(ctx, herald, { topics: ["p"], useToken: true, token: short, share: false });
  await waitState(page, "open", 10000);
  const publisher = new Publisher(herald, ["p"], 20, { token: publishToken }).start();
  await waitSeq(page, "p", 3);
  // The stream ends at exp; the app still gives the expired token: 401, retried (not final).
  await waitFor("a 401 retry", async () => (await log(page)).retrying.some((r) => r.status === 401), 10000);
  await page.evaluate((t) => {
    window.token = t;
  }, jwt(secret, { herald: { subscribe: ["p"] }, exp: now() + 600 }));
  await waitFor("open again", async () => {
    const l = await log(page);
    return l.states[l.states.length - 1] === "open" && l.states.filter((s) => s === "open").length >= 2;
  }, 20000);
  await sleep(500);
  await publisher.stop();
  await waitSeq(page, "p", publisher.last("p"));
  checkSequence("p", await seqs(page, "p"), { from: 1, to: publisher.last("p") });
  const { errors, tokenCalls } = await log(page);
  assertEqual(errors, [], "no final error");
  assert(tokenCalls >= 3, `getToken called before every connection (${tokenCalls})`);
  // Without getToken, 401 is final: an error event and state closed.
  const bare = await openClient(ctx, herald, { topics: ["p"], share: false }, { label: "no-token" });
  await waitFor("a final 401", async () => (await log(bare)).errors.length === 1);
  assertEqual((await log(bare)).errors[0].status, 401, "the error's status");
  await waitState(bare, "closed");
  // 403 is final too.
  const allowsP = jwt(secret, { herald: { subscribe: ["p"] }, exp: now() + 600 });
  const forbidden = await openClient(ctx, herald, { topics: ["q"], useToken: true, token: allowsP, share: false }, {
    label: "403",
  });
  await waitFor("a final 403", async () => (await log(forbidden)).errors.length === 1, 10000);
  assertEqual((await log(forbidden)).errors[0].code, "forbidden", "the error's code");
  await screenshot(page, "token_expiry_401_retried");
}
