// One stream per browser: tabs share the stream of one holder (Web Locks + BroadcastChannel), survive the
// holder's close and freeze, fall back to a stream each without Web Locks, and keep their own refusals.

import { openClient, log, waitState, seqs, waitSeq, startHerald, jwt } from "./client.mjs";
import { Publisher, assert, assertEqual, checkSequence, screenshot, sleep, waitFor } from "./lib.mjs";

const role = (page) => page.evaluate(() => window.h.role);
const state = (page) => page.evaluate(() => window.h.state);

/** Every tab open and exactly one holder among `tabs`; returns the holder's index. */
async function settled(tabs, what, ms = 5000) {
  let holder = -1;
  await waitFor(
    what,
    async () => {
      const roles = await Promise.all(tabs.map(role));
      const states = await Promise.all(tabs.map(state));
      holder = roles.indexOf("holder");
      return roles.filter((r) => r === "holder").length === 1 && states.every((s) => s === "open") && { roles, states };
    },
    ms,
    20,
  );
  return holder;
}

/** Checks that a tab got each of its topics' events once, in order, without a gap, to the last published. */
async function checkTab(page, label, topics, publisher) {
  const { events } = await log(page);
  for (const e of events) {
    assert(e.topics.every((t) => topics.includes(t)), `${label} got an event of another tab's topic: ${JSON.stringify(e)}`);
  }
  for (const t of topics) {
    await waitSeq(page, t, publisher.last(t));
    checkSequence(`${label} ${t}`, await seqs(page, t), { to: publisher.last(t) });
  }
}

/**
 * Four tabs with different topics share one stream; the holder is closed, then the next holder is frozen
 * (it keeps its lock) and thaws, then the holder crashes: each time another tab takes over within 5 s, and
 * no tab misses or repeats an event.
 */
export async function tabs_share_one_stream(ctx) {
  const herald = await startHerald(ctx, ["--retry", "500"]);
  const context = await ctx.browser.newContext();
  const topicsOf = [["s/a", "s/b"], ["s/b"], ["s/c"], ["s/a", "s/c"]];
  const tabs = [];
  for (let i = 0; i < topicsOf.length; i++) {
    tabs.push(await openClient(ctx, herald, { topics: topicsOf[i] }, { context, label: `tab${i}` }));
  }
  let holder = await settled(tabs, "four tabs open with one holder", 10000);
  await waitFor("one stream for four tabs", async () => (await herald.metric("herald_connections_open")) === 1, 5000);
  const publisher = new Publisher(herald, ["s/a", "s/b", "s/c"], 30).start();
  await waitFor("a few events published", () => publisher.sent.length >= 6);
  for (let i = 0; i < tabs.length; i++) for (const t of topicsOf[i]) await waitSeq(tabs[i], t, publisher.last(t));
  await screenshot(tabs[holder], "tabs_share_one_stream-holder");

  // 1. The holder closes: its lock is released and another tab takes over at once.
  const closedAt = Date.now();
  await tabs[holder].close();
  const alive = tabs.map((_, i) => i).filter((i) => i !== holder);
  let live = alive.map((i) => tabs[i]);
  const next = alive[await settled(live, "a new holder after the close")];
  const tookOver = Date.now() - closedAt;
  assert(tookOver < 5000, `takeover after close took ${tookOver} ms`);
  await waitFor("one stream again", async () => (await herald.metric("herald_connections_open")) === 1, 5000);

  // 2. The new holder freezes: it keeps its lock but runs no JavaScript, so it neither beats nor answers;
  // the others notice its silence and steal the lock. (A tab's JavaScript is paused through the DevTools
  // protocol, which is what a frozen tab amounts to: `Page.setWebLifecycleState` only freezes hidden pages,
  // and pages of headless Chromium are never hidden.)
  const frozen = next;
  const cdp = await context.newCDPSession(tabs[frozen]);
  await cdp.send("Debugger.enable");
  const frozenAt = Date.now();
  await cdp.send("Debugger.pause");
  const others = alive.filter((i) => i !== frozen);
  live = others.map((i) => tabs[i]);
  await settled(live, "a holder after the freeze", 6000);
  const stolen = Date.now() - frozenAt;
  assert(stolen < 5000, `takeover after freeze took ${stolen} ms`);
  await sleep(1500);
  // 3. It thaws: it finds its lock stolen, steps down and catches up from the relay like any other tab.
  await cdp.send("Debugger.resume");
  await waitFor("the thawed tab to follow", async () => (await role(tabs[frozen])) === "follower", 5000);
  const crashing = alive[await settled(alive.map((i) => tabs[i]), "three tabs open with one holder")];
  await waitFor("one stream after the thaw", async () => (await herald.metric("herald_connections_open")) === 1, 8000);

  // 4. The holder crashes (its renderer process dies): the browser releases its lock, another tab takes over.
  const crashedAt = Date.now();
  const crash = await context.newCDPSession(tabs[crashing]);
  // The answer never comes from a renderer that died: don't wait for it.
  crash.send("Page.crash").catch(() => {});
  console.log("crash sent");
  const survivors = alive.filter((i) => i !== crashing);
  await settled(survivors.map((i) => tabs[i]), "a holder after the crash", 6000);
  const afterCrash = Date.now() - crashedAt;
  assert(afterCrash < 5000, `takeover after crash took ${afterCrash} ms`);
  await waitFor("one stream after the crash", async () => (await herald.metric("herald_connections_open")) === 1, 8000);
  await sleep(500);
  await publisher.stop();
  for (const i of survivors) await checkTab(tabs[i], `tab${i}`, topicsOf[i], publisher);
  await screenshot(tabs[survivors[0]], "tabs_share_one_stream-after");
  console.log(`takeover: ${tookOver} ms after close, ${stolen} ms after freeze, ${afterCrash} ms after crash`);
}

/** A tab that joins with an older lastEventId makes the holder resume from it; the others repeat nothing. */
export async function tab_joining_with_older_id(ctx) {
  const herald = await startHerald(ctx);
  const context = await ctx.browser.newContext();
  const first = await openClient(ctx, herald, { topics: ["j"] }, { context, label: "first" });
  await waitState(first, "open");
  const ids = [];
  for (let n = 1; n <= 10; n++) ids.push(await herald.publish("j", JSON.stringify({ topic: "j", seq: n })));
  await waitSeq(first, "j", 10);
  const late = await openClient(ctx, herald, { topics: ["j"], lastEventId: ids[3] }, { context, label: "late" });
  await waitFor("the late tab to replay from its id", async () => (await seqs(late, "j")).length === 6, 8000);
  for (let n = 11; n <= 13; n++) await herald.publish("j", JSON.stringify({ topic: "j", seq: n }));
  await waitSeq(late, "j", 13);
  await waitSeq(first, "j", 13);
  assertEqual(await seqs(late, "j"), [5, 6, 7, 8, 9, 10, 11, 12, 13], "the late tab");
  assertEqual(await seqs(first, "j"), [1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12, 13], "the first tab");
  assertEqual(await herald.metric("herald_connections_open"), 1, "still one stream");
}

/** Without Web Locks each tab keeps a stream of its own, and every tab still gets its events. */
export async function tabs_without_web_locks(ctx) {
  const herald = await startHerald(ctx);
  const context = await ctx.browser.newContext();
  await context.addInitScript(() => {
    Object.defineProperty(Navigator.prototype, "locks", { get: () => undefined, configurable: true });
  });
  const tabs = [];
  for (let i = 0; i < 3; i++) tabs.push(await openClient(ctx, herald, { topics: ["w"] }, { context, label: `tab${i}` }));
  for (const t of tabs) await waitState(t, "open");
  assertEqual(await Promise.all(tabs.map(role)), ["solo", "solo", "solo"], "roles");
  assertEqual(await herald.metric("herald_connections_open"), 3, "a stream per tab");
  const id = await herald.publish("w", JSON.stringify({ topic: "w", seq: 1 }));
  for (const t of tabs) await waitSeq(t, "w", 1);
  for (const t of tabs) assertEqual((await log(t)).events[0].id, id, "the id");
}

/**
 * A tab whose topic the holder's token does not allow gets that 403 as its own error and is left out of
 * the union; the other tabs keep their shared stream.
 */
export async function shared_403_stays_with_its_tab(ctx) {
  const secret = "share-secret";
  const herald = await startHerald(ctx, ["--jwt-secret", secret]);
  const token = jwt(secret, { herald: { subscribe: ["ok/*"], publish: ["*"] }, exp: Math.floor(Date.now() / 1000) + 600 });
  const context = await ctx.browser.newContext();
  const good = await openClient(ctx, herald, { topics: ["ok/1"], useToken: true, token }, { context, label: "good" });
  await waitState(good, "open");
  const bad = await openClient(ctx, herald, { topics: ["secret/1"], useToken: true, token }, { context, label: "bad" });
  await waitFor("the 403 in the bad tab", async () => (await log(bad)).errors.length === 1, 8000);
  assertEqual((await log(bad)).errors[0].status, 403, "status");
  await waitState(bad, "closed");
  await waitState(good, "open");
  await herald.publish("ok/1", JSON.stringify({ topic: "ok/1", seq: 1 }), null, token);
  await waitSeq(good, "ok/1", 1);
  assertEqual((await log(good)).errors, [], "the good tab has no error");
  await waitFor("one stream", async () => (await herald.metric("herald_connections_open")) === 1, 5000);
}
