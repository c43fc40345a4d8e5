// The conformance suite's client mode (conformance/README.md, "Client mode") against this SDK
// through conformance/adapter.js: the suite plays the server (WebSocket and native TCP).
import { test } from "node:test";
import assert from "node:assert/strict";
import { execFile } from "node:child_process";
import { existsSync } from "node:fs";
import { join } from "node:path";
import { fileURLToPath } from "node:url";
import { CARGO_BIN_DIR } from "./support/server.js";

const CONFORM = process.env.BIMIP_CONFORM_BIN ?? join(CARGO_BIN_DIR, "bimip-conform");
const ADAPTER = fileURLToPath(new URL("../conformance/adapter.js", import.meta.url));

test("bimip-conform client --strict: every client case passes", { timeout: 180_000 }, async () => {
  assert.ok(existsSync(CONFORM), `bimip-conform not found at ${CONFORM} (set BIMIP_CONFORM_BIN)`);
  const { code, stdout, stderr } = await new Promise((resolve) => {
    execFile(CONFORM, ["client", "--adapter", `"${process.execPath}" "${ADAPTER}"`, "--strict"], { maxBuffer: 64 << 20 }, (err, stdout, stderr) =>
      resolve({ code: err ? err.code : 0, stdout, stderr }),
    );
  });
  const summary = /(\d+) cases: (.*)/.exec(stdout)?.[0] ?? "(no summary)";
  assert.equal(code, 0, `${summary}\n${stdout.split("\n").filter((l) => l.includes("✘")).join("\n")}\n${stderr.slice(-2000)}`);
  assert.match(summary, /cases: \d+ pass \(/);
});
