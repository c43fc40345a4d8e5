/**
 * Errors of the BIMIP protocol (SPEC §5) as one typed class.
 *
 * `code` and `kind` are SPEC's (ErrorMessage.code and ErrorMessage.message). Errors the client
 * itself detects (a refused upgrade, an undecodable frame, a lost connection) use the same
 * shape; their `source` tells where they came from.
 */

/** Every kind of SPEC §5.1 with its code. */
export const ERROR_KINDS = {
  malformed: 400,
  missing_payload: 400,
  route_mismatch: 400,
  invalid_field: 400,
  text_frame: 400,
  token_missing: 401,
  token_malformed: 401,
  token_signature: 401,
  token_claims: 401,
  token_expired: 401,
  token_revoked: 401,
  identity_mismatch: 403,
  blocked: 403,
  forbidden: 403,
  not_found: 404,
  not_allowed: 405,
  auth_timeout: 408,
  ping_timeout: 408,
  session_replaced: 409,
  history_gap: 410,
  too_large: 413,
  rate_limited: 429,
  too_many_sessions: 429,
  internal: 500,
  unknown_route: 501,
  unavailable: 503,
  queue_full: 503,
} as const;

export type ErrorKind = keyof typeof ERROR_KINDS;

/** Where an error was detected. */
export type ErrorSource =
  /** An ErrorMessage stanza from the server. */
  | "server"
  /** The WebSocket upgrade was refused (HTTP status, or a close before open in a browser). */
  | "handshake"
  /** The client found a fault in what the server sent (undecodable bytes, unknown route, ...). */
  | "protocol"
  /** The connection closed. */
  | "connection";

export interface BimipErrorInit {
  code: number;
  kind: string;
  source: ErrorSource;
  route?: string;
  refId?: string;
  details?: string;
  closeCode?: number;
}

export class BimipError extends Error {
  /** SPEC code (400, 401, ...); for a browser handshake failure, 0 (only the close code is known). */
  readonly code: number;
  /** SPEC kind (`token_expired`, `malformed`, ...), or a client-side kind (`connect_failed`, `closed`). */
  readonly kind: string;
  readonly source: ErrorSource;
  /** ErrorMessage.route: the offending stanza's route as text, "" when none. */
  readonly route: string;
  /** ErrorMessage.ref_id: the offending stanza's correlation id (message_id_local, message_id, ...). */
  readonly refId: string;
  readonly details: string;
  /** WebSocket close code when the error comes from a close. */
  readonly closeCode?: number;

  constructor(init: BimipErrorInit) {
    super(`${init.kind} (${init.code})${init.details ? `: ${init.details}` : ""}`);
    this.name = "BimipError";
    this.code = init.code;
    this.kind = init.kind;
    this.source = init.source;
    this.route = init.route ?? "";
    this.refId = init.refId ?? "";
    this.details = init.details ?? "";
    this.closeCode = init.closeCode;
  }

  /** True for a kind of the SPEC §5.1 table. */
  get known(): boolean {
    return Object.prototype.hasOwnProperty.call(ERROR_KINDS, this.kind);
  }

  /** ERR-7: 4xx is a fault of the client's stanza or state (do not retry unchanged). */
  get isClientFault(): boolean {
    return this.code >= 400 && this.code < 500;
  }

  /** ERR-7: 5xx is a server fault (may be retried later). */
  get retryable(): boolean {
    return this.code >= 500 && this.code < 600;
  }
}

/** Maps an ErrorMessage stanza's fields to a BimipError. */
export function fromErrorMessage(e: {
  code: number;
  message: string;
  route: string;
  refId: string;
  details: string;
}): BimipError {
  return new BimipError({
    code: e.code,
    kind: e.message,
    source: "server",
    route: e.route,
    refId: e.refId,
    details: e.details,
  });
}

/** Maps an HTTP answer to the upgrade (AUTH-10: 401 with the kind as text/plain body; SES-3: 429). */
export function fromHttpRefusal(status: number, body: string): BimipError {
  const kind = body.trim().split(/\s+/)[0] || `http_${status}`;
  return new BimipError({
    code: status,
    kind,
    source: "handshake",
    details: `the server refused the WebSocket upgrade with HTTP ${status}`,
  });
}

/**
 * Maps a WebSocket close code to what SPEC §2.2 says it means.
 * 4000 + code closes follow a fatal ErrorMessage; 1003 is text_frame, 1009 too_large.
 */
export function kindOfCloseCode(closeCode: number): { code: number; kind: string } {
  switch (closeCode) {
    case 1000:
      return { code: 0, kind: "closed" };
    case 1003:
      return { code: 400, kind: "text_frame" };
    case 1009:
      return { code: 413, kind: "too_large" };
    case 4401:
      return { code: 401, kind: "token_expired" }; // or token_revoked: the ErrorMessage before the close tells
    case 4408:
      return { code: 408, kind: "ping_timeout" };
    case 4409:
      return { code: 409, kind: "session_replaced" };
    case 4429:
      return { code: 429, kind: "rate_limited" };
    default:
      if (closeCode >= 4000 && closeCode < 5000) return { code: closeCode - 4000, kind: `close_${closeCode}` };
      return { code: 0, kind: "connection_lost" };
  }
}

export function fromClose(closeCode: number, reason: string): BimipError {
  const { code, kind } = kindOfCloseCode(closeCode);
  return new BimipError({
    code,
    kind,
    source: "connection",
    closeCode,
    details: reason || `connection closed with code ${closeCode}`,
  });
}
