// The web chat example (examples/web-chat) in headless Chromium, served by its own serve.js
// against the reference server, so that the example cannot silently rot: two users sign in
// through the page's form (tokens minted by serve.js with `bimip token`), chat both ways by
// typing, see ✓ / ✓✓ / read on what they sent; a second tab of the same device replaces the
// first, which says so.
import { test, before, after } from "node:test";
import assert from "node:assert/strict";
import { spawn } from "node:child_process";
import { mkdirSync } from "node:fs";
import { request } from "node:http";
import { join } from "node:path";
import { BIMIP_BIN, startServer } from "../support/server.js";
import { OUT, REPO, launchBrowser, stepper, watchErrors } from "./harness.js";

const step = stepper("browser-web-chat");
const SERVE_JS = join(REPO, "examples/web-chat/serve.js");

let server, web, webUrl, webLog = "", chromium, browser;

/** Starts `node examples/web-chat/serve.js` (as `web`) on a free loopback port against `server`; resolves with its URL. */
function startWebChat() {
  const child = (web = spawn(process.execPath, [SERVE_JS], {
    // SDK_BUILD=0: serve the dist/ that `npm run test:browser` just built
    env: { ...process.env, PORT: "0", BIMIP_URL: server.url, BIMIP_DATA_DIR: server.dir, BIMIP_BIN, SDK_BUILD: "0" },
    stdio: ["ignore", "pipe", "pipe"],
  }));
  child.stderr.on("data", (d) => (webLog += d));
  return new Promise((resolve, reject) => {
    const timer = setTimeout(() => reject(new Error(`serve.js did not start:\n${webLog}`)), 10_000);
    child.on("exit", (code) => reject(new Error(`serve.js exited with ${code}:\n${webLog}`)));
    child.stdout.on("data", (d) => {
      webLog += d;
      const m = /web chat: (http:\/\/\S+)/.exec(webLog);
      if (m) {
        clearTimeout(timer);
        resolve(m[1]);
      }
    });
  });
}

before(async () => {
  step("launching Chromium");
  chromium = await launchBrowser();
  browser = chromium.browser;
  server = await startServer();
  webUrl = await startWebChat();
  step(`example at ${webUrl}`);
});

after(async () => {
  await chromium?.close();
  if (web && web.exitCode === null) {
    const exited = new Promise((r) => web.once("exit", r));
    web.kill("SIGTERM");
    await Promise.race([exited, new Promise((r) => setTimeout(r, 3000).unref())]);
    if (web.exitCode === null) web.kill("SIGKILL");
  }
  await server?.stop();
});

/** Waits for fn() in the page; polls by interval: requestAnimationFrame (the default) stalls in a background tab. */
const until = (page, fn) => page.waitForFunction(fn, { polling: 50 });

/** Opens the example in a new tab and signs in through its form. */
async function signIn(me, peer, device = "web") {
  const page = await browser.newPage();
  page.setDefaultTimeout(10_000);
  const errors = watchErrors(page);
  await page.goto(webUrl);
  await page.bringToFront();
  await page.type("#me", me);
  await page.$eval("#device", (el, v) => (el.value = v), device);
  await page.type("#peer", peer);
  await page.click("#connect");
  await page.waitForSelector("#chat:not([hidden])");
  await until(page, () => !document.getElementById("text").disabled);
  assert.equal(await page.$eval("#login", (el) => getComputedStyle(el).display), "none", "the form goes away once signed in");
  step(`${me}/${device}: signed in`);
  return { page, errors };
}

async function say(page, text) {
  await page.bringToFront(); // keyboard input goes to the tab in front
  await page.type("#text", text);
  await page.keyboard.press("Enter");
}

const rows = (page, cls) =>
  page.$$eval(`#log .msg.${cls}`, (lis) =>
    lis.map((li) => ({ who: li.querySelector(".who").textContent, text: li.querySelector(".text").textContent, state: li.dataset.state ?? null })),
  );

test("the web chat example: two pages sign in through serve.js and chat both ways, with receipts", { timeout: 30_000 }, async () => {
  const alice = await signIn("alice", "bob"); // bare names stand for name@example.com
  const bob = await signIn("bob@example.com", "alice@example.com");
  assert.match(await alice.page.$eval("#status", (el) => el.textContent), /alice@example\.com \(web\) · chatting with bob@example\.com/);

  await say(alice.page, "hi bob");
  await say(alice.page, "how are you?");
  await until(bob.page, () => document.querySelectorAll("#log .msg.in").length >= 2);
  await say(bob.page, "hi alice, fine");
  await until(alice.page, () => document.querySelectorAll("#log .msg.in").length >= 1);

  // The page marks a message read when it is shown (visible): bring each tab to the front once.
  for (const u of [alice, bob]) await u.page.bringToFront();
  await until(alice.page, () => [...document.querySelectorAll("#log .msg.out")].every((li) => li.dataset.state === "read"));
  await until(bob.page, () => [...document.querySelectorAll("#log .msg.out")].every((li) => li.dataset.state === "read"));
  step("chatted, all read");

  assert.deepEqual(await rows(bob.page, "in"), [
    { who: "alice@example.com", text: "hi bob", state: null },
    { who: "alice@example.com", text: "how are you?", state: null },
  ]);
  assert.deepEqual(await rows(alice.page, "in"), [{ who: "bob@example.com", text: "hi alice, fine", state: null }]);
  assert.deepEqual(await rows(alice.page, "out"), [
    { who: "you → bob@example.com", text: "hi bob", state: "read" },
    { who: "you → bob@example.com", text: "how are you?", state: "read" },
  ]);
  assert.deepEqual(await alice.page.$$eval("#log .msg.out .state", (s) => s.map((e) => e.textContent)), ["✓✓ read", "✓✓ read"]);

  mkdirSync(OUT, { recursive: true });
  for (const [name, u] of [["web-chat-alice", alice], ["web-chat-bob", bob]]) {
    await u.page.bringToFront();
    await u.page.screenshot({ path: join(OUT, `${name}.png`), fullPage: true });
  }

  // Same device in a second tab: the first one is told, and offers to sign in again.
  const alice2 = await signIn("alice", "bob");
  await until(alice.page, () => /signed in again somewhere else/.test(document.getElementById("notice").textContent));
  assert.notEqual(await alice.page.$eval("#login", (el) => getComputedStyle(el).display), "none");
  assert.equal(await alice.page.$eval("#text", (el) => el.disabled), true);
  await say(alice2.page, "from the new tab");
  await until(bob.page, () => document.querySelectorAll("#log .msg.in").length >= 3);
  await alice.page.bringToFront();
  await alice.page.screenshot({ path: join(OUT, "web-chat-alice-replaced.png"), fullPage: true });
  step("second tab replaced the first");

  // Sign out: the page says so. What comes meanwhile is there on the next sign-in (offline queue).
  await bob.page.bringToFront();
  await bob.page.click("#logout");
  await until(bob.page, () => document.getElementById("notice").textContent === "Signed out.");
  await say(alice2.page, "still there?");
  await until(alice2.page, () => document.querySelector("#log .msg.out:last-child")?.dataset.state === "sent");
  await bob.page.bringToFront();
  await bob.page.click("#connect"); // the form kept the names
  await until(bob.page, () => [...document.querySelectorAll("#log .msg.in .text")].some((e) => e.textContent === "still there?"));
  assert.deepEqual((await rows(bob.page, "in")).map((r) => r.text), ["hi bob", "how are you?", "from the new tab", "still there?"]);
  await until(alice2.page, () => document.querySelector("#log .msg.out:last-child")?.dataset.state === "read");
  step("signed out and in again, got what came meanwhile");

  for (const u of [alice, bob, alice2]) assert.deepEqual(u.errors, []);
  for (const u of [alice, bob, alice2]) await u.page.close();
});

test("the web chat example's serve.js mints tokens only for valid names and serves nothing outside its roots", { timeout: 10_000 }, async () => {
  const post = (body) => fetch(new URL("/token", webUrl), { method: "POST", headers: { "content-type": "application/json" }, body });
  const ok = await post(JSON.stringify({ eid: "carol@example.com", device: "web" }));
  assert.equal(ok.status, 200);
  assert.match((await ok.json()).token, /^[\w-]+\.[\w-]+\.[\w-]+$/, "a JWT");
  const refused = [
    JSON.stringify({ eid: "carol; rm -rf /", device: "web" }),
    JSON.stringify({ eid: "carol", device: "web" }), // the page turns a bare name into an EID, the server wants one
    JSON.stringify({ eid: "carol@example.com" }),
    "not json",
  ];
  for (const body of refused) assert.equal((await post(body)).status, 400, body);

  assert.deepEqual(await (await fetch(new URL("/config.json", webUrl))).json(), { url: server.url });
  for (const path of ["/sdk/index.js", "/pb/dist/esm/index.js", "/app.js"]) assert.equal((await fetch(new URL(path, webUrl))).status, 200, path);
  for (const path of ["/serve.js", "/README.md", "/sdk/../package.json", "/pb/../../package.json", "/sdk/%2e%2e/package.json"]) {
    // node:http sends the path as it is (fetch would resolve the dots first)
    const status = await new Promise((resolve, reject) =>
      request(new URL(webUrl), { path }, (res) => (res.resume(), resolve(res.statusCode))).on("error", reject).end(),
    );
    assert.equal(status, 404, path);
  }
});
