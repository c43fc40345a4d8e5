import { test } from "node:test";
import assert from "node:assert/strict";
import { BimipError, ERROR_KINDS, fromErrorMessage, fromHttpRefusal, fromClose, kindOfCloseCode } from "../dist/index.js";

test("error table has SPEC §5.1's 27 kinds with their codes", () => {
  assert.equal(Object.keys(ERROR_KINDS).length, 27);
  assert.equal(ERROR_KINDS.token_expired, 401);
  assert.equal(ERROR_KINDS.session_replaced, 409);
  assert.equal(ERROR_KINDS.queue_full, 503);
  assert.equal(ERROR_KINDS.unknown_route, 501);
});

test("ErrorMessage -> BimipError keeps code, kind, route, ref_id", () => {
  const e = fromErrorMessage({ code: 400, message: "invalid_field", route: "14", refId: "m1", details: "content" });
  assert.ok(e instanceof BimipError);
  assert.ok(e instanceof Error);
  assert.equal(e.code, 400);
  assert.equal(e.kind, "invalid_field");
  assert.equal(e.route, "14");
  assert.equal(e.refId, "m1");
  assert.equal(e.source, "server");
  assert.ok(e.known);
  assert.ok(e.isClientFault);
  assert.ok(!e.retryable);
});

test("ERR-7: unknown kinds are handled by their hundred", () => {
  const e = fromErrorMessage({ code: 507, message: "disk_on_fire", route: "", refId: "", details: "" });
  assert.ok(!e.known);
  assert.ok(e.retryable);
  assert.ok(!e.isClientFault);
  const f = fromErrorMessage({ code: 418, message: "teapot", route: "", refId: "", details: "" });
  assert.ok(f.isClientFault);
});

test("HTTP 401 refusal body is the kind (AUTH-10); 429 too_many_sessions (SES-3)", () => {
  const e = fromHttpRefusal(401, "token_expired\n");
  assert.equal(e.code, 401);
  assert.equal(e.kind, "token_expired");
  assert.equal(e.source, "handshake");
  assert.equal(fromHttpRefusal(429, "too_many_sessions").kind, "too_many_sessions");
  assert.equal(fromHttpRefusal(502, "").kind, "http_502");
});

test("close codes map to SPEC §2.2", () => {
  assert.deepEqual(kindOfCloseCode(4401), { code: 401, kind: "token_expired" });
  assert.deepEqual(kindOfCloseCode(4408), { code: 408, kind: "ping_timeout" });
  assert.deepEqual(kindOfCloseCode(4409), { code: 409, kind: "session_replaced" });
  assert.deepEqual(kindOfCloseCode(4429), { code: 429, kind: "rate_limited" });
  assert.deepEqual(kindOfCloseCode(1009), { code: 413, kind: "too_large" });
  assert.deepEqual(kindOfCloseCode(1003), { code: 400, kind: "text_frame" });
  assert.equal(kindOfCloseCode(1006).kind, "connection_lost");
  const e = fromClose(4409, "");
  assert.equal(e.closeCode, 4409);
  assert.equal(e.source, "connection");
});
