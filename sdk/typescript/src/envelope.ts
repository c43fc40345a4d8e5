/**
 * The envelope (SPEC §4): every stanza is one MessageScheme whose `route` equals the field
 * number of the payload that is set (Appendix A).
 */
import { create, fromBinary, toBinary, type MessageInitShape } from "@bufbuild/protobuf";
import { MessageSchemeSchema, type MessageScheme } from "./gen/bimip_pb.js";
import { BimipError } from "./errors.js";

/** The payload union of MessageScheme ({case, value}). */
export type Payload = Exclude<MessageScheme["payload"], { case: undefined }>;
export type PayloadCase = Payload["case"];
/** A payload to send: the oneof case and an init shape of its message. */
export type PayloadInit = Exclude<NonNullable<MessageInitShape<typeof MessageSchemeSchema>["payload"]>, { case: undefined }>;

const payloadOneof = MessageSchemeSchema.oneofs.find((o) => o.name === "payload");
if (!payloadOneof) throw new Error("bimip.proto: MessageScheme has no oneof payload");

/** Route number of each payload case, from the schema itself (Appendix A). */
export const ROUTE_OF: Readonly<Record<PayloadCase, number>> = Object.freeze(
  Object.fromEntries(payloadOneof.fields.map((f) => [f.localName, f.number])) as Record<PayloadCase, number>,
);

/** Payload case of each route. */
export const CASE_OF_ROUTE: ReadonlyMap<number, PayloadCase> = new Map(
  Object.entries(ROUTE_OF).map(([c, n]) => [n, c as PayloadCase]),
);

/** Builds the MessageScheme for a payload with the matching route (ENV-2). */
export function envelope(payload: PayloadInit): MessageScheme {
  const route = ROUTE_OF[payload.case];
  if (route === undefined) throw new TypeError(`unknown payload case ${String(payload.case)}`);
  return create(MessageSchemeSchema, { route: BigInt(route), payload });
}

/** Encodes a payload as one stanza's bytes. */
export function encodeStanza(payload: PayloadInit): Uint8Array {
  return toBinary(MessageSchemeSchema, envelope(payload));
}

export type Decoded = { ok: true; stanza: MessageScheme; payload: Payload } | { ok: false; error: BimipError };

function protocolError(kind: string, code: number, route: string, details: string): BimipError {
  return new BimipError({ code, kind, route, details, source: "protocol" });
}

/**
 * Decodes one stanza from the server and checks its envelope, with the same kinds the
 * server uses for a client's faults (ENV-3 to ENV-6). Never throws.
 */
export function decodeStanza(bytes: Uint8Array, maxBytes = Infinity): Decoded {
  if (bytes.byteLength > maxBytes) {
    return {
      ok: false,
      error: protocolError("too_large", 413, "", `stanza of ${bytes.byteLength} bytes exceeds ${maxBytes}`),
    };
  }
  let stanza: MessageScheme;
  try {
    stanza = fromBinary(MessageSchemeSchema, bytes, { readUnknownFields: false });
  } catch (e) {
    return { ok: false, error: protocolError("malformed", 400, "", String((e as Error)?.message ?? e)) };
  }
  const route = stanza.route;
  const routeText = route.toString();
  const payload = stanza.payload;
  if (payload.case === undefined) {
    const known = route === 0n || (route >= 2n && route <= 27n);
    return known
      ? { ok: false, error: protocolError("missing_payload", 400, routeText, "stanza without payload") }
      : { ok: false, error: protocolError("unknown_route", 501, routeText, `unknown route ${routeText}`) };
  }
  const expected = ROUTE_OF[payload.case];
  if (BigInt(expected) !== route) {
    return {
      ok: false,
      error: protocolError("route_mismatch", 400, routeText, `route ${routeText} carries ${payload.case} (${expected})`),
    };
  }
  return { ok: true, stanza, payload: payload as Payload };
}
