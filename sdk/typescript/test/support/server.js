// Test helper: starts the reference server ($BIMIP_BIN, else the repository's cargo build:
// $CARGO_TARGET_DIR/debug/bimip or target/debug/bimip; run `cargo build --bins` first) on loopback
// with free ports, and mints tokens with its development key.
//
// Options: `config` (TOML settings, same keys as the flags, e.g. "[limits]\nping_interval_ms = 300"),
// `store` ("memory", the default, or "durable": DATA_DIR/queue survives a restart, SES-8).
// The handle can `kill()` the server (SIGKILL by default: a crash), `start()` it again on the same
// ports and data directory, `restart()` (both) and `stop()` it for good (removes the data directory).
import { spawn, execFileSync } from "node:child_process";
import { mkdtempSync, rmSync, existsSync, writeFileSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { fileURLToPath } from "node:url";

const REPO = fileURLToPath(new URL("../../../../", import.meta.url));
/** Where cargo put the repository's binaries (debug build). */
export const CARGO_BIN_DIR = join(process.env.CARGO_TARGET_DIR ?? join(REPO, "target"), "debug");
export const BIMIP_BIN = process.env.BIMIP_BIN ?? join(CARGO_BIN_DIR, "bimip");

// Unref'd: a pending wait must not keep the test process alive after its tests end.
const sleep = (ms) => new Promise((r) => setTimeout(r, ms).unref());

/** Spawns `bimip serve`; resolves with the child and its printed addresses once it is ready. */
async function spawnServer(dir, ws, tcp, store, extra) {
  const child = spawn(
    BIMIP_BIN,
    ["serve", "--data-dir", dir, "--ws", ws, "--tcp", tcp, "--no-admin", "--grpc", "127.0.0.1:0", "--store", store, ...extra],
    { stdio: ["ignore", "pipe", "pipe"] },
  );
  let out = "";
  let err = "";
  child.stderr.on("data", (d) => (err += d));
  try {
    const url = await new Promise((resolve, reject) => {
      const timer = setTimeout(() => reject(new Error(`server did not start:\n${out}\n${err}`)), 10_000);
      child.on("exit", (code) => {
        clearTimeout(timer);
        reject(new Error(`server exited with ${code}:\n${out}\n${err}`));
      });
      const check = () => {
        const m = /WebSocket\s+(ws:\/\/\S+)/.exec(out);
        if (m && /ready/.test(out + err)) {
          clearTimeout(timer);
          resolve(m[1]);
        }
      };
      child.stdout.on("data", (d) => {
        out += d;
        check();
      });
      child.stderr.on("data", check);
    });
    const tcpUrl = /TCP\s+(tcp:\/\/\S+)/.exec(out)?.[1];
    return { child, url, tcpUrl };
  } catch (e) {
    if (child.exitCode === null) child.kill("SIGKILL");
    throw e;
  }
}

export async function startServer({ config, store = "memory" } = {}) {
  if (!existsSync(BIMIP_BIN)) throw new Error(`reference server binary not found at ${BIMIP_BIN} (set BIMIP_BIN)`);
  const dir = mkdtempSync(join(tmpdir(), "bimip-sdk-test-"));
  const extra = [];
  if (config) {
    writeFileSync(join(dir, "test-config.toml"), config);
    extra.push("--config", join(dir, "test-config.toml"));
  }
  let cur = await spawnServer(dir, "127.0.0.1:0", "127.0.0.1:0", store, extra);
  // wait until the development key exists
  for (let i = 0; i < 100 && !existsSync(join(dir, "dev-ed25519.pem")); i++) await sleep(50);
  const wsAddr = new URL(cur.url).host;
  const tcpAddr = cur.tcpUrl ? new URL(cur.tcpUrl).host : "127.0.0.1:0";

  const exited = (child) => (child.exitCode !== null || child.signalCode !== null ? Promise.resolve() : new Promise((r) => child.once("exit", r)));

  const handle = {
    url: cur.url,
    tcpUrl: cur.tcpUrl,
    dir,
    store,
    /** The running server's process id (null after kill). */
    get pid() {
      return cur?.child.exitCode === null && cur?.child.signalCode === null ? cur.child.pid : null;
    },
    token(eid, device, extra = []) {
      return execFileSync(BIMIP_BIN, ["token", "--eid", eid, "--device", device, "--data-dir", dir, ...extra], { encoding: "utf8" }).trim();
    },
    /** Kills the server (default SIGKILL: no clean shutdown); the data directory stays. */
    async kill(signal = "SIGKILL") {
      if (!cur) return;
      const { child } = cur;
      if (child.exitCode === null && child.signalCode === null) {
        const done = exited(child);
        child.kill(signal);
        await Promise.race([done, sleep(5000)]);
        if (child.exitCode === null && child.signalCode === null) {
          child.kill("SIGKILL");
          await exited(child);
        }
      }
      cur = null;
    },
    /** Starts the server again on the same ports and data directory. */
    async start() {
      if (cur) return;
      let lastError;
      // the ports were just freed; retry briefly should the bind race with their release
      for (let attempt = 0; attempt < 20; attempt++) {
        try {
          cur = await spawnServer(dir, wsAddr, tcpAddr, store, extra);
          return;
        } catch (e) {
          lastError = e;
          await sleep(100);
        }
      }
      throw lastError;
    },
    async restart(signal = "SIGKILL") {
      await handle.kill(signal);
      await handle.start();
    },
    /** Stops the server (SIGTERM, then SIGKILL) and removes its data directory. */
    async stop() {
      await handle.kill("SIGTERM");
      rmSync(dir, { recursive: true, force: true });
    },
  };
  return handle;
}
