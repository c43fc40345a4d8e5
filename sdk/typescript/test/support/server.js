// Test helper: starts the reference server ($BIMIP_BIN, else the repository's cargo build:
// $CARGO_TARGET_DIR/debug/bimip or target/debug/bimip; run `cargo build --bins` first) on loopback
// with free ports and an in-memory store, and mints tokens with its development key.
import { spawn, execFileSync } from "node:child_process";
import { mkdtempSync, rmSync, existsSync, writeFileSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { fileURLToPath } from "node:url";

const REPO = fileURLToPath(new URL("../../../../", import.meta.url));
/** Where cargo put the repository's binaries (debug build). */
export const CARGO_BIN_DIR = join(process.env.CARGO_TARGET_DIR ?? join(REPO, "target"), "debug");
export const BIMIP_BIN = process.env.BIMIP_BIN ?? join(CARGO_BIN_DIR, "bimip");

/** `config`: optional TOML settings (same keys as the flags, e.g. "[limits]\nping_interval_ms = 300"). */
export async function startServer({ config } = {}) {
  if (!existsSync(BIMIP_BIN)) throw new Error(`reference server binary not found at ${BIMIP_BIN} (set BIMIP_BIN)`);
  const dir = mkdtempSync(join(tmpdir(), "bimip-sdk-test-"));
  const extra = [];
  if (config) {
    writeFileSync(join(dir, "test-config.toml"), config);
    extra.push("--config", join(dir, "test-config.toml"));
  }
  const child = spawn(
    BIMIP_BIN,
    ["serve", "--data-dir", dir, "--ws", "127.0.0.1:0", "--tcp", "127.0.0.1:0", "--no-admin", "--grpc", "127.0.0.1:0", "--store", "memory", ...extra],
    { stdio: ["ignore", "pipe", "pipe"] },
  );
  let out = "";
  let err = "";
  child.stderr.on("data", (d) => (err += d));
  const url = await new Promise((resolve, reject) => {
    const timer = setTimeout(() => reject(new Error(`server did not start:\n${out}\n${err}`)), 10_000);
    child.on("exit", (code) => reject(new Error(`server exited with ${code}:\n${out}\n${err}`)));
    child.stdout.on("data", (d) => {
      out += d;
      const m = /WebSocket\s+(ws:\/\/\S+)/.exec(out);
      if (m && /ready|data\s/.test(out + err)) {
        clearTimeout(timer);
        resolve(m[1]);
      }
    });
  });
  // wait until the development key exists
  for (let i = 0; i < 100 && !existsSync(join(dir, "dev-ed25519.pem")); i++) await new Promise((r) => setTimeout(r, 50));
  const tcpUrl = /TCP\s+(tcp:\/\/\S+)/.exec(out)?.[1];
  return {
    url,
    tcpUrl,
    dir,
    token(eid, device, extra = []) {
      return execFileSync(BIMIP_BIN, ["token", "--eid", eid, "--device", device, "--data-dir", dir, ...extra], { encoding: "utf8" }).trim();
    },
    async stop() {
      if (child.exitCode === null) {
        const exited = new Promise((r) => child.once("exit", r));
        child.kill("SIGTERM");
        await Promise.race([exited, new Promise((r) => setTimeout(r, 3000))]);
        if (child.exitCode === null) child.kill("SIGKILL");
      }
      rmSync(dir, { recursive: true, force: true });
    },
  };
}
