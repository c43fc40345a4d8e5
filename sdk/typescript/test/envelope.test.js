import { test } from "node:test";
import assert from "node:assert/strict";
import { create, toBinary } from "@bufbuild/protobuf";
import { ROUTE_OF, CASE_OF_ROUTE, encodeStanza, decodeStanza, envelope, pb } from "../dist/index.js";

const APPENDIX_A = {
  2: "awarenessNotification", 3: "awarenessResponse", 4: "awarenessRequest", 5: "errorMessage",
  6: "pingpongMessage", 7: "tokenRevokeRequest", 8: "tokenRevokeResponse", 9: "subscriberAddRequest",
  10: "subscriberAddResponse", 11: "blockSubscriber", 12: "logout", 13: "chatMessage",
  14: "textPayloadRequest", 15: "mediaPayloadRequest", 16: "acknowledgmentRequest",
  17: "acknowledgmentResponse", 18: "versionUpdate", 19: "tokenRefreshRequest", 20: "tokenRefreshResponse",
  21: "awarenessSubscription", 22: "subscriberRemove", 23: "awarenessVisibility", 24: "locationStream",
  25: "pushNotification", 26: "body", 27: "authenticate",
};

test("route table matches SPEC Appendix A (routes 2..27)", () => {
  assert.equal(Object.keys(ROUTE_OF).length, 26);
  for (const [route, c] of Object.entries(APPENDIX_A)) {
    assert.equal(ROUTE_OF[c], Number(route), c);
    assert.equal(CASE_OF_ROUTE.get(Number(route)), c);
  }
});

test("every payload case round-trips with route = field number (ENV-2)", () => {
  for (const [route, c] of Object.entries(APPENDIX_A)) {
    const bytes = encodeStanza({ case: c, value: {} });
    const d = decodeStanza(bytes);
    assert.ok(d.ok, c);
    assert.equal(d.stanza.route, BigInt(route));
    assert.equal(d.payload.case, c);
  }
});

test("SPEC example: 08 06 is route 6 without payload -> missing_payload", () => {
  const d = decodeStanza(new Uint8Array([0x08, 0x06]));
  assert.equal(d.ok, false);
  assert.equal(d.error.kind, "missing_payload");
  assert.equal(d.error.code, 400);
  assert.equal(d.error.route, "6");
});

test("envelope carries fields: PingPong pong", () => {
  const bytes = encodeStanza({ case: "pingpongMessage", value: { type: 2, status: 2, id: "p1", requestTime: 5n } });
  const d = decodeStanza(bytes);
  assert.ok(d.ok);
  assert.equal(d.payload.value.id, "p1");
  assert.equal(d.payload.value.requestTime, 5n);
  assert.equal(envelope({ case: "logout", value: { type: 1 } }).route, 12n);
});

test("undecodable bytes -> malformed, never a throw", () => {
  for (const bad of [new Uint8Array([0x0a]), new Uint8Array([0xff, 0xff, 0xff]), new Uint8Array([0x6a, 0x05, 0x01])]) {
    const d = decodeStanza(bad);
    assert.equal(d.ok, false);
    assert.equal(d.error.kind, "malformed");
    assert.equal(d.error.code, 400);
    assert.equal(d.error.source, "protocol");
  }
});

test("unknown route -> unknown_route 501; route 0 -> missing_payload", () => {
  let d = decodeStanza(toBinary(pb.MessageSchemeSchema, create(pb.MessageSchemeSchema, { route: 99n })));
  assert.equal(d.ok, false);
  assert.equal(d.error.kind, "unknown_route");
  assert.equal(d.error.code, 501);
  assert.equal(d.error.route, "99");
  // a payload at an unknown field number (28) decodes as no payload
  d = decodeStanza(new Uint8Array([0x08, 0x1c, 0xe2, 0x01, 0x00]));
  assert.equal(d.ok, false);
  assert.equal(d.error.kind, "unknown_route");
  d = decodeStanza(new Uint8Array(0));
  assert.equal(d.ok, false);
  assert.equal(d.error.kind, "missing_payload");
});

test("route that differs from the payload -> route_mismatch", () => {
  const m = create(pb.MessageSchemeSchema, { route: 7n, payload: { case: "pingpongMessage", value: { id: "p1" } } });
  const d = decodeStanza(toBinary(pb.MessageSchemeSchema, m));
  assert.equal(d.ok, false);
  assert.equal(d.error.kind, "route_mismatch");
  assert.equal(d.error.route, "7");
});

test("oversized stanza -> too_large without decoding", () => {
  const d = decodeStanza(new Uint8Array(65537), 65536);
  assert.equal(d.ok, false);
  assert.equal(d.error.kind, "too_large");
  assert.equal(d.error.code, 413);
});
