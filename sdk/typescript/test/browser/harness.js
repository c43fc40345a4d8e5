// Shared pieces of the real-browser tests: headless Chromium (puppeteer-core, no browser
// download), a loopback static server for the built SDK (dist/) and @bufbuild/protobuf behind an
// import map, and progress lines on stderr so that a hang shows where it happened.
// Chromium is required: CHROMIUM_PATH, or /usr/bin/chromium (Debian: apt-get install -y chromium).
import { createServer } from "node:http";
import { createRequire } from "node:module";
import { existsSync, mkdtempSync, readFileSync, rmSync, statSync } from "node:fs";
import { dirname, extname, join, normalize, resolve } from "node:path";
import { tmpdir } from "node:os";
import { fileURLToPath } from "node:url";
import { before, after } from "node:test";
import puppeteer from "puppeteer-core";
import { startServer } from "../support/server.js";

const HERE = dirname(fileURLToPath(import.meta.url));
export const ROOT = resolve(HERE, "../..");
export const REPO = resolve(ROOT, "../..");
export const DIST = join(ROOT, "dist");
export const OUT = join(ROOT, "test-output");
// resolves .../@bufbuild/protobuf/dist/cjs/index.js; the package root is three levels up
export const PROTOBUF = resolve(dirname(createRequire(import.meta.url).resolve("@bufbuild/protobuf")), "../..");
export const CHROMIUM = process.env.CHROMIUM_PATH ?? "/usr/bin/chromium";

/** A progress logger for one test file: `[name +123 ms] what` on stderr. */
export function stepper(name) {
  const t0 = Date.now();
  return (what) => process.stderr.write(`[${name} +${Date.now() - t0} ms] ${what}\n`);
}

export const IMPORT_MAP = {
  imports: {
    "@bufbuild/protobuf": "/pb/dist/esm/index.js",
    "@bufbuild/protobuf/codegenv2": "/pb/dist/esm/codegenv2/index.js",
    "@bufbuild/protobuf/wire": "/pb/dist/esm/wire/index.js",
    "@bufbuild/protobuf/reflect": "/pb/dist/esm/reflect/index.js",
  },
};

/** The test page: loads the SDK as `window.bimip` and sets `window.sdkReady`. */
export const PAGE = `<!doctype html>
<html><head><meta charset="utf-8"><title>bimip browser test</title>
<script type="importmap">${JSON.stringify(IMPORT_MAP)}</script>
<style>body{font:14px sans-serif;margin:12px} li.in{color:#064} li.out{color:#036} li.note{color:#a40}</style>
</head><body><h3 id="who">bimip</h3><ul id="log"></ul>
<script type="module">
  import * as bimip from "/sdk/index.js";
  window.bimip = bimip;
  window.sdkReady = true;
</script></body></html>`;

const TYPES = { ".js": "text/javascript", ".map": "application/json", ".html": "text/html" };

/** Serves PAGE at / and the built SDK under /sdk/, @bufbuild/protobuf under /pb/ (loopback, free port). */
export function serveStatic() {
  const http = createServer((req, res) => {
    const path = decodeURIComponent(new URL(req.url, "http://x").pathname);
    let file = null;
    if (path === "/favicon.ico") {
      res.writeHead(204);
      res.end();
      return;
    }
    if (path === "/" || path === "/index.html") {
      res.writeHead(200, { "content-type": "text/html" });
      res.end(PAGE);
      return;
    }
    if (path.startsWith("/sdk/")) file = join(DIST, normalize(path.slice(5)));
    else if (path.startsWith("/pb/")) file = join(PROTOBUF, normalize(path.slice(4)));
    if (!file || !(file.startsWith(DIST) || file.startsWith(PROTOBUF)) || !existsSync(file) || !statSync(file).isFile()) {
      res.writeHead(404);
      res.end();
      return;
    }
    res.writeHead(200, { "content-type": TYPES[extname(file)] ?? "application/octet-stream" });
    res.end(readFileSync(file));
  });
  return new Promise((r) => http.listen(0, "127.0.0.1", () => r(http)));
}

/** Checks the prerequisites (Chromium, dist/) and launches headless Chromium with a throwaway profile. */
export async function launchBrowser() {
  if (!existsSync(CHROMIUM)) {
    throw new Error(`Chromium not found at ${CHROMIUM}: install it (apt-get install -y chromium) or set CHROMIUM_PATH`);
  }
  if (!existsSync(join(DIST, "index.js"))) throw new Error("dist/index.js missing: run `npm run build` first");
  const profile = mkdtempSync(join(tmpdir(), "bimip-chromium-"));
  const browser = await puppeteer.launch({
    protocolTimeout: 30_000,
    executablePath: CHROMIUM,
    headless: true,
    userDataDir: profile,
    args: [
      "--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
      "--disable-background-networking", "--disable-component-update", "--disable-sync",
      // several pages are live at once: keep the ones in the background running and paintable
      "--disable-renderer-backgrounding", "--disable-background-timer-throttling", "--disable-backgrounding-occluded-windows",
    ],
  });
  return {
    browser,
    async close() {
      await browser.close().catch(() => {});
      rmSync(profile, { recursive: true, force: true });
    },
  };
}

/** Collects a page's uncaught exceptions and console errors. */
export function watchErrors(page) {
  const errors = [];
  page.on("pageerror", (e) => errors.push(String(e)));
  page.on("console", (m) => {
    if (m.type() === "error") errors.push(`${m.text()} ${m.location()?.url ?? ""}`);
  });
  return errors;
}

/**
 * Chromium, the reference server and the static page server for one test file: started before its tests, handed
 * to `assign({ server, http, browser })`, and stopped after them.
 */
export function withBrowserAndServer(step, assign) {
  let chromium, http, server;
  before(async () => {
    step("launching Chromium");
    chromium = await launchBrowser();
    step("Chromium up");
    server = await startServer();
    http = await serveStatic();
    assign({ server, http, browser: chromium.browser });
  });
  after(async () => {
    await chromium?.close();
    http?.close();
    await server?.stop();
  });
}
