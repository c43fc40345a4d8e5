/**
 * BimipClient: one device's connection to a BIMIP server over WebSocket or native TCP.
 *
 * - answers the server's pings (PING-3);
 * - sendText/sendMedia resolve with the VersionUpdate (CHAT-5) or reject with the ErrorMessage for it;
 * - incoming ChatMessages are confirmed as QUE-4 says (receiver copy: 2 DELIVERED, sender copy:
 *   4 SENT), deduplicated by message_id (QUE-7, within a bounded window) and handed to the
 *   application once, in the order the server sends them (version order per chat, CHAT-16);
 * - acknowledgment updates are deduplicated by (message_id, status) and, on the sender side,
 *   confirmed by echoing their status (QUE-4);
 * - optional reconnect with backoff (CLI-4..6) that resends unconfirmed chat requests with the
 *   same message_id_local (CLI-1, CLI-2); pending requests live in a PendingStore, so that they
 *   also survive a restart of the application (CLI-2);
 * - awareness (presence, intentions, AwarenessRequest, AwarenessSubscription), subscribers,
 *   blocking, visibility, location, token refresh and logout, each resolving on the server's
 *   answer as SPEC defines it and rejecting with the ErrorMessage for it.
 */
import { BimipError, fromClose, fromErrorMessage } from "./errors.js";
import { decodeStanza, encodeStanza, ROUTE_OF, type Payload, type PayloadInit } from "./envelope.js";
import { openTransport, type Transport, type TransportOptions } from "./transport.js";
import { BoundedSet } from "./bounded-set.js";
import { MemoryStore, type MediaContent, type MediaType, type PendingRequest, type PendingStore } from "./store.js";
import type {
  AcknowledgmentResponse as PbAckResponse,
  AwarenessNotification as PbAwarenessNotification,
  AwarenessResponse as PbAwarenessResponse,
  ChatMessage as PbChatMessage,
  Identity as PbIdentity,
} from "./gen/bimip_pb.js";

export interface Identity {
  eid: string;
  device: string;
}

export interface ChatMessage {
  messageId: string;
  messageIdLocal: string;
  chatId: string;
  version: number;
  from: Identity;
  to: string[];
  /** "receiver" (a message to this user) or "sender" (a copy of one this user sent from another device). */
  author: "receiver" | "sender" | string;
  text?: string;
  /** Media messages: the sender's cdn_url_id, with the media fields below. */
  mediaUrl?: string;
  /** Media messages: 1 image, 2 audio, 3 video, 4 file. */
  mediaType?: number;
  caption?: string;
  thumbnailUrl?: string;
  mediaSizeBytes?: number;
  acknowledgment: number;
  createdAt: number;
  serverReceivedAt: number;
}

/** A state update of a message (AcknowledgmentResponse item, ACK-4). */
export interface Receipt {
  messageId: string;
  chatId: string;
  version: number;
  /** 2 DELIVERED, 3 READ. */
  status: number;
  state: "delivered" | "read" | "sent";
  from: Identity;
  timestamp: number;
}

export interface SendResult {
  messageId: string;
  messageIdLocal: string;
  chatId: string;
  version: number;
  timestamp: number;
}

export interface SessionInfo {
  identity: Identity;
  pingIntervalMs: number;
  maxStanzaBytes: number;
  expiresAt: number;
}

/** Presence names of the SPEC 10 table (code 0..5). */
export type Presence = "unavailable" | "online" | "offline" | "away" | "busy" | "do_not_disturb";
/** Intention names (code 0..3). */
export type IntentionKind = "none" | "typing" | "recording" | "stopped";

const PRESENCE_NAMES: readonly Presence[] = ["unavailable", "online", "offline", "away", "busy", "do_not_disturb"];
const INTENTION_NAMES: readonly IntentionKind[] = ["none", "typing", "recording", "stopped"];
const MEDIA_TYPES: Record<MediaType, number> = { image: 1, audio: 2, video: 3, file: 4 };
const VISIBILITY_CODES = { public: 1, contacts: 2, private: 3 } as const;
export type Visibility = keyof typeof VISIBILITY_CODES;
const VISIBILITY_NAMES: Record<number, Visibility> = { 1: "public", 2: "contacts", 3: "private" };

/** A user's awareness: an AwarenessResponse (getAwareness) or a notification ("awareness" event). */
export interface Awareness {
  /** The user it is about. */
  eid: string;
  /** Presence code: 0 UNAVAILABLE (you may not see the user), 1 ONLINE, 2 OFFLINE, 3 AWAY, 4 BUSY, 5 DO_NOT_DISTURB. */
  status: number;
  presence: Presence;
  /** ms; with status OFFLINE, when the user was last online (0 = not known). */
  lastSeen: number;
  /** Degrees; 0 and 0 unless you may see the user's location (LOC-1). */
  latitude: number;
  longitude: number;
  /** Seconds the status holds (notifications); 0 = until changed. */
  ttl: number;
  /** ms, server clock. */
  timestamp: number;
}

/** An intention a peer signals to this user (AWR-7). */
export interface Intention {
  /** The signalling device. */
  from: Identity;
  /** 1 TYPING, 2 RECORDING, 3 STOPPED. */
  intention: number;
  kind: IntentionKind;
  /** Seconds it holds; treat it as NONE afterwards (0 = until STOPPED). */
  ttl: number;
  timestamp: number;
}

/** A live location fix (LocationStream, SPEC 14). */
export interface LocationFix {
  id: string;
  from: Identity;
  latitude: number;
  longitude: number;
  altitude: number;
  timestamp: number;
}

/** A PushNotification from the server's operator (SPEC 18). */
export interface PushMessage {
  id: string;
  from: Identity;
  type: string;
  data: Record<string, string>;
  timestamp: number;
}

export interface SubscriberResult {
  /** The subscriber's EID. */
  subscriber: string;
  /** Server-assigned id of the relationship (SUB-2), "" for a removal. */
  subscriberResourceId: string;
  status: number;
  message: string;
  timestamp: number;
}

export interface VisibilitySettings {
  visibility: Visibility;
  /** Location sharing ON. */
  locationSharing: boolean;
}

export interface RefreshedToken {
  token: string;
  /** ms; the new token's exp. */
  expiresAt: number;
}

/** Options of every call that waits for the server's answer. */
export interface RequestOptions {
  /** Abort the wait (the stanza may still have been sent); rejects with the signal's reason. */
  signal?: AbortSignal;
  /** How long to wait for the answer; default the client's `requestTimeoutMs` (10000 ms). */
  timeoutMs?: number;
}

export interface SendOptions {
  /** The request's idempotency key (CLI-1); default a random UUID. */
  messageIdLocal?: string;
  /** Give the request up (see sendText). */
  signal?: AbortSignal;
}

export type TokenSource = { token: string } | { getToken: () => string | Promise<string> };

export type ConnectOptions = TokenSource &
  TransportOptions & {
    /** Confirm received copies automatically (QUE-4; receiver copies as DELIVERED). Default true. */
    autoConfirm?: boolean;
    /** Reconnect after a lost connection (CLI-4..CLI-6). Default false. */
    reconnect?: boolean | ReconnectOptions;
    /** How long connect() waits for the upgrade and the Authenticate RESPONSE. Default 10000 ms. */
    connectTimeoutMs?: number;
    /** Default wait for the answer to a request (awareness, subscribers, ...). Default 10000 ms. */
    requestTimeoutMs?: number;
    /**
     * Where chat requests wait for their VersionUpdate (CLI-2). Default: a MemoryStore of this
     * client. A client built with a store that holds requests of the same device sends them again
     * on connect, with the same message_id_local.
     */
    store?: PendingStore;
    /** How many message ids (and receipt keys) the duplicate filters remember (QUE-7). Default 10000. */
    dedupWindow?: number;
  };

export interface ReconnectOptions {
  /** First wait, ms (CLI-6: at least 1000). */
  firstWaitMs?: number;
  /** Longest wait, ms (default 60000). */
  maxWaitMs?: number;
}

const ACK_STATUS = { delivered: 2, read: 3 } as const;
const STATE_NAME: Record<number, Receipt["state"]> = { 2: "delivered", 3: "read", 4: "sent" };

function ident(i: PbIdentity | undefined): Identity {
  return { eid: i?.eid ?? "", device: i?.connectionResourceId ?? "" };
}
function sameIdentity(a: PbIdentity | undefined, b: PbIdentity | undefined): boolean {
  return (a?.eid ?? "") === (b?.eid ?? "") && (a?.connectionResourceId ?? "") === (b?.connectionResourceId ?? "");
}

function toChatMessage(m: PbChatMessage): ChatMessage {
  const media = m.payload.case === "mediaUrl";
  return {
    messageId: m.messageId,
    messageIdLocal: m.messageIdLocal,
    chatId: m.chatId,
    version: Number(m.version),
    from: ident(m.from),
    to: m.to.map((t) => t.eid),
    author: m.author,
    text: m.payload.case === "text" ? m.payload.value : undefined,
    mediaUrl: media ? m.payload.value : undefined,
    mediaType: media ? m.mediaType : undefined,
    caption: media ? m.caption : undefined,
    thumbnailUrl: media ? m.thumbnailUrl : undefined,
    mediaSizeBytes: media ? Number(m.mediaSizeBytes) : undefined,
    acknowledgment: m.acknowledgment,
    createdAt: Number(m.createdAt),
    serverReceivedAt: Number(m.serverReceivedAt),
  };
}

function toReceipt(r: PbAckResponse): Receipt {
  return {
    messageId: r.messageId,
    chatId: r.chatId,
    version: Number(r.version),
    status: r.status,
    state: STATE_NAME[r.status] ?? "sent",
    from: ident(r.from),
    timestamp: Number(r.timestamp),
  };
}

function toAwareness(a: PbAwarenessNotification | PbAwarenessResponse): Awareness {
  return {
    eid: a.from?.eid ?? "",
    status: a.status,
    presence: PRESENCE_NAMES[a.status] ?? "unavailable",
    lastSeen: Number(a.lastSeen),
    latitude: a.latitude,
    longitude: a.longitude,
    ttl: "ttl" in a ? a.ttl : 0,
    timestamp: Number(a.timestamp),
  };
}

function presenceCode(p: Presence | number): number {
  const code = typeof p === "number" ? p : PRESENCE_NAMES.indexOf(p);
  if (code < 0) throw new TypeError(`unknown presence ${String(p)}`);
  return code;
}
function intentionCode(i: IntentionKind | number): number {
  const code = typeof i === "number" ? i : INTENTION_NAMES.indexOf(i);
  if (code < 0) throw new TypeError(`unknown intention ${String(i)}`);
  return code;
}

let localCounter = 0;
function newLocalId(): string {
  const c = (globalThis as { crypto?: { randomUUID?: () => string } }).crypto;
  if (c?.randomUUID) return c.randomUUID();
  return `${Date.now().toString(36)}-${(localCounter++).toString(36)}-${Math.random().toString(36).slice(2)}`;
}

function isPromise(v: unknown): v is Promise<unknown> {
  return typeof (v as { then?: unknown })?.then === "function";
}

function closedError(details = "client is closed"): BimipError {
  return new BimipError({ code: 0, kind: "closed", source: "connection", details });
}
function notConnected(): BimipError {
  return new BimipError({ code: 0, kind: "not_connected", source: "connection" });
}
function abortReason(signal: AbortSignal): unknown {
  return signal.reason ?? new DOMException("The operation was aborted", "AbortError");
}

interface PendingSend {
  req: PendingRequest;
  /** Absent for a request restored from the store: its outcome goes to the "sent"/"error" events. */
  resolve?(r: SendResult): void;
  reject?(e: BimipError): void;
  retryTimer?: ReturnType<typeof setTimeout>;
  /** In the store (and so sent, and sent again after a reconnect). */
  stored: boolean;
}

interface PendingAck {
  resolve(r: Receipt): void;
  reject(e: BimipError): void;
}

/** A request waiting for its direct answer (a response stanza, an ErrorMessage or a barrier pong). */
interface Waiter {
  /** Route of the request: an ErrorMessage with this route (and refId) answers it. */
  route: number;
  /** The request's correlation id as SPEC 5.2 lists it ("" for routes without one). */
  refId: string;
  /** Returns the result when `p` is this request's answer, else undefined. */
  match?: (p: Payload) => unknown;
  /** Id of the ping sent behind a request that has no answer on success (ENV-14, PING-1). */
  barrier?: string;
  resolve(v: unknown): void;
  reject(e: unknown): void;
}

/** Payloads of the client's events (CustomEvent.detail). */
export interface BimipEventMap {
  message: ChatMessage;
  receipt: Receipt;
  /** A chat request was accepted (its VersionUpdate), also one restored from the store. */
  sent: SendResult;
  /** A user's awareness changed, or its current state after a subscription (AWR-10, AWR-11, AWR-17). */
  awareness: Awareness;
  /** A peer's intention (typing, ...) addressed to this user (AWR-7). */
  intention: Intention;
  /** A live location fix of a user this user may see (LOC-2). */
  location: LocationFix;
  push: PushMessage;
  /** The session's token was refreshed (refreshToken); reconnects use the new one. */
  token: RefreshedToken;
  /** The server ended the session (Logout DISCONNECT, TOK-12 / OUT-4); the close follows. */
  logout: { status: number; timestamp: number };
  error: BimipError;
  close: { code: number; reason: string; reconnecting: boolean; error: BimipError };
  reconnect: SessionInfo;
}

/** Events: see BimipEventMap ("message", "receipt", "sent", "awareness", "intention", "location",
 * "push", "token", "logout", "error", "close", "reconnect"), each a CustomEvent whose detail is the payload. */
export class BimipClient extends EventTarget {
  /** From the Authenticate RESPONSE; defaults (SPEC §19) when a WebSocket server sent none (TRN-17). */
  session: SessionInfo = { identity: { eid: "", device: "" }, pingIntervalMs: 30_000, maxStanzaBytes: 65_536, expiresAt: 0 };
  private transport: Transport | null = null;
  private readonly pendingSends = new Map<string, PendingSend>();
  private readonly pendingAcks = new Map<string, PendingAck[]>();
  private waiters: Waiter[] = [];
  private readonly seenMessages: BoundedSet<string>;
  private readonly seenReceipts: BoundedSet<string>;
  private readonly store: PendingStore;
  /** Sends wait here while an asynchronous store is writing (keeps their order). */
  private storeChain: Promise<void> = Promise.resolve();
  private storeBusy = 0;
  private restored = false;
  private readonly inbox: ChatMessage[] = [];
  private inboxWaiters: Array<(m: IteratorResult<ChatMessage>) => void> = [];
  private closedByUser = false;
  private ended = false;
  private token = "";
  private sessionStart = 0;
  private backoffMs = 0;
  private reconnectTimer: ReturnType<typeof setTimeout> | null = null;
  private barrierCounter = 0;
  private awarenessCounter = 0n;
  private visibilityCounter = 0;
  /** Stanzas that came right behind the Authenticate RESPONSE, held for one macrotask so that the
   * caller of connect() can add its listeners before the queue replay is dispatched. */
  private held: Array<Uint8Array | string> | null = null;
  /** The last ErrorMessage of this connection (TCP: it decides what the close means). */
  private lastError: BimipError | null = null;

  /** @internal use connect() */
  constructor(
    private readonly url: string,
    private readonly opts: ConnectOptions,
  ) {
    super();
    const window = opts.dedupWindow ?? 10_000;
    this.seenMessages = new BoundedSet(window);
    this.seenReceipts = new BoundedSet(window);
    this.store = opts.store ?? new MemoryStore();
  }

  // ---- connection ---------------------------------------------------------------------

  private async currentToken(fresh: boolean): Promise<string> {
    // A token from refreshToken() replaces the configured one (the old jti is revoked, TOK-9).
    if (fresh && "getToken" in this.opts) this.token = await this.opts.getToken();
    if (!this.token) this.token = "token" in this.opts ? this.opts.token : await this.opts.getToken();
    return this.token;
  }

  /** @internal loads the requests the store holds (CLI-2); they go out once a session exists. */
  async restore(): Promise<void> {
    if (this.restored) return;
    this.restored = true;
    let list: PendingRequest[];
    try {
      list = await this.store.list();
    } catch (e) {
      this.emitError(new BimipError({ code: 0, kind: "store_failed", source: "connection", details: String(e) }));
      return;
    }
    for (const req of list) if (!this.pendingSends.has(req.messageIdLocal)) this.pendingSends.set(req.messageIdLocal, { req, stored: true });
  }

  /** @internal opens one connection; resolves once the session is established. */
  async open(freshToken: boolean): Promise<void> {
    const token = await this.currentToken(freshToken);
    const timeoutMs = this.opts.connectTimeoutMs ?? 10_000;
    await new Promise<void>((resolve, reject) => {
      let settled = false;
      let opened = false;
      let openTimer: ReturnType<typeof setTimeout> | null = null;
      const timer = setTimeout(() => {
        fail(new BimipError({ code: 0, kind: "connect_timeout", source: "handshake", details: `no session within ${timeoutMs} ms` }));
        transport?.close();
      }, timeoutMs);
      const established = (info: SessionInfo | null) => {
        if (settled) return;
        settled = true;
        clearTimeout(timer);
        if (openTimer) clearTimeout(openTimer);
        if (info) this.session = info;
        this.sessionStart = Date.now();
        this.transport = transport;
        this.held = [];
        setTimeout(() => {
          const held = this.held ?? [];
          this.held = null;
          for (const d of held) this.onData(d);
        }, 0);
        resolve();
        this.resendPending();
      };
      const fail = (e: BimipError) => {
        if (settled) return;
        settled = true;
        clearTimeout(timer);
        if (openTimer) clearTimeout(openTimer);
        reject(e);
      };
      let transport: Transport | null = null;
      openTransport(
        this.url,
        token,
        {
          open: () => {
            opened = true;
            // TRN-17: a WebSocket server may send no Authenticate RESPONSE; the upgrade is enough.
            // On TCP the RESPONSE is mandatory (TRN-15): wait for it.
            if (!this.isTcp) openTimer = setTimeout(() => established(null), 2_000);
          },
          refused: (e) => fail(e),
          message: (data) => {
            if (!settled && opened && typeof data !== "string") {
              const d = decodeStanza(data, this.session.maxStanzaBytes);
              if (d.ok && d.payload.case === "authenticate" && d.payload.value.type === 2) {
                const a = d.payload.value;
                established({
                  identity: ident(a.identity),
                  pingIntervalMs: Number(a.pingIntervalMs),
                  maxStanzaBytes: Number(a.maxStanzaBytes) || 65536,
                  expiresAt: Number(a.expiresAt),
                });
                return;
              }
              if (d.ok && d.payload.case === "errorMessage" && (this.isTcp || d.payload.value.code === 401)) {
                // A fatal error before the session: report it as the failure of connect().
                fail(fromErrorMessage(d.payload.value));
                return;
              }
              established(null);
            }
            this.onData(data);
          },
          close: (code, reason) => {
            if (!settled) {
              fail(fromClose(code, reason));
              return;
            }
            if (this.transport === transport) this.onClose(code, reason);
          },
        },
        this.opts,
      )
        .then((t) => {
          transport = t;
        })
        .catch((e) => fail(new BimipError({ code: 0, kind: "connect_failed", source: "handshake", details: String(e) })));
    });
  }

  private get isTcp(): boolean {
    return this.url.startsWith("tcp://");
  }

  private onClose(code: number, reason: string): void {
    // What came before the close is handed over first (and confirmed while the transport is up).
    if (this.held) {
      const held = this.held;
      this.held = null;
      for (const d of held) this.onData(d);
    }
    this.transport = null;
    // Native TCP has no close codes: the fatal ErrorMessage before the end says why (SPEC §5.1).
    if (code === 0 && this.lastError && [401, 408, 409, 413, 429].includes(this.lastError.code)) {
      code = 4000 + this.lastError.code;
    } else if (code === 0) code = 1006;
    this.lastError = null;
    const lasted = Date.now() - this.sessionStart;
    const error = fromClose(code, reason);
    // The answers of this connection will not come any more.
    this.failWaiters(error);
    const ro = this.opts.reconnect;
    // CLI-4: no reconnect after our own close/logout or 4409; CLI-5: 4401 needs a new token.
    let reconnecting = !!ro && !this.closedByUser && code !== 4409 && code !== 1000;
    if (code === 4401 && "token" in this.opts) reconnecting = false;
    this.dispatchEvent(new CustomEvent("close", { detail: { code, reason, reconnecting, error } }));
    if (!reconnecting) {
      this.end(error);
      return;
    }
    const cfg = typeof ro === "object" ? ro : {};
    const first = Math.max(1000, cfg.firstWaitMs ?? 1000);
    const max = cfg.maxWaitMs ?? 60_000;
    if (lasted >= (this.session.pingIntervalMs || 30_000)) this.backoffMs = 0;
    this.scheduleReconnect(first, max, code === 4401);
  }

  private scheduleReconnect(first: number, max: number, freshToken: boolean): void {
    // CLI-6: 1 s, then doubling up to 60 s, each plus up to half of it at random.
    this.backoffMs = this.backoffMs ? Math.min(this.backoffMs * 2, max) : first;
    const wait = this.backoffMs + Math.random() * (this.backoffMs / 2);
    this.reconnectTimer = setTimeout(() => {
      this.reconnectTimer = null;
      if (this.closedByUser) return;
      this.open(freshToken).then(
        () => this.dispatchEvent(new CustomEvent("reconnect", { detail: this.session })),
        (e: BimipError) => {
          this.emitError(e);
          if (e.code === 401 && "token" in this.opts) return this.end(e); // CLI-5
          this.scheduleReconnect(first, max, e.code === 401);
        },
      );
    }, wait);
  }

  private end(error: BimipError): void {
    if (this.ended) return;
    this.ended = true;
    // The requests stay in the store (CLI-2): a later client with the same store sends them again.
    for (const [, p] of this.pendingSends) {
      if (p.retryTimer) clearTimeout(p.retryTimer);
      p.reject?.(error);
    }
    this.pendingSends.clear();
    for (const [, list] of this.pendingAcks) for (const p of list) p.reject(error);
    this.pendingAcks.clear();
    this.failWaiters(error);
    for (const w of this.inboxWaiters) w({ done: true, value: undefined });
    this.inboxWaiters = [];
  }

  /** Rejects every request waiting for an answer. */
  private failWaiters(error: BimipError): void {
    const drop = this.waiters;
    this.waiters = [];
    for (const w of drop) w.reject(error);
  }

  private emitError(e: BimipError): void {
    this.dispatchEvent(new CustomEvent("error", { detail: e }));
  }

  private emit<K extends keyof BimipEventMap>(type: K, detail: BimipEventMap[K]): void {
    this.dispatchEvent(new CustomEvent(type, { detail }));
  }

  private sendPayload(p: PayloadInit): boolean {
    if (!this.transport) return false;
    this.transport.send(encodeStanza(p));
    return true;
  }

  // ---- incoming -----------------------------------------------------------------------

  private onData(data: Uint8Array | string): void {
    if (this.held) {
      this.held.push(data);
      return;
    }
    if (typeof data === "string") {
      this.emitError(new BimipError({ code: 400, kind: "text_frame", source: "protocol", details: "text message from the server" }));
      return;
    }
    const d = decodeStanza(data, this.session.maxStanzaBytes);
    if (!d.ok) {
      this.emitError(d.error); // CLI-7: reported, the session goes on
      return;
    }
    try {
      this.onPayload(d.payload);
    } catch (e) {
      this.emitError(new BimipError({ code: 0, kind: "client_internal", source: "protocol", details: String(e) }));
    }
  }

  /** Hands `p` to the oldest request it answers; true when one took it. */
  private answerWaiter(p: Payload): boolean {
    for (let i = 0; i < this.waiters.length; i++) {
      const w = this.waiters[i];
      if (!w.match) continue;
      const r = w.match(p);
      if (r === undefined) continue;
      this.waiters.splice(i, 1);
      w.resolve(r);
      return true;
    }
    return false;
  }

  private onPayload(p: Payload): void {
    switch (p.case) {
      case "pingpongMessage": {
        const ping = p.value;
        if (ping.type === 2) {
          // A pong to a ping of ours: a barrier behind a request that has no answer on success.
          const i = this.waiters.findIndex((w) => w.barrier !== undefined && w.barrier === ping.id);
          if (i >= 0) this.waiters.splice(i, 1)[0].resolve(undefined);
          return;
        }
        if (ping.type !== 1) return;
        const now = BigInt(Date.now());
        this.sendPayload({
          case: "pingpongMessage",
          value: { type: 2, status: 2, requestTime: ping.requestTime, responseTime: now, rtt: now - ping.requestTime, id: ping.id },
        });
        return;
      }
      case "versionUpdate": {
        const v = p.value;
        const pending = this.pendingSends.get(v.messageIdLocal);
        if (!pending) return; // an answer to a resend we gave up on
        this.pendingSends.delete(v.messageIdLocal);
        if (pending.retryTimer) clearTimeout(pending.retryTimer);
        this.storeDelete(v.messageIdLocal);
        const result: SendResult = {
          messageId: v.messageId,
          messageIdLocal: v.messageIdLocal,
          chatId: v.chatId,
          version: Number(v.version),
          timestamp: Number(v.timestamp),
        };
        pending.resolve?.(result);
        this.emit("sent", result);
        return;
      }
      case "chatMessage": {
        const m = p.value;
        if (this.seenMessages.add(m.messageId)) this.deliver(toChatMessage(m));
        // QUE-4 / CLI-3: confirm the copy, duplicates too (or it comes again next session).
        if (this.opts.autoConfirm !== false) this.confirm(m.messageId, m.author === "sender" ? 4 : 2);
        return;
      }
      case "acknowledgmentResponse": {
        const r = p.value;
        if (sameIdentity(r.from, r.to)) {
          // ACK-5: the confirmation of our own AcknowledgmentRequest.
          const list = this.pendingAcks.get(r.messageId);
          const w = list?.shift();
          if (list && list.length === 0) this.pendingAcks.delete(r.messageId);
          w?.resolve(toReceipt(r));
          return;
        }
        if (this.seenReceipts.add(`${r.messageId}\u0000${r.status}`)) this.emit("receipt", toReceipt(r));
        // QUE-4: a sender device confirms an update by echoing its status; a receiver's
        // sibling device does not (a later item confirms it).
        const senderSide = (r.from?.eid ?? "") !== (r.to?.eid ?? "");
        if (senderSide && this.opts.autoConfirm !== false) this.confirm(r.messageId, r.status);
        return;
      }
      case "awarenessNotification": {
        const n = p.value;
        if (n.awarenessIntention !== 0) {
          this.emit("intention", {
            from: ident(n.from),
            intention: n.awarenessIntention,
            kind: INTENTION_NAMES[n.awarenessIntention] ?? "none",
            ttl: n.ttl,
            timestamp: Number(n.timestamp),
          });
        } else this.emit("awareness", toAwareness(n));
        return;
      }
      case "body": {
        for (const n of p.value.awarenessList) this.emit("awareness", toAwareness(n));
        return;
      }
      case "locationStream": {
        const l = p.value;
        this.emit("location", {
          id: l.id,
          from: ident(l.from),
          latitude: l.latitude,
          longitude: l.longitude,
          altitude: l.altitude,
          timestamp: Number(l.timestamp),
        });
        return;
      }
      case "pushNotification": {
        const n = p.value;
        this.emit("push", { id: n.id, from: ident(n.from), type: n.type, data: { ...n.data }, timestamp: Number(n.timestamp) });
        return;
      }
      case "errorMessage": {
        const err = fromErrorMessage(p.value);
        this.lastError = err;
        if ((err.route === "14" || err.route === "15") && this.pendingSends.has(err.refId)) {
          const pending = this.pendingSends.get(err.refId)!;
          if (err.kind === "rate_limited") {
            // SES-5: the request had no effect and may go again; it stays pending (CLI-2).
            if (!pending.retryTimer) {
              pending.retryTimer = setTimeout(() => {
                pending.retryTimer = undefined;
                if (this.pendingSends.get(err.refId) === pending) this.sendChatRequest(pending.req);
              }, 1000 + Math.random() * 500);
            }
            return;
          }
          // Any other refusal ends the request (5xx such as queue_full may be retried by the application).
          this.pendingSends.delete(err.refId);
          if (pending.retryTimer) clearTimeout(pending.retryTimer);
          this.storeDelete(err.refId);
          if (pending.reject) pending.reject(err);
          else this.emitError(err);
          return;
        }
        if (err.route === "16" && this.pendingAcks.has(err.refId)) {
          const list = this.pendingAcks.get(err.refId)!;
          const w = list.shift();
          if (list.length === 0) this.pendingAcks.delete(err.refId);
          w?.reject(err);
          if (err.kind !== "blocked") this.emitError(err);
          return;
        }
        if (err.route === "6" && err.refId !== "") {
          // The ping behind a request was refused (e.g. 429): the request itself had no error,
          // which would have come first (ENV-14), so it was handled.
          const i = this.waiters.findIndex((w) => w.barrier === err.refId);
          if (i >= 0) {
            this.waiters.splice(i, 1)[0].resolve(undefined);
            return;
          }
        }
        if (err.route !== "") {
          const i = this.waiters.findIndex((w) => String(w.route) === err.route && (err.refId === "" || w.refId === err.refId));
          if (i >= 0) {
            this.waiters.splice(i, 1)[0].reject(err);
            return;
          }
        }
        this.emitError(err);
        return;
      }
      case "logout": {
        if (this.answerWaiter(p)) return;
        // A server notice (DISCONNECT, TOK-12 / OUT-4): the close that follows ends the session.
        if (p.value.type === 2) this.emit("logout", { status: p.value.status, timestamp: Number(p.value.timestamp) });
        return;
      }
      case "authenticate":
        return; // TRN-17: accepted, the session was set up in open()
      default:
        // Responses to requests; anything else is a stanza this client does not use (CLI-7).
        this.answerWaiter(p);
        return;
    }
  }

  private deliver(m: ChatMessage): void {
    this.emit("message", m);
    const w = this.inboxWaiters.shift();
    if (w) w({ done: false, value: m });
    else this.inbox.push(m);
  }

  private confirm(messageId: string, status: number): void {
    const list = this.pendingAcks.get(messageId) ?? [];
    list.push({ resolve: () => {}, reject: () => {} });
    this.pendingAcks.set(messageId, list);
    if (!this.sendPayload({ case: "acknowledgmentRequest", value: { messageId, status, timestamp: BigInt(Date.now()) } })) {
      list.pop();
    }
  }

  // ---- pending chat requests (CLI-1, CLI-2) ---------------------------------------------

  private resendPending(): void {
    // CLI-1/CLI-2: a request without its VersionUpdate goes again with the same message_id_local
    // and content. Requests of another device (a shared store) are left alone.
    const me = this.session.identity;
    for (const [, p] of this.pendingSends) {
      if (!p.stored || p.req.from.eid !== me.eid || p.req.from.device !== me.device) continue;
      if (p.retryTimer) {
        clearTimeout(p.retryTimer);
        p.retryTimer = undefined;
      }
      this.sendChatRequest(p.req);
    }
  }

  private sendChatRequest(r: PendingRequest): void {
    if (r.media) {
      const m = r.media;
      this.sendPayload({
        case: "mediaPayloadRequest",
        value: {
          to: [{ eid: r.to }],
          messageIdLocal: r.messageIdLocal,
          chatId: m.chatId ?? "",
          type: m.type,
          caption: m.caption ?? "",
          thumbnailUrl: m.thumbnailUrl ?? "",
          cdnUrlId: m.url,
          mediaSizeBytes: BigInt(m.sizeBytes ?? 0),
          createdAt: BigInt(r.createdAt),
        },
      });
      return;
    }
    this.sendPayload({
      case: "textPayloadRequest",
      value: { to: [{ eid: r.to }], content: r.text ?? "", messageIdLocal: r.messageIdLocal, createdAt: BigInt(r.createdAt) },
    });
  }

  private storeFailed(e: unknown): void {
    this.emitError(new BimipError({ code: 0, kind: "store_failed", source: "connection", details: String(e) }));
  }

  private storeDelete(id: string): void {
    try {
      const r = this.store.delete(id);
      if (isPromise(r)) r.catch((e) => this.storeFailed(e));
    } catch (e) {
      this.storeFailed(e);
    }
  }

  /** Keeps the request in the store, then sends it (in call order, also with an asynchronous store). */
  private submit(req: PendingRequest, signal?: AbortSignal): Promise<SendResult> {
    if (this.ended || this.closedByUser) return Promise.reject(closedError());
    if (signal?.aborted) return Promise.reject(abortReason(signal));
    if (!this.transport && !this.opts.reconnect) return Promise.reject(notConnected());
    if (this.pendingSends.has(req.messageIdLocal)) {
      return Promise.reject(new BimipError({ code: 0, kind: "duplicate_local_id", source: "connection", details: `${req.messageIdLocal} is pending` }));
    }
    return new Promise<SendResult>((resolve, reject) => {
      const p: PendingSend = { req, resolve, reject, stored: false };
      this.pendingSends.set(req.messageIdLocal, p);
      if (signal) {
        // Giving up: the request is forgotten (not sent again, removed from the store). If the
        // server had accepted it already, it is delivered all the same.
        const onAbort = () => {
          if (this.pendingSends.get(req.messageIdLocal) !== p) return;
          this.pendingSends.delete(req.messageIdLocal);
          if (p.retryTimer) clearTimeout(p.retryTimer);
          if (p.stored) this.storeDelete(req.messageIdLocal);
          else this.chainStore(() => this.store.delete(req.messageIdLocal), () => {});
          reject(abortReason(signal));
        };
        signal.addEventListener("abort", onAbort, { once: true });
        p.resolve = (r) => {
          signal.removeEventListener("abort", onAbort);
          resolve(r);
        };
        p.reject = (e) => {
          signal.removeEventListener("abort", onAbort);
          reject(e);
        };
      }
      const go = () => {
        p.stored = true;
        if (this.pendingSends.get(req.messageIdLocal) === p) this.sendChatRequest(req);
      };
      const put = (): void | Promise<void> => {
        try {
          return this.store.put(req);
        } catch (e) {
          this.storeFailed(e);
        }
      };
      if (this.storeBusy === 0) {
        const r = put();
        if (!isPromise(r)) {
          go();
          return;
        }
        this.chainStore(() => r, go);
        return;
      }
      // an asynchronous store is writing: this put waits for it (writes and sends in call order)
      this.chainStore(put, go);
    });
  }

  private chainStore(write: () => void | Promise<void>, then: () => void): void {
    this.storeBusy++;
    this.storeChain = this.storeChain
      .then(write)
      .catch((e) => this.storeFailed(e))
      .then(() => {
        this.storeBusy--;
        then();
      });
  }

  // ---- requests with an answer ----------------------------------------------------------

  /**
   * Sends `payload` and waits for its answer: the stanza `match` recognises, or (with `barrier`)
   * the pong of a ping sent right behind it, which the server answers only after the request
   * (ENV-14, PING-1); an ErrorMessage for the request rejects.
   */
  private request<T>(
    payload: PayloadInit,
    o: { refId?: string; match?: (p: Payload) => T | undefined; barrier?: boolean } & RequestOptions,
  ): Promise<T> {
    if (this.ended || this.closedByUser) return Promise.reject(closedError());
    if (!this.transport) return Promise.reject(notConnected());
    const signal = o.signal;
    if (signal?.aborted) return Promise.reject(abortReason(signal));
    return new Promise<T>((resolve, reject) => {
      const timeoutMs = o.timeoutMs ?? this.opts.requestTimeoutMs ?? 10_000;
      const cleanup = () => {
        clearTimeout(timer);
        signal?.removeEventListener("abort", onAbort);
        const i = this.waiters.indexOf(w);
        if (i >= 0) this.waiters.splice(i, 1);
      };
      const onAbort = () => {
        cleanup();
        reject(abortReason(signal!));
      };
      const timer = setTimeout(() => {
        cleanup();
        reject(new BimipError({ code: 0, kind: "timeout", source: "connection", details: `no answer within ${timeoutMs} ms` }));
      }, timeoutMs);
      const w: Waiter = {
        route: ROUTE_OF[payload.case],
        refId: o.refId ?? "",
        match: o.match as ((p: Payload) => unknown) | undefined,
        barrier: o.barrier ? `bimip-barrier-${++this.barrierCounter}` : undefined,
        resolve: (v) => {
          cleanup();
          resolve(v as T);
        },
        reject: (e) => {
          cleanup();
          reject(e);
        },
      };
      signal?.addEventListener("abort", onAbort, { once: true });
      this.waiters.push(w);
      this.sendPayload(payload);
      if (w.barrier !== undefined) {
        this.sendPayload({ case: "pingpongMessage", value: { type: 1, status: 1, requestTime: BigInt(Date.now()), id: w.barrier } });
      }
    });
  }

  // ---- public API ---------------------------------------------------------------------

  /** Typed listener for an event's detail; returns a function that removes it. */
  on<K extends keyof BimipEventMap>(type: K, listener: (detail: BimipEventMap[K]) => void): () => void {
    const wrapped = (e: Event) => listener((e as CustomEvent<BimipEventMap[K]>).detail);
    this.addEventListener(type, wrapped);
    return () => this.removeEventListener(type, wrapped);
  }

  /**
   * The details of one event type as an async iterator, from the call on (until the client
   * ends, `signal` aborts or the loop stops). For "message" prefer messages(), which also holds
   * what came before the call.
   */
  events<K extends keyof BimipEventMap>(type: K, opts: { signal?: AbortSignal } = {}): AsyncIterableIterator<BimipEventMap[K]> {
    const queue: BimipEventMap[K][] = [];
    let waiting: ((r: IteratorResult<BimipEventMap[K]>) => void) | null = null;
    let done = false;
    const finish = () => {
      if (done) return;
      done = true;
      off();
      this.removeEventListener("close", onClose);
      opts.signal?.removeEventListener("abort", finish);
      waiting?.({ done: true, value: undefined });
      waiting = null;
    };
    const off = this.on(type, (d) => {
      if (waiting) {
        const w = waiting;
        waiting = null;
        w({ done: false, value: d });
      } else queue.push(d);
    });
    const onClose = () => {
      if (this.ended) finish();
    };
    this.addEventListener("close", onClose);
    opts.signal?.addEventListener("abort", finish, { once: true });
    if (opts.signal?.aborted || this.ended) finish();
    return {
      [Symbol.asyncIterator]() {
        return this;
      },
      next: () => {
        const d = queue.shift();
        if (d !== undefined) return Promise.resolve({ done: false, value: d });
        if (done) return Promise.resolve({ done: true, value: undefined });
        return new Promise((r) => (waiting = r));
      },
      return: () => {
        finish();
        return Promise.resolve({ done: true, value: undefined });
      },
    };
  }

  /** True while a connection is up. */
  get connected(): boolean {
    return this.transport !== null;
  }

  /** The chat requests still waiting for their VersionUpdate (message_id_local). */
  get pending(): string[] {
    return [...this.pendingSends.keys()];
  }

  /**
   * Sends a text to `to` (an EID). Resolves with the server's VersionUpdate (message id, chat id,
   * version); rejects with a BimipError for an ErrorMessage about it. The request is kept in the
   * store until its VersionUpdate comes: with reconnect on it goes again, with the same
   * message_id_local, in the next session, and a client built later with the same store sends it
   * again (CLI-2). A rejection of kind "closed" leaves it in the store. Aborting `signal` gives
   * the request up: it is not sent again and leaves the store (if the server had accepted it
   * already, it is delivered all the same).
   */
  sendText(to: string, text: string, opts: SendOptions = {}): Promise<SendResult> {
    return this.submit(
      {
        messageIdLocal: opts.messageIdLocal ?? newLocalId(),
        to,
        from: { ...this.session.identity },
        createdAt: Date.now(),
        text,
      },
      opts.signal,
    );
  }

  /**
   * Sends a media message (already uploaded; `media.url` is its CDN URL or id) to `to`. Resolves
   * with the VersionUpdate like sendText, and is kept and resent the same way.
   */
  sendMedia(to: string, media: MediaContent, opts: SendOptions = {}): Promise<SendResult> {
    const type = typeof media.type === "number" ? media.type : MEDIA_TYPES[media.type];
    if (type === undefined) return Promise.reject(new TypeError(`unknown media type ${String(media.type)}`));
    return this.submit({
      messageIdLocal: opts.messageIdLocal ?? newLocalId(),
      to,
      from: { ...this.session.identity },
      createdAt: Date.now(),
      media: { ...media, type },
    }, opts.signal);
  }

  /**
   * Acknowledges a received message as delivered (2) or read (3). Resolves with the server's
   * confirmation (ACK-5: the message's recorded state), rejects with the ErrorMessage.
   */
  ack(messageId: string, state: "delivered" | "read"): Promise<Receipt> {
    return new Promise<Receipt>((resolve, reject) => {
      const list = this.pendingAcks.get(messageId) ?? [];
      list.push({ resolve, reject });
      this.pendingAcks.set(messageId, list);
      const ok = this.sendPayload({
        case: "acknowledgmentRequest",
        value: { messageId, status: ACK_STATUS[state], timestamp: BigInt(Date.now()) },
      });
      if (!ok) {
        list.pop();
        reject(notConnected());
      }
    });
  }

  /** Incoming messages, in arrival order, each once (including those received before the call). */
  messages(): AsyncIterableIterator<ChatMessage> {
    const self = this;
    return {
      [Symbol.asyncIterator]() {
        return this;
      },
      next(): Promise<IteratorResult<ChatMessage>> {
        const m = self.inbox.shift();
        if (m) return Promise.resolve({ done: false, value: m });
        if (self.ended) return Promise.resolve({ done: true, value: undefined });
        return new Promise((r) => self.inboxWaiters.push(r));
      },
      return(): Promise<IteratorResult<ChatMessage>> {
        return Promise.resolve({ done: true, value: undefined });
      },
    };
  }

  // ---- awareness (SPEC 10) --------------------------------------------------------------

  /**
   * Sets this user's presence (AWR-3): "online" (clears a user-set status), "away", "busy" or
   * "do_not_disturb", for `ttlSeconds` (0 = until changed, AWR-5). The server does not answer a
   * change; this resolves once the server has handled it without an error (a ping sent behind it
   * is answered, ENV-14) and rejects with its ErrorMessage (400 invalid_field, 429 rate_limited:
   * at most 5 changes and intentions per second, AWR-18).
   */
  setPresence(status: Presence | number, opts: RequestOptions & { ttlSeconds?: number } = {}): Promise<void> {
    return this.request<void>(
      {
        case: "awarenessNotification",
        value: { status: presenceCode(status), ttl: opts.ttlSeconds ?? 0, timestamp: BigInt(Date.now()) },
      },
      { ...opts, barrier: true },
    );
  }

  /**
   * Signals an intention ("typing", "recording", "stopped") to the peer `to` (AWR-7); it reaches
   * the peer's online devices as an "intention" event. Resolves once handled (no answer on
   * success; an intention dropped for a block also resolves, AWR-8), rejects with the ErrorMessage.
   */
  setIntention(to: string, intention: IntentionKind | number, opts: RequestOptions & { ttlSeconds?: number } = {}): Promise<void> {
    return this.request<void>(
      {
        case: "awarenessNotification",
        value: { to: { eid: to }, awarenessIntention: intentionCode(intention), ttl: opts.ttlSeconds ?? 0, timestamp: BigInt(Date.now()) },
      },
      { ...opts, barrier: true },
    );
  }

  /** Asks for `eid`'s awareness (AwarenessRequest, AWR-13); status 0 when you may not see the user (AWR-14). */
  getAwareness(eid: string, opts: RequestOptions = {}): Promise<Awareness> {
    const id = ++this.awarenessCounter;
    const idText = id.toString();
    return this.request<Awareness>(
      { case: "awarenessRequest", value: { to: { eid }, awarenessIdentifier: id, timestamp: BigInt(Date.now()) } },
      {
        ...opts,
        refId: idText,
        match: (p) => (p.case === "awarenessResponse" && p.value.awarenessIdentifier === idText ? toAwareness(p.value) : undefined),
      },
    );
  }

  /**
   * Starts live awareness notifications about `eid` for this session (AwarenessSubscription,
   * AWR-15): they come as "awareness" events, the first being the user's current state when you
   * may see the user. Resolves on the server's answer (which never tells whether you may).
   * Subscriptions end with the session (AWR-16).
   */
  subscribeAwareness(eid: string, opts: RequestOptions = {}): Promise<void> {
    return this.awarenessSubscription(eid, 1, opts);
  }

  /** Stops the notifications subscribeAwareness started (AWR-16). */
  unsubscribeAwareness(eid: string, opts: RequestOptions = {}): Promise<void> {
    return this.awarenessSubscription(eid, 2, opts);
  }

  private awarenessSubscription(eid: string, action: number, opts: RequestOptions): Promise<void> {
    return this.request<true | Failed>(
      { case: "awarenessSubscription", value: { to: { eid }, type: 1, action, timestamp: BigInt(Date.now()) } },
      {
        ...opts,
        match: (p) =>
          p.case === "awarenessSubscription" && p.value.type === 2 && p.value.action === action && (p.value.to?.eid ?? "") === eid
            ? statusResult(p.value.status, "subscription_failed", "awareness subscription refused")
            : undefined,
      },
    ).then((v) => throwIfFailed<void>(v));
  }

  // ---- subscribers, blocking, visibility (SPEC 11-13) -----------------------------------

  /** Lets `eid` follow this user's awareness (SubscriberAddRequest, SUB-1, SUB-2). */
  addSubscriber(eid: string, opts: RequestOptions & { nickname?: string; group?: string } = {}): Promise<SubscriberResult> {
    return this.request<SubscriberResult | Failed>(
      {
        case: "subscriberAddRequest",
        value: { subscriber: { eid }, nickname: opts.nickname ?? "", group: opts.group ?? "", timestamp: BigInt(Date.now()) },
      },
      {
        ...opts,
        match: (p) => {
          if (p.case !== "subscriberAddResponse" || (p.value.subscriber?.eid ?? "") !== eid) return undefined;
          const v = p.value;
          if (v.status !== 1) return failed("subscriber_failed", v.message);
          return { subscriber: eid, subscriberResourceId: v.subscriberResourceId, status: v.status, message: v.message, timestamp: Number(v.timestamp) };
        },
      },
    ).then(throwIfFailed);
  }

  /** Removes `eid` as a subscriber (SubscriberRemove, SUB-6); succeeds also when it was none. */
  removeSubscriber(eid: string, opts: RequestOptions = {}): Promise<SubscriberResult> {
    return this.request<SubscriberResult | Failed>(
      { case: "subscriberRemove", value: { subscriber: { eid }, type: 1, timestamp: BigInt(Date.now()) } },
      {
        ...opts,
        match: (p) => {
          if (p.case !== "subscriberRemove" || p.value.type !== 2 || (p.value.subscriber?.eid ?? "") !== eid) return undefined;
          const v = p.value;
          if (v.status !== 1) return failed("subscriber_failed", v.message);
          return { subscriber: eid, subscriberResourceId: "", status: v.status, message: v.message, timestamp: Number(v.timestamp) };
        },
      },
    ).then(throwIfFailed);
  }

  /** Blocks `eid` (BlockSubscriber action 1, BLK-1): chat both ways is refused with 403 blocked (BLK-3). */
  block(eid: string, opts: RequestOptions = {}): Promise<void> {
    return this.blockSubscriber(eid, 1, opts);
  }

  /** Lifts a block of `eid` (BlockSubscriber action 2). */
  unblock(eid: string, opts: RequestOptions = {}): Promise<void> {
    return this.blockSubscriber(eid, 2, opts);
  }

  private blockSubscriber(eid: string, action: number, opts: RequestOptions): Promise<void> {
    return this.request<true | Failed>(
      { case: "blockSubscriber", value: { subscriber: { eid }, type: 1, action, timestamp: BigInt(Date.now()) } },
      {
        ...opts,
        match: (p) =>
          p.case === "blockSubscriber" && p.value.type === 2 && (p.value.subscriber?.eid ?? "") === eid && (p.value.action || 1) === action
            ? statusResult(p.value.status, "block_failed", p.value.message)
            : undefined,
      },
    ).then((v) => throwIfFailed<void>(v));
  }

  /**
   * Sets who may see this user's awareness and whether the location is shared
   * (AwarenessVisibility, VIS-1); an omitted setting is left as it is. Resolves with the
   * settings in force. getVisibility() reads them.
   */
  setVisibility(settings: { visibility?: Visibility; locationSharing?: boolean }, opts: RequestOptions = {}): Promise<VisibilitySettings> {
    const id = `vis-${++this.visibilityCounter}-${Date.now().toString(36)}`;
    const visibility = settings.visibility === undefined ? 0 : VISIBILITY_CODES[settings.visibility];
    if (visibility === undefined) return Promise.reject(new TypeError(`unknown visibility ${String(settings.visibility)}`));
    const locationSharing = settings.locationSharing === undefined ? 0 : settings.locationSharing ? 1 : 2;
    return this.request<VisibilitySettings | Failed>(
      { case: "awarenessVisibility", value: { id, type: 1, visibility, locationSharing, timestamp: BigInt(Date.now()) } },
      {
        ...opts,
        refId: id,
        match: (p) => {
          if (p.case !== "awarenessVisibility" || p.value.type !== 2 || p.value.id !== id) return undefined;
          const v = p.value;
          if (v.status !== 1) return failed("visibility_failed", v.message);
          return { visibility: VISIBILITY_NAMES[v.visibility] ?? "contacts", locationSharing: v.locationSharing === 1 };
        },
      },
    ).then(throwIfFailed);
  }

  /** The visibility settings in force (VIS-3: CONTACTS and OFF for a user who never set them). */
  getVisibility(opts: RequestOptions = {}): Promise<VisibilitySettings> {
    return this.setVisibility({}, opts);
  }

  // ---- location (SPEC 14) ---------------------------------------------------------------

  /**
   * Sends one live location fix (LocationStream, LOC-2) to `to`, or to every user allowed to see
   * this user's location when `to` is omitted. Needs location sharing ON (else 403 forbidden,
   * LOC-6). No answer on success: resolves once handled (as setPresence), rejects with the ErrorMessage.
   */
  shareLocation(
    fix: { latitude: number; longitude: number; altitude?: number; timestamp?: number; id?: string; to?: string },
    opts: RequestOptions = {},
  ): Promise<void> {
    return this.request<void>(
      {
        case: "locationStream",
        value: {
          id: fix.id ?? newLocalId(),
          to: fix.to ? { eid: fix.to } : undefined,
          latitude: fix.latitude,
          longitude: fix.longitude,
          altitude: fix.altitude ?? 0,
          timestamp: BigInt(fix.timestamp ?? Date.now()),
        },
      },
      { ...opts, barrier: true },
    );
  }

  // ---- token and session (SPEC 8, 9) ----------------------------------------------------

  /**
   * Exchanges the session's token for a fresh one (TokenRefreshRequest, TOK-8). The old token is
   * revoked and the session goes on, bound to the new one (TOK-9); the client uses the new token
   * for its reconnects and fires a "token" event so that the application can keep it.
   * Rejects with 503 unavailable when the server cannot sign tokens (TOK-10).
   */
  async refreshToken(opts: RequestOptions = {}): Promise<RefreshedToken> {
    const r = await this.request<RefreshedToken | Failed>(
      { case: "tokenRefreshRequest", value: { timestamp: BigInt(Date.now()) } },
      {
        ...opts,
        match: (p) => {
          if (p.case !== "tokenRefreshResponse") return undefined;
          if (p.value.status !== 1 || !p.value.token) return failed("refresh_failed", "the server did not refresh the token");
          return { token: p.value.token, expiresAt: Number(p.value.expiresAt) };
        },
      },
    ).then(throwIfFailed);
    this.token = r.token;
    this.session = { ...this.session, expiresAt: r.expiresAt };
    this.emit("token", r);
    return r;
  }

  /** Closes the connection (no reconnect). Pending sends are rejected (and stay in the store). */
  close(code = 1000, reason = ""): void {
    this.closedByUser = true;
    if (this.reconnectTimer) clearTimeout(this.reconnectTimer);
    const t = this.transport;
    this.transport = null;
    t?.close(code, reason);
    this.end(closedError("closed by the client"));
  }

  /**
   * Logs this device out (SPEC 9): resolves on the server's Logout RESPONSE (OUT-1), after which
   * the server closes with 1000 and the token is revoked (OUT-2); the client does not reconnect
   * (CLI-4). Rejects with the ErrorMessage for the Logout; the connection is closed either way.
   */
  async logout(opts: RequestOptions = {}): Promise<void> {
    if (!this.transport) {
      this.close();
      return;
    }
    const closed = new Promise<void>((r) => this.addEventListener("close", () => r(), { once: true }));
    const answered = this.request<true>(
      { case: "logout", value: { type: 1, timestamp: BigInt(Date.now()) } },
      { ...opts, match: (p) => (p.case === "logout" && p.value.type === 2 && p.value.status === 3 ? true : undefined) },
    );
    this.closedByUser = true; // after request(): no reconnect after the server's close
    try {
      await answered;
      // The server closes right behind the RESPONSE (OUT-1).
      await Promise.race([closed, new Promise((r) => setTimeout(r, opts.timeoutMs ?? 2000))]);
    } finally {
      this.close();
    }
  }
}

/** A non-SUCCESS status in a response stanza (no ErrorMessage): the request failed. */
interface Failed {
  readonly __failed: BimipError;
}
function failed(kind: string, details: string): Failed {
  return { __failed: new BimipError({ code: 0, kind, source: "server", details }) };
}
function statusResult(status: number, kind: string, details: string): Failed | true {
  return status === 1 ? true : failed(kind, details || `status ${status}`);
}
function throwIfFailed<T>(v: T | Failed | true): T {
  if (typeof v === "object" && v !== null && "__failed" in v) throw (v as Failed).__failed;
  return (v === true ? undefined : v) as T;
}

/** Connects and resolves once the server's Authenticate RESPONSE arrived. With a `store`, the
 * requests it holds for this device are sent again in the new session (CLI-2). */
export async function connect(url: string, opts: ConnectOptions): Promise<BimipClient> {
  const client = new BimipClient(url, opts);
  await client.restore();
  await client.open(false);
  return client;
}
