// CLI-2: chat requests without their VersionUpdate survive a restart of the application. The
// stores on their own, then a client whose texts never got their VersionUpdate, and a new client
// built with the same store that sends them again with the same message_id_local.
import { test, after } from "node:test";
import assert from "node:assert/strict";
import { createServer } from "node:http";
import { mkdtempSync, rmSync, readdirSync, writeFileSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { WebSocketServer } from "ws";
import { startServer } from "./support/server.js";
import { wait, until, collect } from "./support/util.js";
import { connect, encodeStanza, decodeStanza, MemoryStore, LocalStorageStore } from "../dist/index.js";
import { FileStore } from "../dist/file-store.js";

const dirs = [];
const tmp = () => {
  const d = mkdtempSync(join(tmpdir(), "bimip-store-test-"));
  dirs.push(d);
  return d;
};
after(() => {
  for (const d of dirs) rmSync(d, { recursive: true, force: true });
});

/** A Web Storage in memory (the shape of localStorage). */
class FakeStorage {
  map = new Map();
  get length() {
    return this.map.size;
  }
  key(i) {
    return [...this.map.keys()][i] ?? null;
  }
  getItem(k) {
    return this.map.has(k) ? this.map.get(k) : null;
  }
  setItem(k, v) {
    this.map.set(k, String(v));
  }
  removeItem(k) {
    this.map.delete(k);
  }
}

const req = (id, text = `text ${id}`) => ({ messageIdLocal: id, to: "bob@x.example", from: { eid: "a@x.example", device: "d" }, createdAt: 1700000000000, text });

for (const [name, make] of [
  ["MemoryStore", () => new MemoryStore()],
  ["LocalStorageStore", () => new LocalStorageStore("test.", new FakeStorage())],
  ["FileStore", () => new FileStore(tmp())],
]) {
  test(`${name}: put, get, list in put order, replace, delete`, { timeout: 30_000 }, async () => {
    const s = make();
    assert.deepEqual(await s.list(), []);
    for (const id of ["c", "a", "b"]) await s.put(req(id));
    assert.deepEqual((await s.list()).map((r) => r.messageIdLocal), ["c", "a", "b"]);
    assert.equal((await s.get("a")).text, "text a");
    assert.equal(await s.get("zz"), undefined);
    await s.put(req("a", "changed"));
    assert.equal((await s.get("a")).text, "changed");
    await s.delete("c");
    await s.delete("never-there");
    assert.deepEqual((await s.list()).map((r) => r.messageIdLocal).sort(), ["a", "b"]);
    const media = { ...req("m"), text: undefined, media: { url: "https://cdn/x", type: 1, caption: "c" } };
    await s.put(media);
    assert.deepEqual((await s.get("m")).media, media.media);
  });
}

test("LocalStorageStore keeps only its prefix; FileStore survives a new instance and ignores torn writes", { timeout: 30_000 }, async () => {
  const storage = new FakeStorage();
  storage.setItem("other.app", "{}");
  const ls = new LocalStorageStore("bimip.x.", storage);
  ls.put(req("1"));
  assert.deepEqual(new LocalStorageStore("bimip.x.", storage).list().map((r) => r.messageIdLocal), ["1"]);
  assert.deepEqual(new LocalStorageStore("bimip.y.", storage).list(), []);
  assert.equal(storage.getItem("other.app"), "{}");

  const dir = tmp();
  const f = new FileStore(dir, { fsync: true });
  f.put(req("k1"));
  f.put(req("k2"));
  writeFileSync(join(dir, "junk.json.1.tmp"), "{half");
  writeFileSync(join(dir, "bad.json"), "{not json");
  const again = new FileStore(dir);
  assert.deepEqual(again.list().map((r) => r.messageIdLocal), ["k1", "k2"]);
  assert.ok(!readdirSync(dir).some((n) => n.endsWith(".tmp")), "temporary files are removed on open");
});

// ---- a scripted server that swallows chat requests (no VersionUpdate ever) -------------------

const AUTH_OK = encodeStanza({
  case: "authenticate",
  value: { type: 2, status: 1, identity: { eid: "a@x.example", connectionResourceId: "d" }, pingIntervalMs: 30000n, maxStanzaBytes: 65536n, expiresAt: 1n },
});

async function blackHole({ answer = false } = {}) {
  const http = createServer();
  const wss = new WebSocketServer({ server: http, handleProtocols: () => "bimip.v1" });
  const requests = [];
  wss.on("connection", (ws) => {
    ws.send(AUTH_OK);
    ws.on("message", (d) => {
      const s = decodeStanza(new Uint8Array(d));
      if (!s.ok || s.payload.case !== "textPayloadRequest") return;
      requests.push(s.payload.value);
      if (answer) {
        const v = s.payload.value;
        ws.send(encodeStanza({ case: "versionUpdate", value: { type: 1, status: 1, messageId: `m-${v.messageIdLocal}`, messageIdLocal: v.messageIdLocal, version: BigInt(requests.length), chatId: "c1" } }));
      }
    });
  });
  await new Promise((r) => http.listen(0, "127.0.0.1", r));
  return {
    url: `ws://127.0.0.1:${http.address().port}/ws`,
    requests,
    close: () => new Promise((r) => { for (const c of wss.clients) c.terminate(); http.close(r); }),
  };
}

test("a new client built with the same store resends the unsent texts, same id and content, and clears them on their VersionUpdate", { timeout: 30_000 }, async () => {
  for (const make of [() => new MemoryStore(), () => new FileStore(tmp()), () => new LocalStorageStore("p.", new FakeStorage())]) {
    const store = make();
    const hole = await blackHole();
    const first = await connect(hole.url, { token: "t", store });
    const promises = ["one", "two", "three"].map((t) => first.sendText("bob@x.example", t));
    for (const p of promises) p.catch(() => {});
    await until(() => hole.requests.length === 3, "3 requests");
    first.close(); // the application stops before any VersionUpdate
    await assert.rejects(promises[0], (e) => e.kind === "closed");
    await hole.close();
    assert.equal((await store.list()).length, 3, "kept in the store");

    const answering = await blackHole({ answer: true });
    const second = await connect(answering.url, { token: "t", store });
    const sent = collect(second, "sent");
    await until(() => sent.length === 3, "3 VersionUpdates after the resend");
    assert.deepEqual(answering.requests.map((r) => r.content), ["one", "two", "three"]);
    assert.deepEqual(answering.requests.map((r) => r.messageIdLocal), hole.requests.map((r) => r.messageIdLocal));
    assert.deepEqual(answering.requests.map((r) => r.createdAt), hole.requests.map((r) => r.createdAt));
    assert.deepEqual(sent.map((s) => s.messageIdLocal), hole.requests.map((r) => r.messageIdLocal));
    assert.deepEqual(await store.list(), [], "removed once accepted");
    assert.deepEqual(second.pending, []);
    second.close();
    await answering.close();
  }
});

test("requests of another device in a shared store are not sent", { timeout: 30_000 }, async () => {
  const store = new MemoryStore();
  store.put({ ...req("foreign"), from: { eid: "a@x.example", device: "other-device" } });
  const hole = await blackHole();
  const c = await connect(hole.url, { token: "t", store });
  c.sendText("bob@x.example", "mine").catch(() => {}); // never answered
  await wait(100);
  assert.deepEqual(hole.requests.map((r) => r.content), ["mine"]);
  c.close();
  await hole.close();
  assert.equal((await store.list()).length, 2);
});

test("an asynchronous store: each request is stored before it is sent, in call order", { timeout: 30_000 }, async () => {
  const inner = new MemoryStore();
  const log = [];
  const slow = {
    list: async () => inner.list(),
    get: async (id) => inner.get(id),
    put: async (r) => {
      await wait(r.text === "first" ? 60 : 5);
      inner.put(r);
      log.push(`put ${r.text}`);
    },
    delete: async (id) => inner.delete(id),
  };
  const hole = await blackHole({ answer: true });
  const c = await connect(hole.url, { token: "t", store: slow });
  hole.requests.length = 0;
  const done = Promise.all(["first", "second", "third"].map((t) => c.sendText("bob@x.example", t)));
  await done;
  assert.deepEqual(hole.requests.map((r) => r.content), ["first", "second", "third"]);
  assert.deepEqual(log, ["put first", "put second", "put third"]);
  assert.deepEqual(await inner.list(), []);
  c.close();
  await hole.close();
});

// ---- the same against the reference server, across a server restart -------------------------

test("reference server: texts written while the server is down are sent by the next client of the app (FileStore)", { timeout: 30_000 }, async () => {
  const server = await startServer({ store: "durable" });
  const dir = tmp();
  try {
    const A = "sam.p@example.com";
    const B = "sue.p@example.com";
    const b = await connect(server.url, { token: server.token(B, "phone"), reconnect: true });
    const bGot = collect(b, "message");
    const a = await connect(server.url, { token: server.token(A, "phone"), reconnect: true, store: new FileStore(dir) });
    const accepted = await a.sendText(B, "zero");
    await server.kill(); // crash: a's connection is lost, a waits to reconnect
    await until(() => !a.connected, "a notices the loss");
    const unsent = ["one", "two", "three"].map((t) => a.sendText(B, t));
    for (const p of unsent) p.catch(() => {});
    const ids = a.pending;
    assert.equal(ids.length, 3);
    a.close(); // the application ends before the server is back
    assert.equal(new FileStore(dir).list().length, 3);

    await server.start();
    const a2 = await connect(server.url, { token: server.token(A, "phone"), store: new FileStore(dir) });
    const sent = collect(a2, "sent");
    await until(() => sent.length === 3, "3 VersionUpdates", 10_000);
    assert.deepEqual(sent.map((s) => s.messageIdLocal), ids);
    assert.deepEqual(sent.map((s) => s.version), [accepted.version + 1, accepted.version + 2, accepted.version + 3]);
    assert.deepEqual(new FileStore(dir).list(), []);
    // the receiver (reconnected by itself) gets each once, with the original message_id_local
    await until(() => bGot.length === 4, "4 messages at the receiver", 10_000);
    assert.deepEqual(bGot.map((m) => m.text), ["zero", "one", "two", "three"]);
    assert.deepEqual(bGot.slice(1).map((m) => m.messageIdLocal), ids);
    a2.close();
    b.close();
  } finally {
    await server.stop();
  }
});

test("aborting a send gives the request up: rejected with the reason, out of the store, not sent again", { timeout: 30_000 }, async () => {
  const store = new MemoryStore();
  const hole = await blackHole();
  const c = await connect(hole.url, { token: "t", store, reconnect: true });
  try {
    const ctl = new AbortController();
    const keep = c.sendText("bob@x.example", "kept");
    keep.catch(() => {});
    const p = c.sendText("bob@x.example", "given up", { signal: ctl.signal });
    await until(() => hole.requests.length === 2, "both sent");
    ctl.abort(new Error("user cancelled"));
    await assert.rejects(p, /user cancelled/);
    assert.deepEqual((await store.list()).map((r) => r.text), ["kept"]);
    assert.equal(c.pending.length, 1);
    await assert.rejects(c.sendText("bob@x.example", "x", { signal: AbortSignal.abort() }), (e) => e.name === "AbortError");
  } finally {
    c.close();
    await hole.close();
  }
  // a new client with the store sends only the kept one
  const answering = await blackHole({ answer: true });
  const c2 = await connect(answering.url, { token: "t", store });
  try {
    await until(() => (store.list().length === 0), "the kept one accepted");
    assert.deepEqual(answering.requests.map((r) => r.content), ["kept"]);
  } finally {
    c2.close();
    await answering.close();
  }
});
