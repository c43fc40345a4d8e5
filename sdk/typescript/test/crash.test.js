// Nothing is lost when the server crashes mid-send (CLI-1, CLI-2, CHAT-7, CHAT-14, QUE-7): the
// reference server with the durable store is killed with SIGKILL after ~50 of 200 texts were
// accepted and started again on the same port and data directory. Sender and receiver reconnect
// by themselves; every text gets one VersionUpdate, the versions are 1..200 in send order, and
// the receiver gets every message exactly once.
import { test, before, after } from "node:test";
import assert from "node:assert/strict";
import { startServer } from "./support/server.js";
import { wait, until, collect } from "./support/util.js";
import { connect } from "../dist/index.js";

let server;
before(async () => {
  server = await startServer({ store: "durable" });
});
after(async () => {
  await server?.stop();
});

const N = 200;
const KILL_AFTER = 50;

test("kill -9 and restart of the server mid-send: every text accepted once, received once", { timeout: 30_000 }, async () => {
  const A = "kai.crash@example.com";
  const B = "kim.crash@example.com";
  const receiver = await connect(server.url, { token: server.token(B, "phone"), reconnect: true });
  const sender = await connect(server.url, { token: server.token(A, "phone"), reconnect: true });
  const got = collect(receiver, "message");
  const sentEvents = collect(sender, "sent");
  const errors = [...collect(sender, "error"), ...collect(receiver, "error")];
  const senderReconnects = collect(sender, "reconnect");
  const receiverReconnects = collect(receiver, "reconnect");
  const firstPid = server.pid;
  try {
    let crash = null;
    let acceptedAtCrash = 0;
    const off = sender.on("sent", () => {
      if (sentEvents.length >= KILL_AFTER && !crash) {
        acceptedAtCrash = sentEvents.length;
        crash = server.restart("SIGKILL");
        off();
      }
    });
    const results = new Array(N);
    const promises = [];
    for (let i = 0; i < N; i++) {
      promises.push(sender.sendText(B, `text ${i}`).then((r) => (results[i] = r)));
      await wait(5);
    }
    await until(() => crash !== null, "the crash");
    await crash;
    assert.notEqual(server.pid, firstPid, "a new server process");
    await Promise.all(promises);

    assert.ok(acceptedAtCrash >= KILL_AFTER && acceptedAtCrash < N / 2, `killed mid-send (after ${acceptedAtCrash} VersionUpdates)`);
    assert.ok(senderReconnects.length >= 1, "the sender reconnected");
    // one VersionUpdate per text: one "sent" event each, no message_id_local twice
    assert.equal(sentEvents.length, N);
    assert.equal(new Set(sentEvents.map((s) => s.messageIdLocal)).size, N);
    // each text is one message: unique ids, versions 1..N strictly increasing in send order
    assert.equal(new Set(results.map((r) => r.messageId)).size, N);
    assert.deepEqual(
      results.map((r) => r.version),
      Array.from({ length: N }, (_, i) => i + 1),
    );
    assert.equal(new Set(results.map((r) => r.chatId)).size, 1);

    // the receiver gets every message exactly once (live, or replayed from its queue)
    await until(() => got.length >= N, `${N} messages at the receiver (got ${got.length})`, 15_000);
    await wait(300);
    assert.equal(got.length, N, "no message twice");
    assert.ok(receiverReconnects.length >= 1, "the receiver reconnected");
    const byId = new Map(got.map((m) => [m.messageId, m]));
    assert.equal(byId.size, N);
    for (let i = 0; i < N; i++) {
      const m = byId.get(results[i].messageId);
      assert.ok(m, `message ${i} received`);
      assert.equal(m.text, `text ${i}`);
      assert.equal(m.version, results[i].version);
      assert.equal(m.messageIdLocal, results[i].messageIdLocal);
    }
    // CHAT-16: in version order
    assert.deepEqual(
      got.map((m) => m.version),
      got.map((m) => m.version).slice().sort((x, y) => x - y),
    );
    // only connection losses and reconnect attempts while the server was down, no refusals
    for (const e of errors) assert.ok(e.source !== "server", `unexpected server error ${e.kind}: ${e.details}`);
  } finally {
    sender.close();
    receiver.close();
  }
});
