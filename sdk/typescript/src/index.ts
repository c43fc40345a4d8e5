export { connect, BimipClient } from "./client.js";
export type {
  ChatMessage,
  Receipt,
  SendResult,
  SessionInfo,
  Identity,
  ConnectOptions,
  ReconnectOptions,
  TokenSource,
  BimipEventMap,
  RequestOptions,
  SendOptions,
  Presence,
  IntentionKind,
  Intention,
  Awareness,
  LocationFix,
  PushMessage,
  SubscriberResult,
  Visibility,
  VisibilitySettings,
  RefreshedToken,
} from "./client.js";
export { MemoryStore, LocalStorageStore } from "./store.js";
export type { PendingStore, PendingRequest, MediaContent, MediaType, StorageLike } from "./store.js";
export { BoundedSet } from "./bounded-set.js";
export { BimipError, ERROR_KINDS, fromErrorMessage, fromHttpRefusal, fromClose, kindOfCloseCode } from "./errors.js";
export type { ErrorKind, ErrorSource } from "./errors.js";
export { ROUTE_OF, CASE_OF_ROUTE, envelope, encodeStanza, decodeStanza } from "./envelope.js";
export type { Payload, PayloadInit, Decoded } from "./envelope.js";
export type { PayloadCase } from "./envelope.js";
export { SUBPROTOCOL } from "./transport.js";
export * as pb from "./gen/bimip_pb.js";
