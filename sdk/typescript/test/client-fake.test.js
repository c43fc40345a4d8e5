// The client against a scripted WebSocket server (the `ws` package): pings, bad frames, refusals.
import { test } from "node:test";
import assert from "node:assert/strict";
import { createServer } from "node:http";
import { WebSocketServer } from "ws";
import { connect, encodeStanza, decodeStanza, BimipError } from "../dist/index.js";

const AUTH_OK = encodeStanza({
  case: "authenticate",
  value: { type: 2, status: 1, identity: { eid: "a@x", connectionResourceId: "d" }, pingIntervalMs: 30000n, maxStanzaBytes: 1024n, expiresAt: 1n },
});

/** Starts a server; `onSocket(ws, req)` scripts it. Refuses tokens equal to "bad" with 401 token_revoked. */
async function fake(onSocket) {
  const http = createServer();
  const wss = new WebSocketServer({ noServer: true, handleProtocols: (p) => (p.has("bimip.v1") ? "bimip.v1" : false) });
  const seen = [];
  http.on("upgrade", (req, socket, head) => {
    seen.push(req);
    if ((req.headers.authorization ?? "") === "Bearer bad") {
      socket.end('HTTP/1.1 401 Unauthorized\r\nContent-Type: text/plain\r\nWWW-Authenticate: Bearer error="invalid_token"\r\nContent-Length: 13\r\nConnection: close\r\n\r\ntoken_revoked');
      return;
    }
    wss.handleUpgrade(req, socket, head, (ws) => onSocket(ws, req));
  });
  await new Promise((r) => http.listen(0, "127.0.0.1", r));
  return {
    url: `ws://127.0.0.1:${http.address().port}/ws`,
    seen,
    close: () => new Promise((r) => { for (const c of wss.clients) c.terminate(); http.close(r); }),
  };
}

const nextBinary = (ws) => new Promise((r) => ws.once("message", (d) => r(decodeStanza(new Uint8Array(d)))));

test("offers bimip.v1, sends the token as Bearer, resolves on the Authenticate RESPONSE", async () => {
  const s = await fake((ws) => ws.send(AUTH_OK));
  try {
    const c = await connect(s.url, { token: "tok" });
    assert.equal(s.seen[0].headers["sec-websocket-protocol"], "bimip.v1");
    assert.equal(s.seen[0].headers.authorization, "Bearer tok");
    assert.deepEqual(c.session.identity, { eid: "a@x", device: "d" });
    assert.equal(c.session.maxStanzaBytes, 1024);
    c.close();
  } finally {
    await s.close();
  }
});

test("getToken is called for the token; tokenInQuery puts it in ?token=", async () => {
  const s = await fake((ws) => ws.send(AUTH_OK));
  try {
    const c = await connect(s.url, { getToken: async () => "t2", tokenInQuery: true });
    assert.match(s.seen[0].url, /[?&]token=t2/);
    c.close();
  } finally {
    await s.close();
  }
});

test("a refused upgrade rejects with BimipError {401, kind from the body}", async () => {
  const s = await fake(() => {});
  try {
    await assert.rejects(connect(s.url, { token: "bad" }), (e) => {
      assert.ok(e instanceof BimipError);
      assert.equal(e.code, 401);
      assert.equal(e.kind, "token_revoked");
      assert.equal(e.source, "handshake");
      return true;
    });
  } finally {
    await s.close();
  }
});

test("a connection refused at TCP level rejects with connect_failed", async () => {
  await assert.rejects(connect("ws://127.0.0.1:1/ws", { token: "t" }), (e) => e instanceof BimipError && e.kind === "connect_failed");
});

test("answers a server ping with a pong echoing id and request_time (PING-3)", async () => {
  let pong;
  const s = await fake(async (ws) => {
    ws.send(AUTH_OK);
    const p = nextBinary(ws);
    ws.send(encodeStanza({ case: "pingpongMessage", value: { type: 1, status: 1, id: "srv-1", requestTime: 1234n } }));
    pong = await p;
  });
  try {
    const c = await connect(s.url, { token: "t" });
    for (let i = 0; i < 50 && !pong; i++) await new Promise((r) => setTimeout(r, 20));
    assert.ok(pong?.ok);
    assert.equal(pong.payload.case, "pingpongMessage");
    const v = pong.payload.value;
    assert.equal(v.type, 2);
    assert.equal(v.status, 2);
    assert.equal(v.id, "srv-1");
    assert.equal(v.requestTime, 1234n);
    assert.equal(pong.stanza.route, 6n);
    c.close();
  } finally {
    await s.close();
  }
});

test("undecodable bytes, unknown routes, oversized and text frames become error events; the session goes on", async () => {
  let sock;
  const s = await fake((ws) => {
    sock = ws;
    ws.send(AUTH_OK);
  });
  try {
    const c = await connect(s.url, { token: "t" });
    const errors = [];
    c.addEventListener("error", (e) => errors.push(e.detail));
    const messages = [];
    c.addEventListener("message", (e) => messages.push(e.detail));
    sock.send(new Uint8Array([0xff, 0xff, 0xff])); // malformed
    sock.send(new Uint8Array([0x08, 0x63])); // route 99, no payload
    sock.send(new Uint8Array(2048)); // > max_stanza_bytes announced (1024)
    sock.send("hello"); // text frame
    sock.send(encodeStanza({ case: "errorMessage", value: { code: 507, message: "new_kind", route: "" } }));
    sock.send(encodeStanza({ case: "chatMessage", value: { messageId: "m1", version: 1n, chatId: "c", author: "receiver", payload: { case: "text", value: "still here" } } }));
    for (let i = 0; i < 50 && messages.length === 0; i++) await new Promise((r) => setTimeout(r, 20));
    assert.deepEqual(errors.map((e) => e.kind), ["malformed", "unknown_route", "too_large", "text_frame", "new_kind"]);
    assert.ok(errors.every((e) => e instanceof BimipError));
    assert.equal(errors[4].retryable, true);
    assert.equal(messages[0].text, "still here");
    assert.ok(c.connected);
    c.close();
  } finally {
    await s.close();
  }
});

test("sendText rejects with the ErrorMessage that names its message_id_local", async () => {
  const s = await fake((ws) => {
    ws.send(AUTH_OK);
    ws.on("message", (d) => {
      const st = decodeStanza(new Uint8Array(d));
      if (st.ok && st.payload.case === "textPayloadRequest") {
        ws.send(encodeStanza({ case: "errorMessage", value: { code: 503, message: "queue_full", route: "14", refId: st.payload.value.messageIdLocal } }));
      }
    });
  });
  try {
    const c = await connect(s.url, { token: "t" });
    await assert.rejects(c.sendText("b@x", "hi"), (e) => e.code === 503 && e.kind === "queue_full" && e.route === "14");
    c.close();
  } finally {
    await s.close();
  }
});

test("duplicate ChatMessages are handed over once but confirmed every time (QUE-4, QUE-7)", async () => {
  const acks = [];
  const s = await fake((ws) => {
    ws.send(AUTH_OK);
    ws.on("message", (d) => {
      const st = decodeStanza(new Uint8Array(d));
      if (st.ok && st.payload.case === "acknowledgmentRequest") acks.push([st.payload.value.messageId, st.payload.value.status]);
    });
    const copy = (id, author) =>
      encodeStanza({ case: "chatMessage", value: { messageId: id, version: 1n, chatId: "c", author, payload: { case: "text", value: id } } });
    ws.send(copy("m1", "receiver"));
    ws.send(copy("m1", "receiver"));
    ws.send(copy("m2", "sender"));
    // a sender-side update (from bob to us): confirmed with its status; a sibling's update is not confirmed
    ws.send(encodeStanza({ case: "acknowledgmentResponse", value: { messageId: "m2", status: 3, from: { eid: "b@x", connectionResourceId: "p" }, to: { eid: "a@x", connectionResourceId: "d" } } }));
    ws.send(encodeStanza({ case: "acknowledgmentResponse", value: { messageId: "m1", status: 3, from: { eid: "a@x", connectionResourceId: "tablet" }, to: { eid: "a@x", connectionResourceId: "d" } } }));
  });
  try {
    const c = await connect(s.url, { token: "t" });
    const receipts = [];
    c.addEventListener("receipt", (e) => receipts.push(e.detail));
    const it = c.messages();
    assert.equal((await it.next()).value.messageId, "m1");
    assert.equal((await it.next()).value.messageId, "m2");
    for (let i = 0; i < 50 && acks.length < 4; i++) await new Promise((r) => setTimeout(r, 20));
    assert.deepEqual(acks, [["m1", 2], ["m1", 2], ["m2", 4], ["m2", 3]]);
    assert.deepEqual(receipts.map((r) => [r.messageId, r.state]), [["m2", "read"], ["m1", "read"]]);
    c.close();
    assert.equal((await it.next()).done, true);
  } finally {
    await s.close();
  }
});

test("reconnect: a text without VersionUpdate is resent with the same message_id_local; replays are dropped", async () => {
  const requests = [];
  let connections = 0;
  const copy = encodeStanza({ case: "chatMessage", value: { messageId: "m1", version: 1n, chatId: "c", author: "receiver", payload: { case: "text", value: "x" } } });
  const s = await fake((ws) => {
    const n = ++connections;
    ws.send(AUTH_OK);
    ws.send(copy); // replayed in both sessions
    ws.on("message", (d) => {
      const st = decodeStanza(new Uint8Array(d));
      if (!st.ok || st.payload.case !== "textPayloadRequest") return;
      const r = st.payload.value;
      requests.push({ n, local: r.messageIdLocal, content: r.content });
      if (n === 1) ws.terminate(); // lost before the VersionUpdate
      else ws.send(encodeStanza({ case: "versionUpdate", value: { type: 1, status: 1, messageId: "m9", messageIdLocal: r.messageIdLocal, chatId: "c", version: 9n } }));
    });
  });
  try {
    const c = await connect(s.url, { token: "t", reconnect: { firstWaitMs: 1000 } });
    const messages = [];
    c.addEventListener("message", (e) => messages.push(e.detail.messageId));
    const reconnected = new Promise((r) => c.addEventListener("reconnect", r));
    const t0 = Date.now();
    const result = await c.sendText("b@x", "keep me");
    await reconnected;
    assert.ok(Date.now() - t0 >= 1000, "waited at least 1 s before reconnecting (CLI-6)");
    assert.equal(result.version, 9);
    assert.equal(requests.length, 2);
    assert.equal(requests[0].local, requests[1].local);
    assert.equal(requests[1].content, "keep me");
    await new Promise((r) => setTimeout(r, 50));
    assert.deepEqual(messages, ["m1"]);
    c.close();
  } finally {
    await s.close();
  }
});

test("no reconnect after 4401 with a fixed token (CLI-5)", async () => {
  let connections = 0;
  const s = await fake((ws) => {
    connections++;
    ws.send(AUTH_OK);
    setTimeout(() => {
      ws.send(encodeStanza({ case: "errorMessage", value: { code: 401, message: "token_revoked", route: "" } }));
      ws.close(4401);
    }, 20);
  });
  try {
    const c = await connect(s.url, { token: "t", reconnect: true });
    const detail = await new Promise((r) => c.addEventListener("close", (e) => r(e.detail)));
    assert.equal(detail.code, 4401);
    assert.equal(detail.reconnecting, false);
    await new Promise((r) => setTimeout(r, 1200));
    assert.equal(connections, 1);
  } finally {
    await s.close();
  }
});
