// Test helper: starts the reference server (/tmp/sdk-dev/bimip, or $BIMIP_BIN) on loopback
// with free ports and an in-memory store, and mints tokens with its development key.
import { spawn, execFileSync } from "node:child_process";
import { mkdtempSync, rmSync, existsSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";

export const BIMIP_BIN = process.env.BIMIP_BIN ?? "/tmp/sdk-dev/bimip";

export async function startServer() {
  if (!existsSync(BIMIP_BIN)) throw new Error(`reference server binary not found at ${BIMIP_BIN} (set BIMIP_BIN)`);
  const dir = mkdtempSync(join(tmpdir(), "bimip-sdk-test-"));
  const child = spawn(
    BIMIP_BIN,
    ["serve", "--data-dir", dir, "--ws", "127.0.0.1:0", "--tcp", "127.0.0.1:0", "--no-admin", "--grpc", "127.0.0.1:0", "--store", "memory"],
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
  return {
    url,
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
