// Awareness, subscribers, blocking, visibility, location and intentions against the reference
// server (SPEC 10-14): each call resolves on the server's answer, and the peer's device sees the effect.
import { test, before, after } from "node:test";
import assert from "node:assert/strict";
import { startServer } from "./support/server.js";
import { wait, nextEvent, collect, until } from "./support/util.js";
import { connect, BimipError } from "../dist/index.js";

let server;
before(async () => {
  server = await startServer();
});
after(async () => {
  await server?.stop();
});

const open = (eid, device = "phone", extra = {}) => connect(server.url, { token: server.token(eid, device), ...extra });
const isError = (code, kind) => (e) => e instanceof BimipError && e.code === code && e.kind === kind && e.source === "server";

test("subscribers: Bob, added by Alice, hears her presence; removed, he gets UNAVAILABLE (SUB-1, SUB-7, AWR-3, AWR-12)", { timeout: 30_000 }, async () => {
  const A = "alice.s@example.com";
  const B = "bob.s@example.com";
  const a = await open(A);
  const b = await open(B);
  try {
    // under CONTACTS (the default) a non-subscriber sees UNAVAILABLE
    assert.equal((await b.getAwareness(A)).status, 0);
    const current = nextEvent(b, "awareness", (n) => n.eid === A);
    const added = await a.addSubscriber(B, { nickname: "bobby", group: "friends" });
    assert.equal(added.subscriber, B);
    assert.ok(added.subscriberResourceId, "SUB-2: a server-assigned subscriber_resource_id");
    // AWR-11: Bob's device became a watcher and receives Alice's current state
    assert.equal((await current).status, 1);
    const again = await a.addSubscriber(B);
    assert.equal(again.subscriberResourceId, added.subscriberResourceId, "SUB-3: same id on a repeat");

    const away = nextEvent(b, "awareness", (n) => n.eid === A && n.status === 3);
    await a.setPresence("away", { ttlSeconds: 60 });
    const n = await away;
    assert.equal(n.presence, "away");
    assert.equal(n.ttl, 60);
    const asked = await b.getAwareness(A);
    assert.equal(asked.status, 3);
    assert.equal(asked.eid, A);
    // Alice sees nothing of Bob (one direction)
    assert.equal((await a.getAwareness(B)).status, 0);

    const gone = nextEvent(b, "awareness", (x) => x.eid === A && x.status === 0);
    await a.removeSubscriber(B);
    const u = await gone;
    assert.equal(u.presence, "unavailable");
    assert.equal(u.lastSeen, 0);
    assert.equal((await b.getAwareness(A)).status, 0);
    // removing a non-subscriber succeeds again (SUB-6)
    await a.removeSubscriber(B);
  } finally {
    a.close();
    b.close();
  }
});

test("presence of the last session ending reaches a subscriber as OFFLINE with last_seen (AWR-2)", { timeout: 30_000 }, async () => {
  const A = "amy.s@example.com";
  const B = "ben.s@example.com";
  const a = await open(A);
  const b = await open(B);
  try {
    await a.addSubscriber(B);
    const offline = nextEvent(b, "awareness", (n) => n.eid === A && n.status === 2);
    a.close();
    const n = await offline;
    assert.equal(n.presence, "offline");
    assert.ok(n.lastSeen > 0);
    const online = nextEvent(b, "awareness", (x) => x.eid === A && x.status === 1);
    const a2 = await open(A);
    await online;
    a2.close();
  } finally {
    b.close();
  }
});

test("awareness subscription: Carol watches public Alice, hears her changes, stops after unsubscribing (AWR-15, AWR-16)", { timeout: 30_000 }, async () => {
  const A = "ava.s@example.com";
  const C = "carol.s@example.com";
  const a = await open(A);
  const c = await open(C);
  try {
    // subscribing succeeds whether or not Carol may see Ava; she hears nothing while she may not
    const seen = collect(c, "awareness");
    await c.subscribeAwareness(A);
    await wait(200);
    assert.deepEqual(seen.filter((n) => n.eid === A), []);

    const current = nextEvent(c, "awareness", (n) => n.eid === A && n.status === 1);
    const vis = await a.setVisibility({ visibility: "public" });
    assert.deepEqual(vis, { visibility: "public", locationSharing: false });
    await current; // AWR-11: Carol may see Ava now

    const busy = nextEvent(c, "awareness", (n) => n.eid === A && n.status === 4);
    await a.setPresence("busy");
    assert.equal((await busy).presence, "busy");

    await c.unsubscribeAwareness(A);
    const before = seen.length;
    await a.setPresence("do_not_disturb");
    await wait(300);
    assert.equal(seen.length, before, "no notification after unsubscribing");
    assert.equal((await c.getAwareness(A)).status, 5, "AwarenessRequest still answers under PUBLIC");
  } finally {
    a.close();
    c.close();
  }
});

test("awareness errors reject with SPEC's ErrorMessage (AWR-4, AWR-13, AWR-18, ENV-9)", { timeout: 30_000 }, async () => {
  const a = await open("dan.s@example.com");
  try {
    await assert.rejects(a.getAwareness("not an eid"), isError(400, "invalid_field"));
    await assert.rejects(a.setPresence(2), isError(400, "invalid_field")); // OFFLINE is the server's
    await assert.rejects(a.setIntention("dan.s@example.com", "typing"), isError(400, "invalid_field"));
    await assert.rejects(a.setPresence("busy", { ttlSeconds: -1 }), isError(400, "invalid_field"));
    await assert.rejects(a.subscribeAwareness(""), (e) => e instanceof BimipError && e.code === 400);
    await wait(1100); // the awareness bucket refills (5 per s)
    const results = await Promise.allSettled([1, 3, 4, 5, 1, 3, 4].map((s) => a.setPresence(s)));
    // AWR-18: a bucket of 5 (refilling at 5 per s, so a slow run may see a 6th pass)
    const ok = results.filter((r) => r.status === "fulfilled").length;
    assert.ok(ok >= 5 && ok <= 6, `AWR-18: ${ok} of 7 changes passed`);
    assert.ok(results[0].status === "fulfilled" && results[4].status === "fulfilled", "the first 5 pass");
    for (const r of results.filter((r) => r.status === "rejected")) assert.ok(isError(429, "rate_limited")(r.reason));
    // the session goes on
    assert.equal((await a.getAwareness("dan.s@example.com")).status, 1);
  } finally {
    a.close();
  }
});

test("intentions reach every online device of the peer, not the sender (AWR-7)", { timeout: 30_000 }, async () => {
  const A = "al.i@example.com";
  const B = "bo.i@example.com";
  const a = await open(A, "phone");
  const b1 = await open(B, "phone");
  const b2 = await open(B, "laptop");
  const aGot = collect(a, "intention");
  try {
    const got1 = nextEvent(b1, "intention");
    const got2 = nextEvent(b2, "intention");
    await a.setIntention(B, "typing", { ttlSeconds: 5 });
    for (const i of [await got1, await got2]) {
      assert.deepEqual(i.from, { eid: A, device: "phone" });
      assert.equal(i.kind, "typing");
      assert.equal(i.intention, 1);
      assert.equal(i.ttl, 5);
    }
    const stopped = nextEvent(b1, "intention", (i) => i.kind === "stopped");
    await a.setIntention(B, "stopped");
    await stopped;
    assert.deepEqual(aGot, []);
  } finally {
    a.close();
    b1.close();
    b2.close();
  }
});

test("blocking: Bob's texts are refused with 403 blocked, intentions dropped silently; unblock restores chat (BLK-1..5)", { timeout: 30_000 }, async () => {
  const A = "ann.b@example.com";
  const B = "bill.b@example.com";
  const a = await open(A);
  const b = await open(B);
  const aIntentions = collect(a, "intention");
  const aMessages = collect(a, "message");
  try {
    const first = await b.sendText(A, "before the block");
    // The copy may reach Ann before the VersionUpdate reaches Bill: look in what was collected.
    await until(() => aMessages.some((m) => m.messageId === first.messageId), "the first message");
    await a.block(B);
    await a.block(B); // blocking again gives the same answer (BLK-1)
    await assert.rejects(b.sendText(A, "are you there?"), (e) => {
      assert.ok(isError(403, "blocked")(e));
      assert.equal(e.route, "14");
      return true;
    });
    await assert.rejects(a.sendText(B, "the other way"), isError(403, "blocked"), "BLK-3 applies both ways");
    await assert.rejects(
      b.sendMedia(A, { url: "https://cdn.example.com/x.png", type: "image" }),
      (e) => isError(403, "blocked")(e) && e.route === "15",
    );
    await b.setIntention(A, "typing"); // AWR-8: no error for the sender
    await wait(200);
    assert.deepEqual(aIntentions, []);
    assert.equal(aMessages.length, 1);
    await assert.rejects(a.block(A), isError(400, "invalid_field"), "BLK-2: own EID");

    await a.unblock(B);
    const after = await b.sendText(A, "after the unblock");
    await until(() => aMessages.some((x) => x.messageId === after.messageId), "the message after the unblock");
    const m = aMessages.find((x) => x.messageId === after.messageId);
    assert.equal(m.text, "after the unblock");
    assert.equal(after.version, first.version + 1, "rejected requests used no version");
  } finally {
    a.close();
    b.close();
  }
});

test("visibility: defaults, partial changes, PRIVATE hides from subscribers (VIS-1..4, AWR-9, AWR-12)", { timeout: 30_000 }, async () => {
  const A = "vic.v@example.com";
  const B = "val.v@example.com";
  const a = await open(A);
  const b = await open(B);
  try {
    assert.deepEqual(await a.getVisibility(), { visibility: "contacts", locationSharing: false }, "VIS-3");
    await a.addSubscriber(B);
    assert.equal((await b.getAwareness(A)).status, 1);
    const hidden = nextEvent(b, "awareness", (n) => n.eid === A && n.status === 0);
    assert.deepEqual(await a.setVisibility({ visibility: "private" }), { visibility: "private", locationSharing: false });
    await hidden;
    assert.equal((await b.getAwareness(A)).status, 0);
    assert.deepEqual(await a.setVisibility({ locationSharing: true }), { visibility: "private", locationSharing: true }, "VIS-2");
    const shown = nextEvent(b, "awareness", (n) => n.eid === A && n.status === 1);
    assert.deepEqual(await a.setVisibility({ visibility: "contacts" }), { visibility: "contacts", locationSharing: true });
    await shown;
  } finally {
    a.close();
    b.close();
  }
});

test("location: refused while sharing is off, delivered to a subscriber when on, and reported in awareness (LOC-1..6)", { timeout: 30_000 }, async () => {
  const A = "lou.l@example.com";
  const B = "lia.l@example.com";
  const C = "lex.l@example.com"; // not a subscriber
  const a = await open(A);
  const b = await open(B);
  const c = await open(C);
  const cGot = collect(c, "location");
  try {
    await a.addSubscriber(B);
    await assert.rejects(a.shareLocation({ latitude: 52.5, longitude: 13.4 }), isError(403, "forbidden"));
    await a.setVisibility({ visibility: "public", locationSharing: true });
    await assert.rejects(a.shareLocation({ latitude: 91, longitude: 0 }), isError(400, "invalid_field"));

    const fix = nextEvent(b, "location");
    await a.shareLocation({ latitude: 52.5, longitude: 13.4, altitude: 34, id: "fix-1" });
    const got = await fix;
    assert.equal(got.id, "fix-1");
    assert.deepEqual(got.from, { eid: A, device: "phone" });
    assert.equal(got.latitude, 52.5);
    assert.equal(got.longitude, 13.4);
    assert.equal(got.altitude, 34);
    // addressed to one peer
    const direct = nextEvent(b, "location", (l) => l.id === "fix-2");
    await a.shareLocation({ latitude: 1.5, longitude: 2.5, to: B, id: "fix-2" });
    await direct;

    const seenByB = await b.getAwareness(A);
    assert.deepEqual([seenByB.latitude, seenByB.longitude], [1.5, 2.5]);
    // a public non-subscriber sees the presence but never the location (LOC-1)
    const seenByC = await c.getAwareness(A);
    assert.equal(seenByC.status, 1);
    assert.deepEqual([seenByC.latitude, seenByC.longitude], [0, 0]);
    await wait(100);
    assert.deepEqual(cGot, []);
  } finally {
    a.close();
    b.close();
    c.close();
  }
});

test("requests honour AbortSignal; they are refused once the client is closed", { timeout: 30_000 }, async () => {
  const a = await open("abe.x@example.com");
  const ctl = new AbortController();
  ctl.abort(new Error("stop"));
  await assert.rejects(a.getAwareness("bo.x@example.com", { signal: ctl.signal }), /stop/);
  const ctl2 = new AbortController();
  const p = a.getAwareness("bo.x@example.com", { signal: ctl2.signal });
  ctl2.abort();
  await assert.rejects(p, (e) => e.name === "AbortError");
  a.close();
  await assert.rejects(a.setPresence("away"), (e) => e.kind === "closed");
});

test("the user's other devices hear its status changes, a ttl lapse reaches every device (AWR-5, AWR-6)", { timeout: 30_000 }, async () => {
  const E = "otto.s@example.com";
  const phone = await open(E, "phone");
  const tablet = await open(E, "tablet");
  const phoneSeen = collect(phone, "awareness");
  try {
    const heard = nextEvent(tablet, "awareness", (n) => n.eid === E && n.status === 4);
    await phone.setPresence("busy", { ttlSeconds: 1 });
    assert.equal((await heard).ttl, 1);
    // the lapse (after 1 s) is the server's change: both devices hear status 1
    await Promise.all([phone, tablet].map((c) => nextEvent(c, "awareness", (n) => n.eid === E && n.status === 1, 4000)));
    assert.deepEqual(phoneSeen.map((n) => n.status), [1], "the device that set busy did not hear its own change");
  } finally {
    phone.close();
    tablet.close();
  }
});

test("native TCP: awareness calls and their errors work the same over tcp://", { timeout: 30_000 }, async () => {
  assert.ok(server.tcpUrl);
  const t = await connect(server.tcpUrl, { token: server.token("tina.s@example.com", "desktop") });
  const w = await open("tom.s@example.com");
  try {
    await t.addSubscriber("tom.s@example.com");
    const away = nextEvent(w, "awareness", (n) => n.eid === "tina.s@example.com" && n.status === 3);
    await t.setPresence("away");
    await away;
    assert.equal((await t.getAwareness("tina.s@example.com")).status, 3);
    await assert.rejects(t.setIntention("tina.s@example.com", "typing"), isError(400, "invalid_field"));
    assert.deepEqual(await t.getVisibility(), { visibility: "contacts", locationSharing: false });
  } finally {
    t.close();
    w.close();
  }
});
