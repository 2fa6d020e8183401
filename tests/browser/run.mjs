// Runs one real-browser scenario by name: `node tests/browser/run.mjs <name>` (tests/browser.rs runs each).
// Exit status 0 when the scenario passed; otherwise the error, the pages' console output and herald's logs
// are printed. Screenshots go to $HERALD_ARTIFACTS (target/browser-artifacts by default).

import * as client from "./client.mjs";
import * as sharing from "./sharing.mjs";
import * as demo from "./demo.mjs";
import { stopAll, launchBrowser } from "./lib.mjs";

const scenarios = { ...client, ...sharing, ...demo };
const name = process.argv[2];
const scenario = scenarios[name];
if (!scenario) {
  console.error(`unknown scenario ${name}; known: ${Object.keys(scenarios).join(", ")}`);
  process.exit(2);
}

const LIMIT_MS = Number(process.env.HERALD_SCENARIO_LIMIT_MS || 120000);
const console_lines = [];
const ctx = { console: console_lines, servers: [], browser: null };
const timer = setTimeout(() => {
  report(new Error(`scenario ${name} did not finish within ${LIMIT_MS} ms`));
  stopAll();
  process.exit(1);
}, LIMIT_MS);

function report(error) {
  console.error(`FAILED ${name}: ${error && error.stack ? error.stack : error}`);
  if (console_lines.length) console.error("--- page console ---\n" + console_lines.slice(-200).join("\n"));
  for (const server of ctx.servers) {
    console.error(`--- herald ${server.args.join(" ")} ---\n` + server.lines.slice(-60).join("\n"));
  }
}

try {
  ctx.browser = await launchBrowser();
  const started = Date.now();
  await scenario(ctx);
  console.log(`ok ${name} (${((Date.now() - started) / 1000).toFixed(1)} s)`);
  clearTimeout(timer);
  await ctx.browser.close();
  stopAll();
  process.exit(0);
} catch (error) {
  report(error);
  clearTimeout(timer);
  try {
    await ctx.browser?.close();
  } catch (_) {
    // Already gone.
  }
  stopAll();
  process.exit(1);
}
