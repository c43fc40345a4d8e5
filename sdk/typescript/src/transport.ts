/**
 * WebSocket transport (SPEC §2.2): one binary message per stanza, subprotocol `bimip.v1`
 * (TRN-4). Uses the global WebSocket (browsers, Deno, Node >= 22) and the `ws` package on
 * Node without one; with `ws` the token goes in `Authorization: Bearer` and a refused
 * upgrade yields its HTTP status and body (AUTH-10). A browser's WebSocket cannot set
 * headers, so there the token travels in the `token` query parameter (SPEC §3.2), and a
 * refused upgrade shows only as a close (code 1006) before open.
 */
import { BimipError, fromHttpRefusal } from "./errors.js";

export const SUBPROTOCOL = "bimip.v1";

export interface TransportHandlers {
  open(): void;
  message(data: Uint8Array | string): void;
  close(code: number, reason: string): void;
  /** The upgrade failed; `close` is not called after this. */
  refused(error: BimipError): void;
}

export interface Transport {
  send(bytes: Uint8Array): void;
  close(code?: number, reason?: string): void;
}

/** A WebSocket constructor in the browser shape (optional override, e.g. for tests). */
export type WebSocketCtor = new (url: string, protocols?: string | string[]) => WebSocket;

export interface TransportOptions {
  /** Use this WebSocket constructor instead of the global one / `ws`. Token goes in the query. */
  WebSocket?: WebSocketCtor;
  /** Send the token in the query parameter even on Node (default: header on Node). */
  tokenInQuery?: boolean;
}

function withToken(url: string, token: string): string {
  const u = new URL(url);
  u.searchParams.set("token", token);
  return u.toString();
}

function toBytes(data: unknown): Uint8Array | string {
  if (typeof data === "string") return data;
  if (data instanceof ArrayBuffer) return new Uint8Array(data);
  if (ArrayBuffer.isView(data)) return new Uint8Array(data.buffer, data.byteOffset, data.byteLength);
  if (Array.isArray(data)) {
    // ws: fragmented messages may come as Buffer[]
    const parts = data as Uint8Array[];
    const out = new Uint8Array(parts.reduce((n, p) => n + p.byteLength, 0));
    let off = 0;
    for (const p of parts) {
      out.set(p, off);
      off += p.byteLength;
    }
    return out;
  }
  return new Uint8Array(0);
}

export async function openTransport(
  url: string,
  token: string,
  h: TransportHandlers,
  opts: TransportOptions = {},
): Promise<Transport> {
  if (url.startsWith("tcp://")) return tcpTransport(url, token, h);
  const Global = (globalThis as { WebSocket?: WebSocketCtor }).WebSocket;
  const Ctor = opts.WebSocket ?? Global;
  if (Ctor) return browserTransport(Ctor, withToken(url, token), h);
  const wsName = "ws"; // not a static import: browsers never load it
  const mod = (await import(wsName)) as typeof import("ws");
  const WS = mod.WebSocket ?? (mod as unknown as { default: typeof import("ws").WebSocket }).default;
  const target = opts.tokenInQuery ? withToken(url, token) : url;
  const headers: Record<string, string> = opts.tokenInQuery ? {} : { Authorization: `Bearer ${token}` };
  const ws = new WS(target, [SUBPROTOCOL], { headers });
  ws.binaryType = "nodebuffer";
  let refused = false;
  let wasOpen = false;
  ws.on("unexpected-response", (_req, res) => {
    refused = true;
    const chunks: Buffer[] = [];
    res.on("data", (c: Buffer) => chunks.push(c));
    res.on("end", () => {
      h.refused(fromHttpRefusal(res.statusCode ?? 0, Buffer.concat(chunks).toString("utf8")));
      ws.terminate();
    });
    res.on("error", () => {});
  });
  ws.on("open", () => {
    wasOpen = true;
    h.open();
  });
  ws.on("message", (data, isBinary) => {
    const d = toBytes(data);
    h.message(isBinary ? d : typeof d === "string" ? d : new TextDecoder().decode(d));
  });
  ws.on("error", (err) => {
    if (refused) return;
    if (!wasOpen) {
      refused = true;
      h.refused(
        new BimipError({ code: 0, kind: "connect_failed", source: "handshake", details: String(err?.message ?? err) }),
      );
    }
  });
  ws.on("close", (code, reason) => {
    if (!refused) h.close(code, reason.toString("utf8"));
  });
  return {
    send: (bytes) => ws.send(bytes),
    close: (code, reason) => {
      try {
        ws.close(code, reason);
      } catch {
        ws.terminate();
      }
    },
  };
}

/** The largest TCP frame accepted before the session says otherwise (TRN-1). */
const TCP_MAX_FRAME = 65536;

/**
 * Native TCP (SPEC §2.3, Node only): each stanza is a 4-byte big-endian length and the bytes; the
 * first frame is `Authenticate{type: 1, token}`. There are no close codes: `close` gets code 0.
 */
async function tcpTransport(url: string, token: string, h: TransportHandlers): Promise<Transport> {
  const netName = "node:net";
  const net = (await import(netName)) as typeof import("node:net");
  const { encodeStanza } = await import("./envelope.js");
  const u = new URL(url);
  const frame = (bytes: Uint8Array): Uint8Array => {
    const out = new Uint8Array(4 + bytes.byteLength);
    new DataView(out.buffer).setUint32(0, bytes.byteLength);
    out.set(bytes, 4);
    return out;
  };
  const socket = net.connect({ host: u.hostname.replace(/^\[|\]$/g, ""), port: Number(u.port) });
  socket.setNoDelay(true);
  let connected = false;
  let ended = false;
  let buffer = new Uint8Array(0);
  socket.on("connect", () => {
    connected = true;
    socket.write(frame(encodeStanza({ case: "authenticate", value: { type: 1, token, timestamp: BigInt(Date.now()) } })));
    h.open();
  });
  socket.on("data", (chunk: Uint8Array) => {
    const joined = new Uint8Array(buffer.byteLength + chunk.byteLength);
    joined.set(buffer);
    joined.set(chunk, buffer.byteLength);
    buffer = joined;
    while (buffer.byteLength >= 4 && !ended) {
      const n = new DataView(buffer.buffer, buffer.byteOffset, 4).getUint32(0);
      if (n > TCP_MAX_FRAME) {
        // The framing can no longer be trusted (TRN-10): report it as an oversized stanza, then end.
        h.message(new Uint8Array(n > 16 * TCP_MAX_FRAME ? TCP_MAX_FRAME + 1 : n));
        socket.destroy();
        return;
      }
      if (buffer.byteLength < 4 + n) break;
      const stanza = buffer.slice(4, 4 + n);
      buffer = buffer.slice(4 + n);
      h.message(stanza);
    }
  });
  socket.on("error", (err) => {
    if (!connected && !ended) {
      ended = true;
      h.refused(new BimipError({ code: 0, kind: "connect_failed", source: "handshake", details: String(err?.message ?? err) }));
    }
  });
  socket.on("close", () => {
    if (ended) return;
    ended = true;
    h.close(0, "");
  });
  return {
    send: (bytes) => {
      socket.write(frame(bytes));
    },
    close: () => {
      socket.end();
      setTimeout(() => socket.destroy(), 1000).unref?.();
    },
  };
}

function browserTransport(Ctor: WebSocketCtor, url: string, h: TransportHandlers): Transport {
  const ws = new Ctor(url, [SUBPROTOCOL]);
  ws.binaryType = "arraybuffer";
  let opened = false;
  ws.addEventListener("open", () => {
    opened = true;
    h.open();
  });
  ws.addEventListener("message", (ev: MessageEvent) => h.message(toBytes(ev.data)));
  ws.addEventListener("close", (ev: CloseEvent) => {
    if (!opened) {
      // A browser hides the HTTP answer: a refused upgrade is a close (1006) before open.
      h.refused(
        new BimipError({
          code: 0,
          kind: "connect_failed",
          source: "handshake",
          closeCode: ev.code,
          details: `WebSocket closed before open (code ${ev.code}); the server may have refused the token`,
        }),
      );
    } else h.close(ev.code, ev.reason);
  });
  return {
    send: (bytes) => ws.send(bytes),
    close: (code, reason) => {
      try {
        ws.close(code, reason);
      } catch {
        ws.close();
      }
    },
  };
}
