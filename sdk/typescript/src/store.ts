/**
 * Pending chat requests (CLI-2): a text or media message is kept until its VersionUpdate comes,
 * across reconnections and restarts of the application. A `PendingStore` holds them; a client
 * built with a store that holds requests of its device sends them again on connect, with their
 * original message_id_local and content (CLI-1).
 *
 * Stores here work in every environment: `MemoryStore` (the default; lost when the process ends)
 * and `LocalStorageStore` (browsers). `FileStore` (Node, a directory) is in `./file-store.js` so
 * that browsers never load `node:fs`.
 */

/** A media message's content (MediaPayloadRequest, SPEC 15.1). */
export interface MediaContent {
  /** The media's CDN URL or id (`cdn_url_id`, 1..=2048 bytes); the receivers see it as `mediaUrl`. */
  url: string;
  /** 1 image, 2 audio, 3 video, 4 file. */
  type: MediaType | number;
  caption?: string;
  thumbnailUrl?: string;
  sizeBytes?: number;
  /** Empty, or the chat_id the server uses for this pair. */
  chatId?: string;
}

export type MediaType = "image" | "audio" | "video" | "file";

/** One chat request waiting for its VersionUpdate. Plain JSON data. */
export interface PendingRequest {
  messageIdLocal: string;
  /** Receiver EID. */
  to: string;
  /** The device that made the request: only a session of the same eid and device sends it again. */
  from: { eid: string; device: string };
  /** ms; the request's created_at. */
  createdAt: number;
  text?: string;
  media?: MediaContent & { type: number };
}

type MaybePromise<T> = T | Promise<T>;

/** Where a client keeps its pending chat requests. Every method may be synchronous or return a promise. */
export interface PendingStore {
  /** Every request held, in the order they were put. */
  list(): MaybePromise<PendingRequest[]>;
  get(messageIdLocal: string): MaybePromise<PendingRequest | undefined>;
  /** Stores (or replaces) a request. The client sends the request only after this completes. */
  put(request: PendingRequest): MaybePromise<void>;
  delete(messageIdLocal: string): MaybePromise<void>;
}

/** Keeps requests in this process's memory. Share one instance between clients to hand requests over. */
export class MemoryStore implements PendingStore {
  private readonly items = new Map<string, PendingRequest>();
  list(): PendingRequest[] {
    return [...this.items.values()].map((r) => structuredClone(r));
  }
  get(id: string): PendingRequest | undefined {
    const r = this.items.get(id);
    return r && structuredClone(r);
  }
  put(r: PendingRequest): void {
    this.items.set(r.messageIdLocal, structuredClone(r));
  }
  delete(id: string): void {
    this.items.delete(id);
  }
}

/** The part of the Web Storage API the LocalStorageStore uses. */
export interface StorageLike {
  readonly length: number;
  key(index: number): string | null;
  getItem(key: string): string | null;
  setItem(key: string, value: string): void;
  removeItem(key: string): void;
}

/**
 * Keeps requests in `localStorage` (or any Web Storage), one key per request:
 * `${prefix}${message_id_local}`. Use a distinct prefix per account if several share a browser profile.
 */
export class LocalStorageStore implements PendingStore {
  private readonly storage: StorageLike;
  constructor(
    private readonly prefix = "bimip.pending.",
    storage?: StorageLike,
  ) {
    const s = storage ?? (globalThis as { localStorage?: StorageLike }).localStorage;
    if (!s) throw new TypeError("LocalStorageStore: no localStorage in this environment (pass a Storage)");
    this.storage = s;
  }
  list(): PendingRequest[] {
    const out: PendingRequest[] = [];
    for (let i = 0; i < this.storage.length; i++) {
      const k = this.storage.key(i);
      if (k === null || !k.startsWith(this.prefix)) continue;
      const r = parse(this.storage.getItem(k));
      if (r) out.push(r);
    }
    return sortBySeq(out);
  }
  get(id: string): PendingRequest | undefined {
    return parse(this.storage.getItem(this.prefix + id)) ?? undefined;
  }
  put(r: PendingRequest): void {
    this.storage.setItem(this.prefix + r.messageIdLocal, JSON.stringify({ ...r, seq: nextSeq(r) }));
  }
  delete(id: string): void {
    this.storage.removeItem(this.prefix + id);
  }
}

// Stores without an ordered listing keep a sequence number so that list() gives put order.
let seqCounter = 0;
/** @internal */
export function nextSeq(_r: PendingRequest): number {
  // ms * 1000 + a counter: increasing across restarts of the application and within one ms.
  seqCounter = (seqCounter + 1) % 1000;
  return Date.now() * 1000 + seqCounter;
}
/** @internal */
export function sortBySeq(list: PendingRequest[]): PendingRequest[] {
  const seq = (r: PendingRequest) => (r as { seq?: number }).seq ?? 0;
  return list.sort((a, b) => seq(a) - seq(b) || a.createdAt - b.createdAt).map((r) => {
    const { seq: _s, ...rest } = r as PendingRequest & { seq?: number };
    return rest;
  });
}
/** @internal */
export function parse(text: string | null): PendingRequest | null {
  if (!text) return null;
  try {
    const r = JSON.parse(text) as PendingRequest;
    return typeof r?.messageIdLocal === "string" && typeof r.to === "string" ? r : null;
  } catch {
    return null;
  }
}
