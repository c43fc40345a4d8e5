// Real-browser test: the built ESM SDK (dist/) runs in headless Chromium, two pages as two users
// chat 50 messages each way through the reference server. Run with `npm run test:browser`.
// Chromium is required: CHROMIUM_PATH, or /usr/bin/chromium (Debian: apt-get install -y chromium).
import { test } from "node:test";
import assert from "node:assert/strict";
import { mkdirSync } from "node:fs";
import { join } from "node:path";
import { OUT, stepper, watchErrors, withBrowserAndServer } from "./harness.js";

const N = 50;
const step = stepper("browser-test");

let server, http, browser;
withBrowserAndServer(step, (env) => ({ server, http, browser } = env));

async function openUser(eid, device) {
  step(`${eid}: new page`);
  const page = await browser.newPage();
  page.setDefaultTimeout(15_000);
  const errors = watchErrors(page);
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
  const waitFor = (page, expr) => page.waitForFunction(expr, { timeout: 15_000, polling: 50 }); // rAF may stall in a background tab
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
