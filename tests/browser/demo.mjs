// The demo page at `/` (static/index.html, built into the binary): a shared task list that several windows
// keep in sync through Herald, across a Herald restart.

import { Herald, assert, diagnose, assertEqual, freePort, screenshot, sleep, twoNodes, waitFor, watchPage } from "./lib.mjs";

async function startHerald(ctx, args, options) {
  const h = await Herald.start(args, options);
  ctx.servers.push(h);
  return h;
}

async function openDemo(ctx, herald, context, label) {
  const page = await context.newPage();
  watchPage(page, label, ctx.console);
  await page.goto(herald.url + "/");
  await waitFor(`${label} open`, () => page.evaluate(() => window.herald.state === "open"), 10000);
  return page;
}

/** The task texts a window shows, with ✓ for done ones. */
function tasks(page) {
  return page.evaluate(() =>
    [...document.querySelectorAll("#tasks li[data-id]")].map(
      (li) => (li.classList.contains("done") ? "✓ " : "") + li.querySelector(".text").textContent,
    ),
  );
}

async function waitTasks(page, expected, label, ms = 10000) {
  try {
    await waitFor(`${label} to show ${JSON.stringify(expected)}`, async () => JSON.stringify(await tasks(page)) === JSON.stringify(expected), ms);
  } catch (e) {
    throw new Error(`${e.message}; it shows ${JSON.stringify(await tasks(page))}; client: ${await diagnose(page, "herald")}`);
  }
}

async function add(page, text) {
  await page.fill("#new-task", text);
  await page.click("#add button");
}

function row(page, text) {
  return page.locator("#tasks li", { hasText: text });
}

/**
 * Four windows in two browsers (two of them sharing one stream in each) edit one list; a fifth window joins
 * later and gets the list from the others; Herald restarts on Redis while a change is published through
 * another node, and every window ends with it: nothing lost.
 */
export async function demo_windows_stay_in_sync(ctx) {
  const nodes = await twoNodes((args, options) => startHerald(ctx, args, options), ["--retry", "300"]);
  try {
    const { b } = nodes;
    let { a } = nodes;
    const one = await ctx.browser.newContext({ viewport: { width: 1180, height: 760 } });
    const two = await ctx.browser.newContext();
    const w1 = await openDemo(ctx, a, one, "w1");
    const w2 = await openDemo(ctx, a, two, "w2");
    const w3 = await openDemo(ctx, a, one, "w3");
    await waitFor("w1 to hold its browser's stream", () => w1.evaluate(() => window.herald.role === "holder"));
    assertEqual(await w3.evaluate(() => window.herald.role), "follower", "w3 rides w1's stream");
    assertEqual(await a.metric("herald_connections_open"), 2, "one stream per browser");
    await waitFor("the role shown", async () => (await w1.textContent("#role")).includes("holds the shared stream"));
    assert((await w3.textContent("#role")).includes("rides"), "w3 says it rides another window's stream");

    await add(w1, "Buy milk");
    for (const [w, l] of [[w1, "w1"], [w2, "w2"], [w3, "w3"]]) await waitTasks(w, ["Buy milk"], l);
    await row(w2, "Buy milk").locator("input[type=checkbox]").check();
    for (const [w, l] of [[w1, "w1"], [w2, "w2"], [w3, "w3"]]) await waitTasks(w, ["✓ Buy milk"], l);
    await add(w3, "Write the docs");
    await add(w2, "Ship it");
    await row(w3, "Buy milk").locator("button").click();
    const list = ["Write the docs", "Ship it"];
    for (const [w, l] of [[w1, "w1"], [w2, "w2"], [w3, "w3"]]) await waitTasks(w, list, l);

    // The live log shows each event with its id and topic.
    const lastId = await w1.evaluate(() => window.herald.lastEventId);
    const logText = await w1.textContent("#log");
    assert(logText.includes(lastId) && logText.includes("demo/tasks/main") && logText.includes("task.removed"), "the log shows ids, topics and types");

    // A window that joins later asks the others for the list.
    const w4 = await openDemo(ctx, a, two, "w4");
    await waitTasks(w4, list, "w4");

    // Herald restarts; meanwhile a change is published through the other node.
    await a.stop();
    await waitFor("w1 to notice", () => w1.evaluate(() => window.herald.state === "connecting"));
    await b.publish("demo/tasks/main", JSON.stringify({ id: "while-down", text: "Added while Herald was down" }), "task.added");
    a = await nodes.restartA();
    const after = [...list, "Added while Herald was down"];
    for (const [w, l] of [[w1, "w1"], [w2, "w2"], [w3, "w3"], [w4, "w4"]]) await waitTasks(w, after, l, 20000);
    for (const w of [w1, w2, w3, w4]) {
      assertEqual(await w.evaluate(() => document.getElementById("banner").style.display), "", "no reset banner");
    }
    await add(w4, "Still in sync");
    for (const [w, l] of [[w1, "w1"], [w2, "w2"], [w3, "w3"], [w4, "w4"]]) await waitTasks(w, [...after, "Still in sync"], l);
    // A reload resumes from the window's last id, with its list.
    await w2.reload();
    await waitFor("w2 open after a reload", () => w2.evaluate(() => window.herald.state === "open")).catch(async (e) => {
      throw new Error(`${e.message}: w2 ${await diagnose(w2, "herald")}; w4 ${await diagnose(w4, "herald")}`);
    });
    await waitTasks(w2, [...after, "Still in sync"], "w2 after its reload");
    await sleep(300);
    await screenshot(w1, "demo");
  } finally {
    nodes.stop();
  }
}

/** On the memory backend a restart loses history: the windows say so (herald.reset) and keep working. */
export async function demo_memory_restart_shows_reset(ctx) {
  const port = await freePort();
  let herald = await startHerald(ctx, ["--retry", "300"], { port });
  const context = await ctx.browser.newContext();
  const other = await ctx.browser.newContext();
  const w1 = await openDemo(ctx, herald, context, "w1");
  const w2 = await openDemo(ctx, herald, other, "w2");
  await add(w1, "Before the restart");
  await waitTasks(w2, ["Before the restart"], "w2");
  await herald.stop();
  herald = await startHerald(ctx, ["--retry", "300"], { port });
  for (const w of [w1, w2]) {
    await waitFor("the reset banner", () => w.evaluate(() => document.getElementById("banner").style.display === "block"), 20000);
    assert((await w.textContent("#banner")).includes("could not replay"), "the banner explains the reset");
    await waitFor("open again", () => w.evaluate(() => window.herald.state === "open"), 10000);
  }
  await add(w2, "After the restart");
  for (const w of [w1, w2]) await waitTasks(w, ["Before the restart", "After the restart"], "after the restart");
  await screenshot(w1, "demo_memory_restart_shows_reset");
}
