/**
 * A PendingStore for Node: one JSON file per pending request in a directory, written to a
 * temporary name and renamed (a crash leaves the old state or the new one, never half a file).
 * Node only (imports node:fs); browsers use LocalStorageStore.
 */
import { mkdirSync, readdirSync, readFileSync, renameSync, rmSync, writeFileSync, openSync, fsyncSync, closeSync } from "node:fs";
import { join } from "node:path";
import { createHash } from "node:crypto";
import { nextSeq, parse, sortBySeq, type PendingRequest, type PendingStore } from "./store.js";

export interface FileStoreOptions {
  /** fsync each file before the rename (durable across power loss, slower). Default false. */
  fsync?: boolean;
}

export class FileStore implements PendingStore {
  constructor(
    readonly dir: string,
    private readonly opts: FileStoreOptions = {},
  ) {
    mkdirSync(dir, { recursive: true });
    // temporary files of writes cut by a crash
    for (const f of readdirSync(dir)) if (f.endsWith(".tmp")) rmSync(join(dir, f), { force: true });
  }

  private file(id: string): string {
    return join(this.dir, createHash("sha256").update(id).digest("hex") + ".json");
  }

  list(): PendingRequest[] {
    const out: PendingRequest[] = [];
    for (const f of readdirSync(this.dir)) {
      if (!f.endsWith(".json")) continue;
      let text: string | null = null;
      try {
        text = readFileSync(join(this.dir, f), "utf8");
      } catch {
        continue; // deleted meanwhile
      }
      const r = parse(text);
      if (r) out.push(r);
    }
    return sortBySeq(out);
  }

  get(id: string): PendingRequest | undefined {
    try {
      return parse(readFileSync(this.file(id), "utf8")) ?? undefined;
    } catch {
      return undefined;
    }
  }

  put(r: PendingRequest): void {
    const target = this.file(r.messageIdLocal);
    const tmp = `${target}.${process.pid}.tmp`;
    writeFileSync(tmp, JSON.stringify({ ...r, seq: nextSeq(r) }));
    if (this.opts.fsync) {
      const fd = openSync(tmp, "r+");
      try {
        fsyncSync(fd);
      } finally {
        closeSync(fd);
      }
    }
    renameSync(tmp, target);
  }

  delete(id: string): void {
    rmSync(this.file(id), { force: true });
  }
}
