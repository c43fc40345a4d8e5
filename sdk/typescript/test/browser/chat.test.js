// Real-browser test: the built ESM SDK (dist/) runs in headless Chromium, two pages as two users
// chat 50 messages each way through the reference server. Run with `npm run test:browser`.
// Chromium is required: CHROMIUM_PATH, or /usr/bin/chromium (Debian: apt-get install -y chromium).
import { test, before, after } from "node:test";
import assert from "node:assert/strict";
import { createServer } from "node:http";
import { createRequire } from "node:module";
import { existsSync, mkdirSync, mkdtempSync, readFileSync, rmSync, statSync } from "node:fs";
import { dirname, extname, join, normalize, resolve } from "node:path";
import { tmpdir } from "node:os";
import { fileURLToPath } from "node:url";
import puppeteer from "puppeteer-core";
import { startServer } from "../support/server.js";

const HERE = dirname(fileURLToPath(import.meta.url));
const ROOT = resolve(HERE, "../..");
const DIST = join(ROOT, "dist");
const OUT = join(ROOT, "test-output");
// resolves .../@bufbuild/protobuf/dist/cjs/index.js; the package root is three levels up
const PROTOBUF = resolve(dirname(createRequire(import.meta.url).resolve("@bufbuild/protobuf")), "../..");
const CHROMIUM = process.env.CHROMIUM_PATH ?? "/usr/bin/chromium";
const N = 50;
const T0 = Date.now();
/** Progress on stderr, so that a hang shows where it happened. */
const step = (what) => process.stderr.write(`[browser-test +${Date.now() - T0} ms] ${what}\n`);

const PAGE = `<!doctype html>
<html><head><meta charset="utf-8"><title>bimip browser test</title>
<script type="importmap">${JSON.stringify({
  imports: {
    "@bufbuild/protobuf": "/pb/dist/esm/index.js",
    "@bufbuild/protobuf/codegenv2": "/pb/dist/esm/codegenv2/index.js",
    "@bufbuild/protobuf/wire": "/pb/dist/esm/wire/index.js",
    "@bufbuild/protobuf/reflect": "/pb/dist/esm/reflect/index.js",
  },
})}</script>
<style>body{font:14px sans-serif;margin:12px} li.in{color:#064} li.out{color:#036}</style>
</head><body><h3 id="who">bimip</h3><ul id="log"></ul>
<script type="module">
  import * as bimip from "/sdk/index.js";
  window.bimip = bimip;
  window.sdkReady = true;
</script></body></html>`;

const TYPES = { ".js": "text/javascript", ".map": "application/json", ".html": "text/html" };

function serveStatic() {
  const http = createServer((req, res) => {
    const path = decodeURIComponent(new URL(req.url, "http://x").pathname);
    let file = null;
    if (path === "/favicon.ico") {
      res.writeHead(204);
      res.end();
      return;
    }
    if (path === "/" || path === "/index.html") {
      res.writeHead(200, { "content-type": "text/html" });
      res.end(PAGE);
      return;
    }
    if (path.startsWith("/sdk/")) file = join(DIST, normalize(path.slice(5)));
    else if (path.startsWith("/pb/")) file = join(PROTOBUF, normalize(path.slice(4)));
    if (!file || !(file.startsWith(DIST) || file.startsWith(PROTOBUF)) || !existsSync(file) || !statSync(file).isFile()) {
      res.writeHead(404);
      res.end();
      return;
    }
    res.writeHead(200, { "content-type": TYPES[extname(file)] ?? "application/octet-stream" });
    res.end(readFileSync(file));
  });
  return new Promise((r) => http.listen(0, "127.0.0.1", () => r(http)));
}

let server, http, browser, profile;

before(async () => {
  if (!existsSync(CHROMIUM)) {
    throw new Error(`Chromium not found at ${CHROMIUM}: install it (apt-get install -y chromium) or set CHROMIUM_PATH`);
  }
  if (!existsSync(join(DIST, "index.js"))) throw new Error("dist/index.js missing: run `npm run build` first");
  server = await startServer();
  http = await serveStatic();
  profile = mkdtempSync(join(tmpdir(), "bimip-chromium-"));
  step("launching Chromium");
  browser = await puppeteer.launch({
    protocolTimeout: 30_000,
    executablePath: CHROMIUM,
    headless: true,
    userDataDir: profile,
    args: [
      "--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
      "--disable-background-networking", "--disable-component-update", "--disable-sync",
      // two pages are live at once: keep the one in the background running and paintable
      "--disable-renderer-backgrounding", "--disable-background-timer-throttling", "--disable-backgrounding-occluded-windows",
    ],
  });
  step("Chromium up");
});

after(async () => {
  await browser?.close();
  http?.close();
  await server?.stop();
  if (profile) rmSync(profile, { recursive: true, force: true });
});

async function openUser(eid, device) {
  step(`${eid}: new page`);
  const page = await browser.newPage();
  page.setDefaultTimeout(15_000);
  const errors = [];
  page.on("pageerror", (e) => errors.push(String(e)));
  page.on("console", (m) => { if (m.type() === "error") errors.push(`${m.text()} ${m.location()?.url ?? ""}`); });
  await page.goto(`http://127.0.0.1:${http.address().port}/`);
  step(`${eid}: page loaded`);
  await page.waitForFunction("window.sdkReady === true", { timeout: 10_000 });
  step(`${eid}: SDK loaded, connecting`);
  const token = server.token(eid, device);
  const session = await page.evaluate(async (url, token, eid) => {
    document.getElementById("who").textContent = eid;
    const client = await window.bimip.connect(url, { token });
    window.client = client;
    window.got = [];
    window.receipts = [];
    window.errors = [];
    client.addEventListener("message", (e) => {
      window.got.push(e.detail);
      const li = document.createElement("li");
      li.className = "in";
      li.textContent = `← v${e.detail.version} ${e.detail.from.eid}: ${e.detail.text}`;
      document.getElementById("log").append(li);
      client.ack(e.detail.messageId, "read");
    });
    client.addEventListener("receipt", (e) => window.receipts.push(e.detail));
    client.addEventListener("error", (e) => window.errors.push(String(e.detail)));
    return client.session;
  }, server.url, token, eid);
  step(`${eid}: connected`);
  return { page, errors, session };
}

test("two browser pages chat 50 messages each way through the SDK", { timeout: 60_000 }, async () => {
  const alice = await openUser("alice@example.com", "browser");
  const bob = await openUser("bob@example.com", "browser");
  assert.equal(alice.session.identity.eid, "alice@example.com");
  assert.equal(bob.session.identity.eid, "bob@example.com");

  const send = (page, to, prefix) =>
    page.evaluate(async (to, prefix, n) => {
      const results = [];
      for (let i = 1; i <= n; i++) {
        const r = await window.client.sendText(to, `${prefix} ${i}`);
        results.push(r);
        const li = document.createElement("li");
        li.className = "out";
        li.textContent = `→ v${r.version} ${to}: ${prefix} ${i}`;
        document.getElementById("log").append(li);
      }
      return results;
    }, to, prefix, N);
  step("sending");
  const [fromAlice, fromBob] = await Promise.all([
    send(alice.page, "bob@example.com", "from alice"),
    send(bob.page, "alice@example.com", "from bob"),
  ]);
  assert.equal(fromAlice.length, N);
  assert.equal(fromBob.length, N);
  const versions = [...fromAlice, ...fromBob].map((r) => r.version).sort((a, b) => a - b);
  assert.deepEqual(versions, Array.from({ length: 2 * N }, (_, i) => i + 1), "one chat, versions 1..20");

  step("all sent");
  const waitFor = (page, expr) => page.waitForFunction(expr, { timeout: 15_000 });
  await waitFor(alice.page, `window.got.length >= ${N}`);
  await waitFor(bob.page, `window.got.length >= ${N}`);
  const aliceGot = await alice.page.evaluate(() => window.got);
  const bobGot = await bob.page.evaluate(() => window.got);
  assert.deepEqual(bobGot.map((m) => m.text), Array.from({ length: N }, (_, i) => `from alice ${i + 1}`));
  assert.deepEqual(aliceGot.map((m) => m.text), Array.from({ length: N }, (_, i) => `from bob ${i + 1}`));
  assert.deepEqual(bobGot.map((m) => m.messageId), fromAlice.map((r) => r.messageId));
  for (const got of [aliceGot, bobGot]) {
    const v = got.map((m) => m.version);
    assert.deepEqual(v, [...v].sort((a, b) => a - b), "received in version order");
  }
  // every message read by its receiver: each sender sees N read receipts
  await waitFor(alice.page, `window.receipts.filter(r => r.state === "read").length >= ${N}`);
  await waitFor(bob.page, `window.receipts.filter(r => r.state === "read").length >= ${N}`);

  step("all received and read");
  mkdirSync(OUT, { recursive: true });
  // a page in a background tab may never paint in headless Chromium: bring each to the front first
  for (const [name, u] of [["alice", alice], ["bob", bob]]) {
    await u.page.bringToFront();
    await u.page.screenshot({ path: join(OUT, `browser-${name}.png`), fullPage: true });
  }
  step("screenshots written");

  for (const u of [alice, bob]) {
    assert.deepEqual(await u.page.evaluate(() => window.errors), []);
    assert.deepEqual(u.errors, []);
    await u.page.evaluate(() => window.client.logout());
  }
});

test("in the browser a refused token rejects connect() with a BimipError (close code only)", { timeout: 30_000 }, async () => {
  const page = await browser.newPage();
  await page.goto(`http://127.0.0.1:${http.address().port}/`);
  await page.waitForFunction("window.sdkReady === true", { timeout: 10_000 });
  const e = await page.evaluate(async (url) => {
    try {
      await window.bimip.connect(url, { token: "not-a-jwt" });
      return null;
    } catch (err) {
      return { name: err.name, isBimip: err instanceof window.bimip.BimipError, code: err.code, kind: err.kind, source: err.source, closeCode: err.closeCode };
    }
  }, server.url);
  assert.ok(e, "connect() must reject");
  assert.equal(e.isBimip, true);
  assert.equal(e.kind, "connect_failed");
  assert.equal(e.source, "handshake");
  assert.equal(e.closeCode, 1006);
  await page.close();
});
