// Real-browser tests of sessions across page lifetimes (headless Chromium, the built SDK, the
// reference server on loopback):
// - a closed page's device gets, on its next page, exactly the messages sent to it meanwhile
//   (SPEC §17, the offline queue), in order, each once, and not again on the page after that;
// - a reloaded page's new session works, and a second tab of the same device replaces it:
//   the replaced client reports 409 session_replaced and closes with 4409 (SES-1), and neither
//   tab reconnects on its own (CLI-4).
import { test } from "node:test";
import assert from "node:assert/strict";
import { mkdirSync } from "node:fs";
import { join } from "node:path";
import { OUT, stepper, watchErrors, withBrowserAndServer } from "./harness.js";

const step = stepper("browser-sessions");
const sleep = (ms) => new Promise((r) => setTimeout(r, ms));

let server, http, browser;
withBrowserAndServer(step, (env) => ({ server, http, browser } = env));

/** Loads the test page into `page` and connects it as (eid, device) with a fresh token. */
async function signIn(page, eid, device, { reconnect = false } = {}) {
  await page.goto(`http://127.0.0.1:${http.address().port}/`);
  await page.waitForFunction("window.sdkReady === true", { timeout: 10_000 });
  const token = server.token(eid, device);
  return page.evaluate(
    async (url, token, eid, device, reconnect) => {
      // Count the page's WebSocket connections: a reconnect loop would show as more of them.
      window.sockets = 0;
      const Native = window.WebSocket;
      window.WebSocket = class extends Native {
        constructor(...args) {
          super(...args);
          window.sockets++;
        }
      };
      document.getElementById("who").textContent = `${eid} (${device})`;
      const note = (cls, text) => {
        const li = document.createElement("li");
        li.className = cls;
        li.textContent = text;
        document.getElementById("log").append(li);
      };
      window.note = note;
      const client = await window.bimip.connect(url, { token, reconnect });
      window.client = client;
      window.got = [];
      window.receipts = [];
      window.errors = [];
      window.closes = [];
      window.reconnects = 0;
      client.on("message", (m) => {
        window.got.push(m);
        note("in", `← v${m.version} ${m.from.eid}: ${m.text}`);
      });
      client.on("receipt", (r) => window.receipts.push(r));
      client.on("error", (e) => {
        window.errors.push({ code: e.code, kind: e.kind, source: e.source });
        note("note", `error ${e.code} ${e.kind}`);
      });
      client.on("close", (d) => {
        window.closes.push({ code: d.code, reconnecting: d.reconnecting, errorCode: d.error.code, errorKind: d.error.kind });
        note("note", `closed ${d.code} (${d.error.kind}), reconnecting: ${d.reconnecting}`);
      });
      client.on("reconnect", () => window.reconnects++);
      note("note", `connected as ${client.session.identity.eid} / ${client.session.identity.device}`);
      return client.session;
    },
    server.url,
    token,
    eid,
    device,
    reconnect,
  );
}

async function openPage(eid, device, opts) {
  const page = await browser.newPage();
  page.setDefaultTimeout(15_000);
  const errors = watchErrors(page);
  const session = await signIn(page, eid, device, opts);
  step(`${eid}/${device}: connected`);
  return { page, errors, session };
}

/** Sends texts one after the other from a page; resolves with the SendResults. */
function sendAll(page, to, texts) {
  return page.evaluate(
    async (to, texts) => {
      const out = [];
      for (const t of texts) {
        const r = await window.client.sendText(to, t);
        out.push(r);
        window.note("out", `→ v${r.version} ${to}: ${t}`);
      }
      return out;
    },
    to,
    texts,
  );
}

// polls by interval: requestAnimationFrame (the default) may stall in a background tab
const waitFor = (page, expr, timeout = 10_000) => page.waitForFunction(expr, { timeout, polling: 50 });

async function screenshot(pages) {
  mkdirSync(OUT, { recursive: true });
  // a page in a background tab may never paint in headless Chromium: bring each to the front first
  for (const [name, page] of pages) {
    await page.bringToFront();
    await page.screenshot({ path: join(OUT, `${name}.png`), fullPage: true });
  }
}

test("a closed page's device gets the messages sent meanwhile on its next page: in order, each once", { timeout: 30_000 }, async () => {
  const ALICE = "alice@example.com";
  const BOB = "bob@example.com";
  const N = 10;
  const alice1 = await openPage(ALICE, "laptop");
  const bob = await openPage(BOB, "web");

  // The device is known now (it had a session); its page goes away without a logout.
  await alice1.page.close();
  step("alice's page closed");
  await sleep(300);

  const texts = Array.from({ length: N }, (_, i) => `while you were away ${i + 1}`);
  const sent = await sendAll(bob.page, ALICE, texts);
  step(`bob sent ${N} to the offline device`);
  assert.equal(sent.length, N);

  const alice2 = await openPage(ALICE, "laptop");
  await waitFor(alice2.page, `window.got.length >= ${N}`);
  await sleep(700); // anything extra (a duplicate) would come right behind
  const got = await alice2.page.evaluate(() => window.got);
  assert.deepEqual(got.map((m) => m.text), texts, "exactly the offline messages, in order");
  assert.deepEqual(got.map((m) => m.messageId), sent.map((r) => r.messageId), "each once, the ids the sender got");
  assert.deepEqual(got.map((m) => m.version), sent.map((r) => r.version));
  assert.ok(got.every((m) => m.from.eid === BOB && m.author === "receiver"));

  // The SDK confirmed each copy as DELIVERED on arrival; the sender sees that, then the reads.
  await waitFor(bob.page, `window.receipts.filter((r) => r.state === "delivered").length >= ${N}`);
  const reads = await alice2.page.evaluate(async () => {
    const out = [];
    for (const m of window.got) out.push((await window.client.ack(m.messageId, "read")).state);
    return out;
  });
  assert.deepEqual(reads, Array(N).fill("read"));
  await waitFor(bob.page, `window.receipts.filter((r) => r.state === "read").length >= ${N}`);
  const receipts = await bob.page.evaluate(() => window.receipts);
  for (const state of ["delivered", "read"]) {
    assert.deepEqual(
      receipts.filter((r) => r.state === state).map((r) => r.messageId),
      sent.map((r) => r.messageId),
      `one ${state} receipt per message, in order`,
    );
  }
  step("offline messages delivered and read");
  await screenshot([["sessions-offline-alice", alice2.page], ["sessions-offline-bob", bob.page]]);

  // Confirmed: the device's next page gets none of them again.
  await alice2.page.close();
  const alice3 = await openPage(ALICE, "laptop");
  await sleep(1000);
  assert.deepEqual(await alice3.page.evaluate(() => window.got), [], "confirmed messages do not come again");

  for (const u of [alice2, bob, alice3]) assert.deepEqual(u.errors, []);
  for (const u of [bob, alice3]) {
    assert.deepEqual(await u.page.evaluate(() => window.errors), []);
    await u.page.evaluate(() => window.client.logout());
    await u.page.close();
  }
});

test("a reloaded page's session works; a second tab of the same device replaces it (4409, no reconnect loop)", { timeout: 30_000 }, async () => {
  const CAROL = "carol@example.com";
  const DAVE = "dave@example.com";
  const tab1 = await openPage(CAROL, "web", { reconnect: true });
  const dave = await openPage(DAVE, "web", { reconnect: true });
  await sendAll(tab1.page, DAVE, ["before the reload"]);

  // Reload: the page's old connection goes away with it; the new page signs in as the same device.
  await signIn(tab1.page, CAROL, "web", { reconnect: true });
  step("tab 1 reloaded and connected again");
  await sendAll(tab1.page, DAVE, ["after the reload"]);
  await sendAll(dave.page, CAROL, ["welcome back"]);
  await waitFor(dave.page, "window.got.length >= 2");
  await waitFor(tab1.page, "window.got.length >= 1");
  assert.deepEqual(await dave.page.evaluate(() => window.got.map((m) => m.text)), ["before the reload", "after the reload"]);
  assert.deepEqual(await tab1.page.evaluate(() => window.got.map((m) => m.text)), ["welcome back"]);
  assert.deepEqual(await tab1.page.evaluate(() => window.closes), [], "the reloaded page's session was not replaced");

  // A second tab of the same device: the newer session wins (SES-1).
  const tab2 = await openPage(CAROL, "web", { reconnect: true });
  await waitFor(tab1.page, "window.closes.length >= 1");
  step("tab 1 replaced");
  const replaced = await tab1.page.evaluate(() => ({
    closes: window.closes,
    errors: window.errors,
    connected: window.client.connected,
  }));
  assert.deepEqual(replaced.closes, [{ code: 4409, reconnecting: false, errorCode: 409, errorKind: "session_replaced" }]);
  assert.deepEqual(replaced.errors, [{ code: 409, kind: "session_replaced", source: "server" }], "the ErrorMessage before the close");
  assert.equal(replaced.connected, false);

  // CLI-4: no reconnect after 4409. The first reconnect would come after 1 to 1.5 s.
  await sleep(2500);
  const after1 = await tab1.page.evaluate(() => ({ sockets: window.sockets, reconnects: window.reconnects, closes: window.closes.length }));
  assert.deepEqual(after1, { sockets: 1, reconnects: 0, closes: 1 }, "the replaced tab stays closed");
  const after2 = await tab2.page.evaluate(() => ({ sockets: window.sockets, closes: window.closes, connected: window.client.connected }));
  assert.deepEqual(after2, { sockets: 1, closes: [], connected: true }, "the new tab keeps its session");
  const late = await tab1.page.evaluate(() =>
    window.client.sendText("dave@example.com", "from the old tab").then(
      () => null,
      (e) => ({ code: e.code, kind: e.kind }),
    ),
  );
  assert.deepEqual(late, { code: 0, kind: "closed" }, "the replaced client refuses to send");

  // The new session sends and receives; the replaced one gets nothing more.
  await sendAll(tab2.page, DAVE, ["from the new tab"]);
  await sendAll(dave.page, CAROL, ["hello new tab"]);
  await waitFor(tab2.page, "window.got.length >= 1");
  await waitFor(dave.page, "window.got.length >= 3");
  assert.deepEqual(await tab2.page.evaluate(() => window.got.map((m) => m.text)), ["hello new tab"]);
  assert.deepEqual((await dave.page.evaluate(() => window.got.map((m) => m.text)))[2], "from the new tab");
  await sleep(300);
  assert.deepEqual(await tab1.page.evaluate(() => window.got.map((m) => m.text)), ["welcome back"]);
  step("new tab chats, old tab quiet");
  await screenshot([["sessions-replaced-tab1", tab1.page], ["sessions-replaced-tab2", tab2.page], ["sessions-replaced-dave", dave.page]]);

  for (const u of [tab1, tab2, dave]) assert.deepEqual(u.errors, []);
  for (const u of [tab2, dave]) {
    assert.deepEqual(await u.page.evaluate(() => window.errors), []);
    await u.page.evaluate(() => window.client.logout());
  }
  for (const u of [tab1, tab2, dave]) await u.page.close();
});
