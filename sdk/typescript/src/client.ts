/**
 * BimipClient: one device's connection to a BIMIP server over WebSocket.
 *
 * - answers the server's pings (PING-3);
 * - sendText resolves with the VersionUpdate (CHAT-5) or rejects with the ErrorMessage for it;
 * - incoming ChatMessages are confirmed as QUE-4 says (receiver copy: 2 DELIVERED, sender copy:
 *   4 SENT), deduplicated by message_id (QUE-7) and handed to the application once, in the
 *   order the server sends them (version order per chat, CHAT-16);
 * - acknowledgment updates are deduplicated by (message_id, status) and, on the sender side,
 *   confirmed by echoing their status (QUE-4);
 * - optional reconnect with backoff (CLI-4..6) that resends unconfirmed texts with the same
 *   message_id_local (CLI-1, CLI-2).
 */
import { BimipError, fromClose, fromErrorMessage } from "./errors.js";
import { decodeStanza, encodeStanza, type Payload, type PayloadInit } from "./envelope.js";
import { openTransport, type Transport, type TransportOptions } from "./transport.js";
import type {
  AcknowledgmentResponse as PbAckResponse,
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
  mediaUrl?: string;
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

export type TokenSource = { token: string } | { getToken: () => string | Promise<string> };

export type ConnectOptions = TokenSource &
  TransportOptions & {
    /** Confirm received copies automatically (QUE-4; receiver copies as DELIVERED). Default true. */
    autoConfirm?: boolean;
    /** Reconnect after a lost connection (CLI-4..CLI-6). Default false. */
    reconnect?: boolean | ReconnectOptions;
    /** How long connect() waits for the upgrade and the Authenticate RESPONSE. Default 10000 ms. */
    connectTimeoutMs?: number;
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
  return {
    messageId: m.messageId,
    messageIdLocal: m.messageIdLocal,
    chatId: m.chatId,
    version: Number(m.version),
    from: ident(m.from),
    to: m.to.map((t) => t.eid),
    author: m.author,
    text: m.payload.case === "text" ? m.payload.value : undefined,
    mediaUrl: m.payload.case === "mediaUrl" ? m.payload.value : undefined,
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

let localCounter = 0;
function newLocalId(): string {
  const c = (globalThis as { crypto?: { randomUUID?: () => string } }).crypto;
  if (c?.randomUUID) return c.randomUUID();
  return `${Date.now().toString(36)}-${(localCounter++).toString(36)}-${Math.random().toString(36).slice(2)}`;
}

interface PendingSend {
  to: string;
  text: string;
  createdAt: bigint;
  resolve(r: SendResult): void;
  reject(e: BimipError): void;
}

interface PendingAck {
  resolve(r: Receipt): void;
  reject(e: BimipError): void;
}

/** Payloads of the client's events (CustomEvent.detail). */
export interface BimipEventMap {
  message: ChatMessage;
  receipt: Receipt;
  error: BimipError;
  close: { code: number; reason: string; reconnecting: boolean; error: BimipError };
  reconnect: SessionInfo;
}

/** Events: "message" (CustomEvent<ChatMessage>), "receipt" (CustomEvent<Receipt>),
 * "error" (CustomEvent<BimipError>), "close" (CustomEvent<{code, reason, reconnecting}>),
 * "reconnect" (CustomEvent<SessionInfo>). */
export class BimipClient extends EventTarget {
  /** From the Authenticate RESPONSE; defaults (SPEC §19) when a WebSocket server sent none (TRN-17). */
  session: SessionInfo = { identity: { eid: "", device: "" }, pingIntervalMs: 30_000, maxStanzaBytes: 65_536, expiresAt: 0 };
  private transport: Transport | null = null;
  private readonly pendingSends = new Map<string, PendingSend>();
  private readonly pendingAcks = new Map<string, PendingAck[]>();
  private readonly seenMessages = new Set<string>();
  private readonly seenReceipts = new Set<string>();
  private readonly inbox: ChatMessage[] = [];
  private inboxWaiters: Array<(m: IteratorResult<ChatMessage>) => void> = [];
  private closedByUser = false;
  private ended = false;
  private token = "";
  private sessionStart = 0;
  private backoffMs = 0;
  private reconnectTimer: ReturnType<typeof setTimeout> | null = null;
  private logoutWaiter: (() => void) | null = null;
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
  }

  // ---- connection ---------------------------------------------------------------------

  private async currentToken(fresh: boolean): Promise<string> {
    if ("token" in this.opts) return this.opts.token;
    if (fresh || !this.token) this.token = await this.opts.getToken();
    return this.token;
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
    const ro = this.opts.reconnect;
    // CLI-4: no reconnect after our own close/logout or 4409; CLI-5: 4401 needs a new token.
    let reconnecting = !!ro && !this.closedByUser && code !== 4409 && code !== 1000;
    if (code === 4401 && "token" in this.opts) reconnecting = false;
    this.dispatchEvent(new CustomEvent("close", { detail: { code, reason, reconnecting, error } }));
    if (this.logoutWaiter) this.logoutWaiter();
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
    for (const [, p] of this.pendingSends) p.reject(error);
    this.pendingSends.clear();
    for (const [, list] of this.pendingAcks) for (const p of list) p.reject(error);
    this.pendingAcks.clear();
    for (const w of this.inboxWaiters) w({ done: true, value: undefined });
    this.inboxWaiters = [];
  }

  private emitError(e: BimipError): void {
    this.dispatchEvent(new CustomEvent("error", { detail: e }));
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

  private onPayload(p: Payload): void {
    switch (p.case) {
      case "pingpongMessage": {
        const ping = p.value;
        if (ping.type !== 1) return; // a pong to a ping of ours: nothing to do
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
        pending.resolve({
          messageId: v.messageId,
          messageIdLocal: v.messageIdLocal,
          chatId: v.chatId,
          version: Number(v.version),
          timestamp: Number(v.timestamp),
        });
        return;
      }
      case "chatMessage": {
        const m = p.value;
        const isNew = !this.seenMessages.has(m.messageId);
        this.seenMessages.add(m.messageId);
        if (isNew) this.deliver(toChatMessage(m));
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
        const key = `${r.messageId}\u0000${r.status}`;
        const isNew = !this.seenReceipts.has(key);
        this.seenReceipts.add(key);
        if (isNew) this.dispatchEvent(new CustomEvent("receipt", { detail: toReceipt(r) }));
        // QUE-4: a sender device confirms an update by echoing its status; a receiver's
        // sibling device does not (a later item confirms it).
        const senderSide = (r.from?.eid ?? "") !== (r.to?.eid ?? "");
        if (senderSide && this.opts.autoConfirm !== false) this.confirm(r.messageId, r.status);
        return;
      }
      case "errorMessage": {
        const err = fromErrorMessage(p.value);
        this.lastError = err;
        if (err.route === "14" && this.pendingSends.has(err.refId)) {
          const pending = this.pendingSends.get(err.refId)!;
          // 5xx (queue_full, internal, ...) may be retried by the application; the request is dropped here.
          this.pendingSends.delete(err.refId);
          pending.reject(err);
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
        this.emitError(err);
        return;
      }
      case "logout":
        return; // the close that follows ends the session
      case "authenticate":
        return; // TRN-17: accepted, the session was set up in open()
      default:
        return; // CLI-7: a stanza this client does not use is ignored
    }
  }

  private deliver(m: ChatMessage): void {
    this.dispatchEvent(new CustomEvent("message", { detail: m }));
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

  private resendPending(): void {
    // CLI-1/CLI-2: a text without its VersionUpdate goes again with the same message_id_local and content.
    for (const [local, p] of this.pendingSends) this.sendTextRequest(local, p);
  }

  private sendTextRequest(local: string, p: PendingSend): void {
    this.sendPayload({
      case: "textPayloadRequest",
      value: { to: [{ eid: p.to }], content: p.text, messageIdLocal: local, createdAt: p.createdAt },
    });
  }

  // ---- public API ---------------------------------------------------------------------

  /** Typed listener for an event's detail; returns a function that removes it. */
  on<K extends keyof BimipEventMap>(type: K, listener: (detail: BimipEventMap[K]) => void): () => void {
    const wrapped = (e: Event) => listener((e as CustomEvent<BimipEventMap[K]>).detail);
    this.addEventListener(type, wrapped);
    return () => this.removeEventListener(type, wrapped);
  }

  /** True while a connection is up. */
  get connected(): boolean {
    return this.transport !== null;
  }

  /**
   * Sends a text to `to` (an EID). Resolves with the server's VersionUpdate (message id, chat id,
   * version); rejects with a BimipError for an ErrorMessage about it. With reconnect on, a text
   * whose VersionUpdate did not come before the connection ended is sent again with the same
   * message_id_local in the next session.
   */
  sendText(to: string, text: string, opts: { messageIdLocal?: string } = {}): Promise<SendResult> {
    if (this.ended || this.closedByUser) {
      return Promise.reject(new BimipError({ code: 0, kind: "closed", source: "connection", details: "client is closed" }));
    }
    const local = opts.messageIdLocal ?? newLocalId();
    return new Promise<SendResult>((resolve, reject) => {
      const p: PendingSend = { to, text, createdAt: BigInt(Date.now()), resolve, reject };
      this.pendingSends.set(local, p);
      if (!this.transport && !this.opts.reconnect) {
        this.pendingSends.delete(local);
        reject(new BimipError({ code: 0, kind: "not_connected", source: "connection" }));
        return;
      }
      this.sendTextRequest(local, p);
    });
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
        reject(new BimipError({ code: 0, kind: "not_connected", source: "connection" }));
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

  /** Closes the connection (no reconnect). Pending sends are rejected. */
  close(code = 1000, reason = ""): void {
    this.closedByUser = true;
    if (this.reconnectTimer) clearTimeout(this.reconnectTimer);
    const t = this.transport;
    this.transport = null;
    t?.close(code, reason);
    this.end(new BimipError({ code: 0, kind: "closed", source: "connection", details: "closed by the client" }));
  }

  /** Sends Logout (SPEC §9) and waits for the server's close (at most `timeoutMs`). */
  async logout(timeoutMs = 5000): Promise<void> {
    this.closedByUser = true;
    if (!this.transport) return this.close();
    const done = new Promise<void>((r) => (this.logoutWaiter = r));
    this.sendPayload({ case: "logout", value: { type: 1, timestamp: BigInt(Date.now()) } });
    await Promise.race([done, new Promise((r) => setTimeout(r, timeoutMs))]);
    this.close();
  }
}

/** Connects and resolves once the server's Authenticate RESPONSE arrived. */
export async function connect(url: string, opts: ConnectOptions): Promise<BimipClient> {
  const client = new BimipClient(url, opts);
  await client.open(false);
  return client;
}
