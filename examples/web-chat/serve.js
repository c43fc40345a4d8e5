#!/usr/bin/env node
// The web chat example's development server (Node >= 20, no dependencies). It serves
//   /                the page (index.html, app.js, style.css of this directory),
//   /sdk/...         the TypeScript SDK's build (sdk/typescript/dist),
//   /pb/...          its one dependency, @bufbuild/protobuf (ESM build),
//   /config.json     the WebSocket URL of the BIMIP server,
//   POST /token      {"eid", "device"} -> {"token"}: runs `bimip token` with the server's development key.
// Development only: anybody who can reach it can sign in as anybody. It listens on loopback.
// A real application's backend authenticates its users and mints tokens through the server's
// backend API (proto/bimip_admin.proto) or with its own key.
//
// Environment:
//   PORT            HTTP port (default 8080; 0 picks a free one)
//   BIMIP_URL       the server's WebSocket URL, as the browser reaches it (default ws://127.0.0.1:7420/ws)
//   BIMIP_DATA_DIR  the data directory of `bimip serve`, which holds the development key (default ./bimip-data)
//   BIMIP_BIN       the bimip binary (default: the repository's cargo build, release then debug, else `bimip` on PATH)
//   SDK_BUILD       0: serve sdk/typescript/dist as it is (default: build it when missing or older than src/)
import { execFile, execFileSync, spawnSync } from "node:child_process";
import { existsSync, readFileSync, readdirSync, statSync } from "node:fs";
import { createServer } from "node:http";
import { dirname, extname, join, resolve, sep } from "node:path";
import { fileURLToPath } from "node:url";

const HERE = dirname(fileURLToPath(import.meta.url));
const REPO = resolve(HERE, "../..");
const SDK = join(REPO, "sdk/typescript");
const DIST = join(SDK, "dist");
const PROTOBUF = join(SDK, "node_modules/@bufbuild/protobuf");

const PORT = Number(process.env.PORT ?? 8080);
const WS_URL = process.env.BIMIP_URL ?? "ws://127.0.0.1:7420/ws";
const DATA_DIR = resolve(process.env.BIMIP_DATA_DIR ?? "bimip-data");
const TARGET = process.env.CARGO_TARGET_DIR ? resolve(process.env.CARGO_TARGET_DIR) : join(REPO, "target");
const BIMIP_BIN =
  process.env.BIMIP_BIN ?? [join(TARGET, "release/bimip"), join(TARGET, "debug/bimip")].find((f) => existsSync(f)) ?? "bimip";

// The page needs the SDK's build: make it when it is missing or older than the SDK's sources.
const newest = (dir) =>
  readdirSync(dir, { withFileTypes: true }).reduce((t, e) => {
    const p = join(dir, e.name);
    return Math.max(t, e.isDirectory() ? newest(p) : statSync(p).mtimeMs);
  }, 0);
const built = existsSync(join(DIST, "index.js")) ? statSync(join(DIST, "index.js")).mtimeMs : 0;
if (process.env.SDK_BUILD !== "0" && (!existsSync(PROTOBUF) || built < newest(join(SDK, "src")))) {
  const npm = (...args) => {
    console.log(`building the SDK: npm ${args.join(" ")} (in ${SDK})`);
    const r = spawnSync("npm", args, { cwd: SDK, stdio: "inherit", shell: process.platform === "win32" });
    if (r.status !== 0) {
      console.error(`\`npm ${args.join(" ")}\` failed in ${SDK}`);
      process.exit(1);
    }
  };
  if (!existsSync(PROTOBUF)) npm("ci", "--no-audit", "--no-fund");
  npm("run", "build");
}

const TYPES = { ".html": "text/html; charset=utf-8", ".js": "text/javascript", ".css": "text/css", ".map": "application/json" };
const PAGE_FILES = new Set(["/index.html", "/app.js", "/style.css"]);

// A user is an EID (alice@example.com), a device a short name.
const EID = /^[A-Za-z0-9._+-]{1,64}@[A-Za-z0-9.-]{1,190}$/;
const DEVICE = /^[A-Za-z0-9._-]{1,64}$/;

function send(res, status, type, body) {
  res.writeHead(status, { "content-type": type, "cache-control": "no-store" });
  res.end(body);
}

/** A file under `root` (never outside it), or null. */
function fileUnder(root, rel) {
  const file = resolve(root, `.${sep}${rel}`);
  if (!file.startsWith(root + sep) || !existsSync(file) || !statSync(file).isFile()) return null;
  return file;
}

function mintToken(eid, device) {
  return new Promise((ok, fail) => {
    execFile(BIMIP_BIN, ["token", "--eid", eid, "--device", device, "--data-dir", DATA_DIR], { timeout: 10_000 }, (err, stdout, stderr) => {
      if (err) fail(new Error(`${BIMIP_BIN} token failed: ${String(stderr || err.message).trim()}`));
      else ok(stdout.trim());
    });
  });
}

async function readJson(req) {
  let body = "";
  for await (const chunk of req) {
    body += chunk;
    if (body.length > 4096) throw new Error("body too large");
  }
  return JSON.parse(body);
}

const server = createServer(async (req, res) => {
  try {
    const path = decodeURIComponent(new URL(req.url, "http://localhost").pathname);
    if (req.method === "POST" && path === "/token") {
      const { eid, device } = await readJson(req).catch(() => ({}));
      if (typeof eid !== "string" || !EID.test(eid) || typeof device !== "string" || !DEVICE.test(device)) {
        return send(res, 400, "text/plain", "name: name@domain (letters, digits, . _ + -); device: letters, digits, . _ -");
      }
      const token = await mintToken(eid, device);
      return send(res, 200, "application/json", JSON.stringify({ token }));
    }
    if (req.method !== "GET" && req.method !== "HEAD") return send(res, 405, "text/plain", "method not allowed");
    if (path === "/config.json") return send(res, 200, "application/json", JSON.stringify({ url: WS_URL }));
    let file = null;
    if (path === "/" || PAGE_FILES.has(path)) file = join(HERE, path === "/" ? "index.html" : path.slice(1));
    else if (path.startsWith("/sdk/")) file = fileUnder(DIST, path.slice(5));
    else if (path.startsWith("/pb/")) file = fileUnder(PROTOBUF, path.slice(4));
    if (!file) return send(res, 404, "text/plain", "not found");
    return send(res, 200, TYPES[extname(file)] ?? "application/octet-stream", readFileSync(file));
  } catch (e) {
    if (e instanceof URIError) return send(res, 400, "text/plain", "bad path");
    console.error(String(e.message ?? e));
    return send(res, 500, "text/plain", String(e.message ?? e));
  }
});

server.listen(PORT, "127.0.0.1", () => {
  const { port } = server.address();
  console.log(`web chat: http://127.0.0.1:${port}/`);
  console.log(`  BIMIP server ${WS_URL}, tokens from \`${BIMIP_BIN} token --data-dir ${DATA_DIR}\``);
  try {
    execFileSync(BIMIP_BIN, ["--version"], { stdio: "ignore", timeout: 10_000 });
  } catch {
    console.log(`  warning: cannot run ${BIMIP_BIN}: build it (cargo build --release) or set BIMIP_BIN`);
  }
  if (!existsSync(join(DATA_DIR, "dev-ed25519.pem"))) {
    console.log(`  warning: no development key in ${DATA_DIR} yet: start \`bimip serve\` in this directory, or set BIMIP_DATA_DIR`);
  }
});
for (const sig of ["SIGINT", "SIGTERM"]) process.on(sig, () => process.exit(0));
