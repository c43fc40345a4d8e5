// How requests are matched to their answers, against a scripted server: the ping barrier behind
// stanzas without a success answer (ENV-14, PING-1), time-outs, a close while waiting, and a text
// refused with 429 rate_limited (SES-5) going again with the same message_id_local.
import { test } from "node:test";
import assert from "node:assert/strict";
import { createServer } from "node:http";
import { WebSocketServer } from "ws";
import { connect, encodeStanza, decodeStanza } from "../dist/index.js";
import { collect, until, wait } from "./support/util.js";

const AUTH_OK = encodeStanza({
  case: "authenticate",
  value: { type: 2, status: 1, identity: { eid: "a@x.example", connectionResourceId: "d" }, pingIntervalMs: 30000n, maxStanzaBytes: 65536n, expiresAt: 1n },
});
const error = (code, kind, route, refId = "") => encodeStanza({ case: "errorMessage", value: { code, message: kind, route, refId } });

/** `script(payload, ws, seen)` answers each client stanza. */
async function fake(script) {
  const http = createServer();
  const wss = new WebSocketServer({ server: http, handleProtocols: () => "bimip.v1" });
  const seen = [];
  wss.on("connection", (ws) => {
    ws.send(AUTH_OK);
    ws.on("message", (d) => {
      const s = decodeStanza(new Uint8Array(d));
      if (!s.ok) return;
      seen.push(s.payload);
      script(s.payload, ws, seen);
    });
  });
  await new Promise((r) => http.listen(0, "127.0.0.1", r));
  return {
    url: `ws://127.0.0.1:${http.address().port}/ws`,
    seen,
    dropAll: () => { for (const c of wss.clients) c.terminate(); },
    broadcast: (payload) => { for (const c of wss.clients) c.send(encodeStanza(payload)); },
    close: () => new Promise((r) => { for (const c of wss.clients) c.terminate(); http.close(r); }),
  };
}
const pong = (p, ws) => {
  if (p.case === "pingpongMessage" && p.value.type === 1) ws.send(encodeStanza({ case: "pingpongMessage", value: { type: 2, status: 2, id: p.value.id, requestTime: p.value.requestTime } }));
};

test("setPresence resolves on the pong behind it and rejects with the ErrorMessage that comes before the pong", { timeout: 30_000 }, async () => {
  let limited = false;
  const s = await fake((p, ws) => {
    if (p.case === "awarenessNotification" && p.value.status === 5) ws.send(error(400, "invalid_field", "2"));
    if (p.case === "awarenessNotification" && p.value.status === 4) {
      limited = true; // the ping behind it is refused with 429 (SES-5)
      return;
    }
    if (p.case === "pingpongMessage" && limited) {
      limited = false;
      ws.send(error(429, "rate_limited", "6", p.value.id));
      return;
    }
    pong(p, ws);
  });
  const c = await connect(s.url, { token: "t" });
  try {
    await c.setPresence("away", { ttlSeconds: 30 });
    await assert.rejects(c.setPresence("do_not_disturb"), (e) => e.code === 400 && e.kind === "invalid_field" && e.route === "2");
    await c.setIntention("b@x.example", "typing");
    const errors = collect(c, "error");
    await c.setPresence("busy"); // handled; only the barrier ping was refused
    assert.deepEqual(errors, []);
    const sent = s.seen.filter((p) => p.case === "awarenessNotification").map((p) => p.value);
    assert.deepEqual(sent.map((v) => [v.status, v.ttl, v.to?.eid ?? "", v.awarenessIntention]), [
      [3, 30, "", 0],
      [5, 0, "", 0],
      [0, 0, "b@x.example", 1],
      [4, 0, "", 0],
    ]);
    // each is followed by a ping of the client's (the barrier)
    const order = s.seen.map((p) => p.case);
    assert.deepEqual(order, Array.from({ length: 4 }, () => ["awarenessNotification", "pingpongMessage"]).flat());
  } finally {
    c.close();
    await s.close();
  }
});

test("a request without an answer times out; a lost connection rejects the waiting ones", { timeout: 30_000 }, async () => {
  const s = await fake(() => {});
  const c = await connect(s.url, { token: "t", requestTimeoutMs: 150 });
  const t0 = Date.now();
  await assert.rejects(c.getAwareness("b@x.example"), (e) => e.kind === "timeout" && e.code === 0);
  assert.ok(Date.now() - t0 >= 140);
  const waiting = c.addSubscriber("b@x.example", { timeoutMs: 10_000 });
  await wait(50);
  s.dropAll();
  await assert.rejects(waiting, (e) => e.source === "connection" && e.kind === "connection_lost");
  await s.close();
});

test("answers are matched by their correlation fields, not their order of arrival", { timeout: 30_000 }, async () => {
  const held = [];
  const s = await fake((p, ws) => {
    if (p.case === "awarenessRequest") {
      held.push(p.value);
      if (held.length === 2) {
        // answer the second first
        for (const r of held.reverse())
          ws.send(encodeStanza({ case: "awarenessResponse", value: { from: r.to, awarenessIdentifier: r.awarenessIdentifier.toString(), status: r.to.eid.startsWith("busy") ? 4 : 1 } }));
      }
    }
    if (p.case === "blockSubscriber") ws.send(encodeStanza({ case: "blockSubscriber", value: { type: 2, status: 1, subscriber: p.value.subscriber, action: p.value.action } }));
    if (p.case === "awarenessVisibility") ws.send(encodeStanza({ case: "awarenessVisibility", value: { id: p.value.id, type: 2, status: 1, visibility: 1, locationSharing: 2 } }));
    if (p.case === "tokenRefreshRequest") ws.send(encodeStanza({ case: "tokenRefreshResponse", value: { status: 2 } }));
  });
  const c = await connect(s.url, { token: "t" });
  try {
    const [x, y] = await Promise.all([c.getAwareness("busy@x.example"), c.getAwareness("free@x.example")]);
    assert.deepEqual([x.eid, x.presence, y.eid, y.presence], ["busy@x.example", "busy", "free@x.example", "online"]);
    await Promise.all([c.block("u1@x.example"), c.unblock("u2@x.example")]);
    assert.deepEqual(await c.setVisibility({ visibility: "public" }), { visibility: "public", locationSharing: false });
    await assert.rejects(c.refreshToken(), (e) => e.kind === "refresh_failed");
  } finally {
    c.close();
    await s.close();
  }
});

test("a text refused with 429 rate_limited stays pending and goes again with the same message_id_local", { timeout: 30_000 }, async () => {
  let n = 0;
  const s = await fake((p, ws) => {
    if (p.case !== "textPayloadRequest") return;
    const v = p.value;
    if (++n === 1) ws.send(error(429, "rate_limited", "14", v.messageIdLocal));
    else ws.send(encodeStanza({ case: "versionUpdate", value: { type: 1, status: 1, messageId: "m1", messageIdLocal: v.messageIdLocal, version: 1n, chatId: "c" } }));
  });
  const c = await connect(s.url, { token: "t" });
  try {
    const r = await c.sendText("b@x.example", "hello");
    assert.equal(r.messageId, "m1");
    const reqs = s.seen.filter((p) => p.case === "textPayloadRequest").map((p) => p.value);
    assert.equal(reqs.length, 2);
    assert.equal(reqs[0].messageIdLocal, reqs[1].messageIdLocal);
    assert.equal(reqs[1].content, "hello");
  } finally {
    c.close();
    await s.close();
  }
});

test("server-initiated stanzas become events: Body, awareness, intention, location, push, Logout DISCONNECT", { timeout: 30_000 }, async () => {
  const s = await fake(() => {});
  const c = await connect(s.url, { token: "t" });
  const ev = { awareness: collect(c, "awareness"), intention: collect(c, "intention"), location: collect(c, "location"), push: collect(c, "push"), logout: collect(c, "logout") };
  const iter = c.events("awareness");
  try {
    const me = { eid: "a@x.example", connectionResourceId: "d" };
    s.broadcast({
      case: "body",
      value: { awarenessList: [{ from: { eid: "p@x.example" }, to: me, status: 1 }, { from: { eid: "q@x.example" }, to: me, status: 2, lastSeen: 1234n }] },
    });
    s.broadcast({ case: "awarenessNotification", value: { from: { eid: "p@x.example" }, to: me, status: 3, ttl: 60, latitude: 1.5, longitude: 2.5 } });
    s.broadcast({ case: "awarenessNotification", value: { from: { eid: "p@x.example", connectionResourceId: "pp" }, to: me, awarenessIntention: 2, ttl: 5 } });
    s.broadcast({ case: "locationStream", value: { id: "f", from: { eid: "p@x.example", connectionResourceId: "pp" }, to: me, latitude: 10, longitude: 20, altitude: 3 } });
    s.broadcast({ case: "pushNotification", value: { id: "n1", to: me, type: "system", data: { k: "v" } } });
    s.broadcast({ case: "logout", value: { type: 2, status: 1, entity: me } });
    await until(() => ev.logout.length === 1, "all events");
    assert.deepEqual(ev.awareness.map((a) => [a.eid, a.presence, a.lastSeen, a.ttl, a.latitude, a.longitude]), [
      ["p@x.example", "online", 0, 0, 0, 0],
      ["q@x.example", "offline", 1234, 0, 0, 0],
      ["p@x.example", "away", 0, 60, 1.5, 2.5],
    ]);
    assert.deepEqual(ev.intention.map((i) => [i.from, i.kind, i.ttl]), [[{ eid: "p@x.example", device: "pp" }, "recording", 5]]);
    assert.deepEqual(ev.location.map((l) => [l.id, l.from.device, l.latitude, l.longitude, l.altitude]), [["f", "pp", 10, 20, 3]]);
    assert.deepEqual(ev.push.map((p) => [p.id, p.type, p.data]), [["n1", "system", { k: "v" }]]);
    assert.equal(ev.logout[0].status, 1);
    // the async iterator saw the same awareness updates
    const fromIter = [];
    for (let i = 0; i < 3; i++) fromIter.push((await iter.next()).value.eid);
    assert.deepEqual(fromIter, ["p@x.example", "q@x.example", "p@x.example"]);
  } finally {
    await iter.return();
    c.close();
    await s.close();
  }
});
