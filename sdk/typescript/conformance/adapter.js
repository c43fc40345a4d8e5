#!/usr/bin/env node
// Client-mode adapter for the BIMIP conformance suite (conformance/README.md, "Client mode"):
//   bimip-conform client --adapter 'node sdk/typescript/conformance/adapter.js'
// Reads JSON-line commands on stdin, drives the SDK (dist/, run `npm run build` first) and writes
// JSON-line events on stdout. ws:// and tcp:// (no TLS).
import { createInterface } from "node:readline";
import { connect } from "../dist/index.js";

const out = (obj) => process.stdout.write(JSON.stringify(obj) + "\n");
const log = (...a) => process.stderr.write(`adapter: ${a.join(" ")}\n`);

let client = null;
let tcp = false;
const refs = new Map(); // message_id_local -> ref

function wire(c) {
  c.on("message", (m) =>
    out({ event: "message", message_id: m.messageId, chat_id: m.chatId, version: m.version, from: m.from.eid, text: m.text ?? null }),
  );
  c.on("receipt", (r) => out({ event: "acknowledged", message_id: r.messageId, chat_id: r.chatId, version: r.version, status: r.status }));
  c.on("error", (e) => {
    if (e.source === "server") {
      out({ event: "error", code: e.code, kind: e.kind, blame: e.isClientFault ? "client" : e.retryable ? "server" : "unknown", ref: refs.get(e.refId) ?? null });
    } else if (e.source === "protocol" && e.kind !== "unknown_route") {
      // CLI-7: a route of a later version is ignored; undecodable bytes are reported
      out({ event: "bad_stanza", reason: `${e.kind}: ${e.details}` });
    } else log("error", e.kind, e.details);
  });
  c.on("close", (d) => out({ event: "closed", code: tcp ? null : d.code ?? null })); // TCP has no close codes
  c.on("reconnect", () => out({ event: "connected" }));
}

async function handle(cmd) {
  switch (cmd.cmd) {
    case "connect": {
      if (!/^(wss?|tcp):\/\//.test(cmd.url ?? "")) return out({ event: "unsupported", cmd: cmd.cmd });
      tcp = cmd.url.startsWith("tcp://");
      try {
        client = await connect(cmd.url, { token: cmd.token, reconnect: true });
        wire(client);
        out({ event: "connected" });
      } catch (e) {
        out({ event: "connect_failed", reason: `${e.kind ?? ""} ${e.message ?? e}` });
      }
      return;
    }
    case "send_text": {
      if (!client) return out({ event: "error", code: 0, kind: "not_connected", blame: "client", ref: cmd.ref ?? null });
      const local = `${cmd.ref ?? "r"}-${Date.now().toString(36)}-${Math.random().toString(36).slice(2, 8)}`;
      refs.set(local, cmd.ref ?? null);
      client.sendText(cmd.to, cmd.text, { messageIdLocal: local }).then(
        (r) => out({ event: "sent", ref: cmd.ref ?? null, message_id: r.messageId, chat_id: r.chatId, version: r.version }),
        (e) => {
          if (e.source !== "server") log("send_text", cmd.ref, e.kind);
          else out({ event: "error", code: e.code, kind: e.kind, blame: e.isClientFault ? "client" : e.retryable ? "server" : "unknown", ref: cmd.ref ?? null });
        },
      );
      return;
    }
    case "ack": {
      if (!client) return;
      client.ack(cmd.message_id, cmd.status === 3 ? "read" : "delivered").catch((e) => log("ack", e.kind));
      return;
    }
    case "close": {
      if (client) client.close();
      client = null;
      out({ event: "closed", code: null });
      return;
    }
    case "quit":
      process.exit(0);
    default:
      out({ event: "unsupported", cmd: cmd.cmd ?? null });
  }
}

out({ event: "ready", name: "bimip (TypeScript SDK)", version: "0.1.0" });
const rl = createInterface({ input: process.stdin });
rl.on("line", (line) => {
  if (!line.trim()) return;
  let cmd;
  try {
    cmd = JSON.parse(line);
  } catch {
    return out({ event: "unsupported", cmd: null });
  }
  handle(cmd).catch((e) => log("command failed", String(e)));
});
rl.on("close", () => process.exit(0));
