// QUE-7 with bounded memory: the client drops a message_id it saw within its window (dedupWindow
// ids), and remembers no more than that.
import { test } from "node:test";
import assert from "node:assert/strict";
import { createServer } from "node:http";
import { WebSocketServer } from "ws";
import { connect, encodeStanza, BoundedSet } from "../dist/index.js";
import { until, wait } from "./support/util.js";

test("BoundedSet keeps at most `limit` keys, forgets the oldest, refreshes on a repeat", { timeout: 30_000 }, () => {
  const s = new BoundedSet(3);
  assert.equal(s.add("a"), true);
  assert.equal(s.add("b"), true);
  assert.equal(s.add("c"), true);
  assert.equal(s.add("a"), false, "a duplicate within the window");
  assert.equal(s.add("d"), true);
  assert.equal(s.size, 3);
  assert.equal(s.has("b"), false, "b was the oldest (a was refreshed)");
  assert.equal(s.has("a"), true);
  for (let i = 0; i < 10_000; i++) s.add(`k${i}`);
  assert.equal(s.size, 3);
  assert.throws(() => new BoundedSet(0), RangeError);
});

const AUTH_OK = encodeStanza({
  case: "authenticate",
  value: { type: 2, status: 1, identity: { eid: "a@x.example", connectionResourceId: "d" }, pingIntervalMs: 30000n, maxStanzaBytes: 65536n, expiresAt: 1n },
});
const chat = (id) =>
  encodeStanza({
    case: "chatMessage",
    value: { messageId: id, messageIdLocal: `l-${id}`, version: 1n, chatId: "c", from: { eid: "b@x.example", connectionResourceId: "p" }, to: [{ eid: "a@x.example" }], author: "receiver", payload: { case: "text", value: id }, acknowledgment: 1 },
  });
const receipt = (id, status) =>
  encodeStanza({
    case: "acknowledgmentResponse",
    value: { messageId: id, status, chatId: "c", version: 1n, from: { eid: "b@x.example", connectionResourceId: "p" }, to: { eid: "a@x.example", connectionResourceId: "d" } },
  });

async function scripted(ids) {
  const http = createServer();
  const wss = new WebSocketServer({ server: http, handleProtocols: () => "bimip.v1" });
  let confirmations = 0;
  wss.on("connection", (ws) => {
    ws.send(AUTH_OK);
    ws.on("message", () => confirmations++);
    setTimeout(() => {
      for (const s of ids) ws.send(s);
    }, 20);
  });
  await new Promise((r) => http.listen(0, "127.0.0.1", r));
  return {
    url: `ws://127.0.0.1:${http.address().port}/ws`,
    confirmations: () => confirmations,
    close: () => new Promise((r) => { for (const c of wss.clients) c.terminate(); http.close(r); }),
  };
}

test("duplicates within the window are dropped; beyond the window the oldest id is forgotten (dedupWindow)", { timeout: 30_000 }, async () => {
  // window 4: m1..m4 seen; m2 again is dropped (and refreshed); m5 and m6 push out m1 and m3;
  // m1 again is new (it pushes out m4); m2 again is still a duplicate
  const order = ["m1", "m2", "m3", "m4", "m2", "m5", "m6", "m1", "m2"];
  const s = await scripted(order.map(chat));
  const c = await connect(s.url, { token: "t", dedupWindow: 4 });
  try {
    const got = [];
    c.on("message", (m) => got.push(m.messageId));
    await until(() => s.confirmations() >= order.length, "every copy confirmed, duplicates too");
    await wait(50);
    assert.deepEqual(got, ["m1", "m2", "m3", "m4", "m5", "m6", "m1"]);
  } finally {
    c.close();
    await s.close();
  }
});

test("the default window drops a duplicate after thousands of other ids; receipts are deduplicated within their window", { timeout: 30_000 }, async () => {
  const ids = Array.from({ length: 3000 }, (_, i) => `x${i}`);
  const stanzas = [...ids.map(chat), chat("x0"), chat("x2999"), receipt("x1", 2), receipt("x1", 2), receipt("x1", 3)];
  const s = await scripted(stanzas);
  const c = await connect(s.url, { token: "t" });
  try {
    let count = 0;
    const receipts = [];
    c.on("message", () => count++);
    c.on("receipt", (r) => receipts.push(`${r.messageId}:${r.state}`));
    await until(() => receipts.length >= 2 && s.confirmations() >= 3003, "all stanzas handled", 10_000);
    await wait(50);
    assert.equal(count, 3000);
    assert.deepEqual(receipts, ["x1:delivered", "x1:read"]);
  } finally {
    c.close();
    await s.close();
  }
});
