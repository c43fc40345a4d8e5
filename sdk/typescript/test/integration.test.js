// Integration with the reference server ($BIMIP_BIN or the cargo debug build, see support/server.js), on loopback.
import { test, before, after } from "node:test";
import assert from "node:assert/strict";
import { startServer } from "./support/server.js";
import { connect, BimipError } from "../dist/index.js";

let server;
before(async () => {
  server = await startServer();
});
after(async () => {
  await server?.stop();
});

const ALICE = "alice@example.com";
const BOB = "bob@example.com";
const wait = (ms) => new Promise((r) => setTimeout(r, ms));
async function until(cond, what, ms = 5000) {
  const end = Date.now() + ms;
  while (!cond()) {
    if (Date.now() > end) throw new Error(`timed out waiting for ${what}`);
    await wait(10);
  }
}
const receipts = (client) => {
  const list = [];
  client.on("receipt", (r) => list.push(r));
  return list;
};

test("the Authenticate RESPONSE gives the session identity and limits", async () => {
  const a = await connect(server.url, { token: server.token("carol@example.com", "phone") });
  assert.deepEqual(a.session.identity, { eid: "carol@example.com", device: "phone" });
  assert.equal(a.session.maxStanzaBytes, 65536);
  assert.ok(a.session.pingIntervalMs > 0);
  assert.ok(a.session.expiresAt > Date.now());
  const closes = [];
  const off = a.on("close", (d) => closes.push(d));
  await a.logout();
  off();
  assert.equal(closes.length, 1);
  assert.equal(closes[0].code, 1000, "the server closes with 1000 after Logout");
  assert.equal(closes[0].reconnecting, false);
});

test("a bad token is refused with BimipError 401 and SPEC's kind", async () => {
  await assert.rejects(connect(server.url, { token: "not-a-jwt" }), (e) => {
    assert.ok(e instanceof BimipError);
    assert.equal(e.code, 401);
    assert.equal(e.kind, "token_malformed");
    return true;
  });
  const expired = server.token("dave@example.com", "phone", ["--ttl", "0"]);
  await assert.rejects(connect(server.url, { token: expired }), (e) => e.code === 401 && e.kind === "token_expired");
});

test("two clients chat both ways with acks; the sender sees delivered and read", async () => {
  const a = await connect(server.url, { token: server.token(ALICE, "phone") });
  const b = await connect(server.url, { token: server.token(BOB, "phone") });
  const aReceipts = receipts(a);
  const bReceipts = receipts(b);
  try {
    const sent = await a.sendText(BOB, "hello bob");
    assert.ok(sent.messageId && sent.chatId && sent.messageIdLocal);
    assert.equal(sent.version, 1);
    const bIn = b.messages();
    const got = (await bIn.next()).value;
    assert.equal(got.text, "hello bob");
    assert.equal(got.messageId, sent.messageId);
    assert.equal(got.chatId, sent.chatId);
    assert.equal(got.version, 1);
    assert.equal(got.author, "receiver");
    assert.equal(got.acknowledgment, 1);
    assert.deepEqual(got.from, { eid: ALICE, device: "phone" });
    // b's client confirmed the copy as DELIVERED on its own (QUE-4); alice sees it
    await until(() => aReceipts.some((r) => r.messageId === sent.messageId && r.state === "delivered"), "delivered");
    const confirmation = await b.ack(got.messageId, "read");
    assert.equal(confirmation.status, 3);
    assert.equal(confirmation.messageId, sent.messageId);
    await until(() => aReceipts.some((r) => r.messageId === sent.messageId && r.state === "read"), "read");

    // the other way round: same chat, next version
    const reply = await b.sendText(ALICE, "hi alice");
    assert.equal(reply.chatId, sent.chatId);
    assert.equal(reply.version, 2);
    const aIn = a.messages();
    const got2 = (await aIn.next()).value;
    assert.equal(got2.text, "hi alice");
    assert.equal(got2.version, 2);
    await a.ack(got2.messageId, "read");
    await until(() => bReceipts.some((r) => r.messageId === reply.messageId && r.state === "read"), "read of reply");
    // acking an unknown message is refused with 404 not_found (ACK-2)
    await assert.rejects(a.ack("no-such-message", "read"), (e) => e.code === 404 && e.kind === "not_found");
  } finally {
    a.close();
    b.close();
  }
});

test("invalid requests are rejected with the server's ErrorMessage", async () => {
  const a = await connect(server.url, { token: server.token("erin@example.com", "phone") });
  try {
    await assert.rejects(a.sendText("erin@example.com", "to myself"), (e) => e.code === 400 && e.kind === "invalid_field" && e.route === "14");
    await assert.rejects(a.sendText(BOB, ""), (e) => e.code === 400 && e.kind === "invalid_field");
  } finally {
    a.close();
  }
});

test("offline delivery: bob is away, alice sends 3, bob reconnects and gets them in order, once", async () => {
  const from = "frank@example.com";
  const to = "grace@example.com";
  let g = await connect(server.url, { token: server.token(to, "laptop") });
  g.close();
  await wait(100);
  const f = await connect(server.url, { token: server.token(from, "phone") });
  const fReceipts = receipts(f);
  const sent = [];
  for (const text of ["one", "two", "three"]) sent.push(await f.sendText(to, text));
  assert.deepEqual(sent.map((s) => s.version), [1, 2, 3]);

  g = await connect(server.url, { token: server.token(to, "laptop") });
  const inbox = g.messages();
  const got = [];
  for (let i = 0; i < 3; i++) got.push((await inbox.next()).value);
  assert.deepEqual(got.map((m) => m.text), ["one", "two", "three"]);
  assert.deepEqual(got.map((m) => m.version), [1, 2, 3]);
  assert.deepEqual(got.map((m) => m.messageId), sent.map((s) => s.messageId));
  await until(() => fReceipts.filter((r) => r.state === "delivered").length === 3, "3 delivered receipts");
  // the replay was confirmed (QUE-4): the next session replays nothing
  await wait(200);
  g.close();
  await wait(100);
  g = await connect(server.url, { token: server.token(to, "laptop") });
  const again = [];
  g.addEventListener("message", (e) => again.push(e.detail));
  await wait(500);
  assert.deepEqual(again, []);
  g.close();
  f.close();
});

test("the sender's other device gets a sender copy and confirms it with 4", async () => {
  const h = "heidi@example.com";
  const i = "ivan@example.com";
  const phone = await connect(server.url, { token: server.token(h, "phone") });
  const tablet = await connect(server.url, { token: server.token(h, "tablet") });
  const sent = await phone.sendText(i, "from phone");
  const copy = (await tablet.messages().next()).value;
  assert.equal(copy.author, "sender");
  assert.equal(copy.messageId, sent.messageId);
  tablet.close();
  await wait(200);
  // confirmed: the next tablet session does not get the copy again
  const tablet2 = await connect(server.url, { token: server.token(h, "tablet") });
  const again = [];
  tablet2.addEventListener("message", (e) => again.push(e.detail));
  await wait(400);
  assert.deepEqual(again, []);
  tablet2.close();
  phone.close();
});

test("session_replaced (4409): the old client does not reconnect (CLI-4)", async () => {
  const token = () => server.token("judy@example.com", "phone");
  const first = await connect(server.url, { token: token(), reconnect: true });
  const closed = new Promise((r) => first.addEventListener("close", (e) => r(e.detail)));
  const errors = [];
  first.addEventListener("error", (e) => errors.push(e.detail));
  const second = await connect(server.url, { token: token() });
  const detail = await closed;
  assert.equal(detail.code, 4409);
  assert.equal(detail.reconnecting, false);
  assert.ok(errors.some((e) => e.kind === "session_replaced" && e.code === 409));
  await assert.rejects(first.sendText(BOB, "x"), (e) => e.kind === "closed" || e.kind === "session_replaced");
  second.close();
});

test("native TCP (SPEC §2.3): a TCP client and a WebSocket client chat; a bad token is refused with 401", async () => {
  assert.ok(server.tcpUrl, "the server printed its TCP address");
  const k = await connect(server.tcpUrl, { token: server.token("kim@example.com", "desktop") });
  assert.deepEqual(k.session.identity, { eid: "kim@example.com", device: "desktop" });
  const l = await connect(server.url, { token: server.token("lee@example.com", "phone") });
  const kReceipts = receipts(k);
  try {
    const sent = await k.sendText("lee@example.com", "over tcp");
    const got = (await l.messages().next()).value;
    assert.equal(got.text, "over tcp");
    await l.ack(got.messageId, "read");
    await until(() => kReceipts.some((r) => r.messageId === sent.messageId && r.state === "read"), "read over tcp");
    const back = await l.sendText("kim@example.com", "over ws");
    const got2 = (await k.messages().next()).value;
    assert.equal(got2.messageId, back.messageId);
    assert.equal(got2.text, "over ws");
  } finally {
    k.close();
    l.close();
  }
  await assert.rejects(connect(server.tcpUrl, { token: "not-a-jwt" }), (e) => e.code === 401 && e.kind === "token_malformed" && e.route === "27");
});
