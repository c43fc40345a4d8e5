// PING-3 against the reference server with a short ping interval: a client that answers stays,
// one that does not is closed 4408 (the baseline that shows the test can fail).
import { test, before, after } from "node:test";
import assert from "node:assert/strict";
import { WebSocket } from "ws";
import { startServer } from "./support/server.js";
import { connect } from "../dist/index.js";

let server;
before(async () => {
  server = await startServer({ config: "[limits]\nping_interval_ms = 200\n" });
});
after(async () => {
  await server?.stop();
});

test("the SDK answers server pings: the session outlives (max_missed_pongs + 1) intervals", async () => {
  const c = await connect(server.url, { token: server.token("pat@example.com", "phone") });
  assert.equal(c.session.pingIntervalMs, 200);
  let closed = null;
  c.addEventListener("close", (e) => (closed = e.detail));
  await new Promise((r) => setTimeout(r, 1500));
  assert.equal(closed, null, `closed: ${JSON.stringify(closed)}`);
  assert.ok(c.connected);
  // still usable
  const sent = await c.sendText("quinn@example.com", "after pings");
  assert.equal(sent.version, 1);
  c.close();
});

test("baseline: a raw WebSocket that ignores pings is closed with 4408", async () => {
  const ws = new WebSocket(server.url, ["bimip.v1"], { headers: { Authorization: `Bearer ${server.token("rob@example.com", "phone")}` } });
  const code = await new Promise((resolve, reject) => {
    ws.on("close", (c) => resolve(c));
    ws.on("error", reject);
    setTimeout(() => reject(new Error("not closed within 3 s")), 3000);
  });
  assert.equal(code, 4408);
});
