// Token refresh (TOK-8, TOK-9), logout (OUT-1..3, CLI-4) and media messages (CHAT-3, CHAT-5,
// CHAT-11) against the reference server.
import { test, before, after } from "node:test";
import assert from "node:assert/strict";
import { startServer } from "./support/server.js";
import { wait, until, nextEvent, collect } from "./support/util.js";
import { connect, BimipError } from "../dist/index.js";

let server;
before(async () => {
  server = await startServer();
});
after(async () => {
  await server?.stop();
});

const isError = (code, kind) => (e) => e instanceof BimipError && e.code === code && e.kind === kind;

test("refreshToken: a new token, the old one revoked, the session goes on and reconnects with the new one (TOK-8, TOK-9)", { timeout: 30_000 }, async () => {
  const E = "rita.t@example.com";
  const old = server.token(E, "phone");
  const r = await connect(server.url, { token: old, reconnect: true });
  const peer = await connect(server.url, { token: server.token("ron.t@example.com", "phone") });
  const tokens = collect(r, "token");
  try {
    const fresh = await r.refreshToken();
    assert.ok(fresh.token && fresh.token !== old);
    assert.ok(fresh.expiresAt > Date.now());
    assert.equal(r.session.expiresAt, fresh.expiresAt);
    assert.deepEqual(tokens, [fresh]);
    // the old jti is revoked
    await assert.rejects(connect(server.url, { token: old }), isError(401, "token_revoked"));
    // the session is still open and works both ways
    const sent = await r.sendText("ron.t@example.com", "still here");
    assert.equal((await peer.messages().next()).value.messageId, sent.messageId);
    const back = await peer.sendText(E, "good");
    assert.equal((await r.messages().next()).value.messageId, back.messageId);

    // a lost connection: the reconnect uses the refreshed token (the old one would be refused, CLI-5)
    const reconnected = nextEvent(r, "reconnect", () => true, 10_000);
    await server.restart();
    const s = await reconnected;
    assert.deepEqual(s.identity, { eid: E, device: "phone" });
    assert.equal((await r.getAwareness(E)).status, 1);
  } finally {
    r.close();
    peer.close();
  }
});

test("after a refresh the session lasts until the new token's exp, not the old one (TOK-9)", { timeout: 30_000 }, async () => {
  const c = await connect(server.url, { token: server.token("tess.t@example.com", "phone", ["--ttl", "3"]) });
  const closes = collect(c, "close");
  const oldExp = c.session.expiresAt;
  await wait(1500);
  const fresh = await c.refreshToken();
  assert.ok(fresh.expiresAt > oldExp, "the new exp is later");
  await wait(Math.max(0, oldExp - Date.now()) + 400);
  assert.deepEqual(closes, [], "still open after the old exp");
  assert.equal((await c.getAwareness("tess.t@example.com")).status, 1);
  await until(() => closes.length > 0, "the close at the new exp", fresh.expiresAt - Date.now() + 3000);
  assert.equal(closes[0].code, 4401);
  assert.equal(closes[0].reconnecting, false);
});

test("logout: resolves on the RESPONSE, the server closes 1000, no reconnect, token revoked, other device untouched (OUT-1..3, CLI-4)", { timeout: 30_000 }, async () => {
  const E = "lola.o@example.com";
  const W = "walt.o@example.com";
  const token = server.token(E, "phone");
  const phone = await connect(server.url, { token, reconnect: true });
  const tablet = await connect(server.url, { token: server.token(E, "tablet") });
  const watcher = await connect(server.url, { token: server.token(W, "phone") });
  try {
    await phone.addSubscriber(W);
    const events = { close: collect(phone, "close"), reconnect: collect(phone, "reconnect") };
    await phone.logout();
    assert.equal(events.close.length, 1);
    assert.equal(events.close[0].code, 1000);
    assert.equal(events.close[0].reconnecting, false);
    assert.equal(phone.connected, false);
    await assert.rejects(phone.sendText(W, "x"), (e) => e.kind === "closed");
    await assert.rejects(connect(server.url, { token }), isError(401, "token_revoked"), "OUT-2");
    // OUT-3: the tablet goes on; the user is still online
    assert.equal((await tablet.getAwareness(E)).status, 1);
    const offline = nextEvent(watcher, "awareness", (n) => n.eid === E && n.status === 2);
    await tablet.logout();
    assert.ok((await offline).lastSeen > 0, "the last session's logout makes the user OFFLINE (AWR-2)");
    await wait(1600); // longer than the first reconnect wait (1 s + up to 50 %)
    assert.deepEqual(events.reconnect, []);
  } finally {
    phone.close();
    tablet.close();
    watcher.close();
  }
});

test("sendMedia resolves with the VersionUpdate; the receiver gets media_url and the media fields (CHAT-3, CHAT-11)", { timeout: 30_000 }, async () => {
  const A = "mia.m@example.com";
  const B = "max.m@example.com";
  const a = await connect(server.url, { token: server.token(A, "phone") });
  const b = await connect(server.url, { token: server.token(B, "phone") });
  try {
    const text = await a.sendText(B, "a picture follows");
    const sent = await a.sendMedia(B, {
      url: "https://cdn.example.com/p/1.jpg",
      type: "image",
      caption: "sunset",
      thumbnailUrl: "https://cdn.example.com/p/1-thumb.jpg",
      sizeBytes: 123456,
      chatId: text.chatId,
    });
    assert.equal(sent.chatId, text.chatId);
    assert.equal(sent.version, text.version + 1);
    assert.ok(sent.messageId && sent.messageIdLocal);
    const inbox = b.messages();
    assert.equal((await inbox.next()).value.text, "a picture follows");
    const m = (await inbox.next()).value;
    assert.equal(m.messageId, sent.messageId);
    assert.equal(m.text, undefined);
    assert.equal(m.mediaUrl, "https://cdn.example.com/p/1.jpg");
    assert.equal(m.mediaType, 1);
    assert.equal(m.caption, "sunset");
    assert.equal(m.thumbnailUrl, "https://cdn.example.com/p/1-thumb.jpg");
    assert.equal(m.mediaSizeBytes, 123456);
    // CHAT-3: a media rule broken; CLI-1: a resend with the same id returns the original
    await assert.rejects(a.sendMedia(B, { url: "", type: "file" }), (e) => isError(400, "invalid_field")(e) && e.route === "15");
    await assert.rejects(a.sendMedia(B, { url: "u", type: 9 }), isError(400, "invalid_field"));
    await assert.rejects(a.sendMedia(B, { url: "u", type: "audio", chatId: "not-this-chat" }), isError(400, "invalid_field"));
    const again = await a.sendMedia(B, { url: "https://cdn.example.com/p/1.jpg", type: "image" }, { messageIdLocal: sent.messageIdLocal });
    assert.equal(again.messageId, sent.messageId);
    assert.equal(again.version, sent.version);
  } finally {
    a.close();
    b.close();
  }
});
