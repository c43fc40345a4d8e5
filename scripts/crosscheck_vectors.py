#!/usr/bin/env python3
"""Cross-check vectors/*.yaml against an independent protobuf implementation.

The hex of every valid vector is produced (``--write``) and checked (default
mode) with Google's Python protobuf runtime (upb), never with the Rust code, so
the Rust codec is tested against bytes it did not produce.

    pip install -r scripts/requirements.txt
    python3 scripts/crosscheck_vectors.py           # check, exit 1 on any failure
    python3 scripts/crosscheck_vectors.py --write   # (re)write hex: of valid cases

Checks, each reported per case:
  valid     serialize(fields) == hex; MessageToDict(parse(hex)) == fields exactly
            (types included: proves `fields` is canonical proto3 JSON); the
            envelope is valid (route == the field number of the payload set).
  invalid   hex is well-formed hex; error is a known kind; `malformed` cases fail
            ParseFromString; every other case parses and a reference
            classifier (SPEC ENV rules) yields exactly the stated error;
            `too_large` cases exceed max_stanza_bytes and are otherwise valid.
  framing   a reference TCP deframer (4-byte big-endian length prefix) fed the
            chunks yields exactly `frames` or `error` (error cases yield no
            frame first); every non-empty frame is the hex of a valid case.
  global    ids unique across files and prefixed by their file's area; every
            MessageScheme payload (routes 2..27) has >= 2 valid cases.
Ends with the line "N passed, M failed".
"""

from __future__ import annotations

import argparse
import atexit
import importlib
import os
import re
import shutil
import sys
import tempfile
from pathlib import Path

try:
    import yaml
    from google.protobuf import json_format
    from google.protobuf.message import DecodeError
    from grpc_tools import protoc
except ImportError as exc:  # pragma: no cover
    sys.exit(f"missing dependency ({exc}); run: pip install -r scripts/requirements.txt")

ROOT = Path(__file__).resolve().parent.parent

AREA_FILES = [
    "envelope", "awareness", "pingpong", "token", "subscriber", "block", "logout",
    "error", "chat", "ack", "visibility", "location", "push", "auth", "framing",
]
SPEC_PREFIXES = ("ENV", "TRN", "AUTH", "SES", "ERR", "PING", "TOK", "OUT", "AWR", "SUB",
                 "BLK", "VIS", "LOC", "CHAT", "ACK", "QUE", "PUSH")
ERROR_KINDS = {"malformed", "missing_payload", "route_mismatch", "unknown_route", "too_large"}
FRAMING_ERRORS = {"too_large", "truncated"}
DEFAULT_MAX = 65536
HEX_RE = re.compile(r"^(?:[0-9a-f]{2})*$")
ID_RE = re.compile(r"^[a-z0-9]+(?:-[a-z0-9]+)*$")
SPEC_RE = re.compile(r"^(?:%s)-[0-9]+$" % "|".join(SPEC_PREFIXES))

TOP_KEYS = {"description", "valid", "invalid", "framing"}
VALID_KEYS = {"id", "spec", "message", "fields", "hex"}
INVALID_KEYS = {"id", "spec", "hex", "error", "max_stanza_bytes", "note"}
FRAMING_KEYS = {"id", "spec", "chunks", "frames", "error", "max_stanza_bytes", "note"}


# --------------------------------------------------------------------------
# YAML loading (duplicate keys are an error, not last-one-wins)
# --------------------------------------------------------------------------

class _StrictLoader(yaml.SafeLoader):
    pass


def _construct_mapping(loader, node, deep=False):
    seen = set()
    for key_node, _ in node.value:
        key = loader.construct_object(key_node, deep=deep)
        if key in seen:
            raise yaml.constructor.ConstructorError(
                None, None, f"duplicate key {key!r}", key_node.start_mark)
        seen.add(key)
    return loader.construct_mapping(node, deep=deep)


_StrictLoader.add_constructor(yaml.resolver.BaseResolver.DEFAULT_MAPPING_TAG, _construct_mapping)


def load_yaml(path: Path):
    with path.open(encoding="utf-8") as fh:
        return yaml.load(fh, Loader=_StrictLoader)


# --------------------------------------------------------------------------
# Schema
# --------------------------------------------------------------------------

def compile_schema(proto: Path):
    """protoc (grpcio-tools) -> bimip_pb2 in a temp dir, imported."""
    tmp = tempfile.mkdtemp(prefix="bimip_pb2_")
    atexit.register(shutil.rmtree, tmp, True)
    include = os.path.join(os.path.dirname(protoc.__file__), "_proto")
    rc = protoc.main([
        "grpc_tools.protoc",
        f"-I{proto.parent}",
        f"-I{include}",
        f"--python_out={tmp}",
        str(proto.name),
    ])
    if rc != 0:
        sys.exit(f"protoc failed on {proto} (exit {rc})")
    sys.path.insert(0, tmp)
    return importlib.import_module(proto.stem + "_pb2")


class Envelope:
    """Reference implementation of the envelope rules (SPEC ENV) on top of protobuf."""

    def __init__(self, pb2):
        self.pb2 = pb2
        desc = pb2.MessageScheme.DESCRIPTOR
        self.oneof = desc.oneofs_by_name["payload"]
        self.payload_numbers = {f.name: f.number for f in self.oneof.fields}

    def parse(self, data: bytes):
        msg = self.pb2.MessageScheme()
        msg.ParseFromString(data)
        return msg

    def classify(self, data: bytes, max_stanza_bytes: int = DEFAULT_MAX):
        """None when the stanza is acceptable at the codec layer, else the error kind."""
        if len(data) > max_stanza_bytes:
            return "too_large"
        try:
            msg = self.parse(data)
        except DecodeError:
            return "malformed"
        which = msg.WhichOneof("payload")
        if which is not None:
            return None if msg.route == self.payload_numbers[which] else "route_mismatch"
        if msg.route == 0 or msg.route in self.payload_numbers.values():
            return "missing_payload"
        return "unknown_route"


def deframe(chunks, max_stanza_bytes):
    """Reference TCP deframer. Returns (frames, error or None)."""
    buf = b""
    frames = []
    for chunk in chunks:
        buf += chunk
        while True:
            if len(buf) < 4:
                break
            n = int.from_bytes(buf[:4], "big")
            if n > max_stanza_bytes:
                return frames, "too_large"
            if len(buf) < 4 + n:
                break
            frames.append(buf[4:4 + n])
            buf = buf[4 + n:]
    if buf:
        return frames, "truncated"
    return frames, None


# --------------------------------------------------------------------------
# Helpers
# --------------------------------------------------------------------------

def strict_equal(a, b) -> bool:
    """Equality that also requires identical JSON types (1 != 1.0 != "1", True != 1)."""
    if type(a) is not type(b):
        return False
    if isinstance(a, dict):
        return a.keys() == b.keys() and all(strict_equal(a[k], b[k]) for k in a)
    if isinstance(a, list):
        return len(a) == len(b) and all(strict_equal(x, y) for x, y in zip(a, b))
    return a == b


def first_difference(a, b, path="fields"):
    if type(a) is not type(b):
        return f"{path}: {a!r} ({type(a).__name__}) vs canonical {b!r} ({type(b).__name__})"
    if isinstance(a, dict):
        for k in sorted(set(a) | set(b), key=str):
            if k not in b:
                return f"{path}.{k}: present in yaml but not in canonical JSON (default value, wrong name, or wrong case?)"
            if k not in a:
                return f"{path}.{k}: missing in yaml, canonical JSON has {b[k]!r}"
            d = first_difference(a[k], b[k], f"{path}.{k}")
            if d:
                return d
        return None
    if isinstance(a, list):
        if len(a) != len(b):
            return f"{path}: {len(a)} items vs canonical {len(b)}"
        for i, (x, y) in enumerate(zip(a, b)):
            d = first_difference(x, y, f"{path}[{i}]")
            if d:
                return d
        return None
    return None if a == b else f"{path}: {a!r} vs canonical {b!r}"


def parse_hex(value):
    if not isinstance(value, str) or not HEX_RE.match(value):
        raise ValueError(f"not lowercase even-length hex: {value!r}")
    return bytes.fromhex(value)


class Report:
    def __init__(self):
        self.passed = 0
        self.failures = []

    def ok(self):
        self.passed += 1

    def fail(self, where, msg):
        self.failures.append(f"FAIL {where}: {msg}")


# --------------------------------------------------------------------------
# Checks
# --------------------------------------------------------------------------

def encode_fields(pb2, case):
    name = case.get("message", "MessageScheme")
    cls = getattr(pb2, name, None)
    if cls is None or not hasattr(cls, "DESCRIPTOR"):
        raise ValueError(f"unknown message type {name!r}")
    msg = cls()
    json_format.ParseDict(case["fields"], msg)
    return cls, msg.SerializeToString(deterministic=True)


def check_common(case, allowed_keys, area, where, rep, ids):
    ok = True
    if not isinstance(case, dict):
        rep.fail(where, "case is not a mapping")
        return False
    extra = set(case) - allowed_keys
    if extra:
        rep.fail(where, f"unknown keys {sorted(extra)}")
        ok = False
    cid = case.get("id")
    if not isinstance(cid, str) or not ID_RE.match(cid):
        rep.fail(where, f"id {cid!r} is not kebab-case")
        ok = False
    elif not cid.startswith(area + "-"):
        rep.fail(where, f"id {cid!r} is not prefixed by its area '{area}-'")
        ok = False
    if isinstance(cid, str):
        if cid in ids:
            rep.fail(where, f"id {cid!r} also used in {ids[cid]}")
            ok = False
        ids[cid] = where.split(":")[0]
    spec = case.get("spec")
    if not isinstance(spec, list) or not spec or not all(isinstance(s, str) and SPEC_RE.match(s) for s in spec):
        rep.fail(where, f"spec must be a non-empty list of IDs like ENV-1, got {spec!r}")
        ok = False
    return ok


def check_valid(pb2, env, case, where, rep, route_counts):
    if "fields" not in case or not isinstance(case["fields"], dict):
        rep.fail(where, "valid case needs a `fields` mapping")
        return False
    try:
        cls, encoded = encode_fields(pb2, case)
    except Exception as exc:  # json_format.ParseError, ValueError, ...
        rep.fail(where, f"fields do not parse as protobuf JSON: {exc}")
        return False
    try:
        expected = parse_hex(case.get("hex"))
    except ValueError as exc:
        rep.fail(where, f"hex: {exc}")
        return False
    ok = True
    if encoded != expected:
        rep.fail(where, f"hex mismatch: yaml {expected.hex()} != python {encoded.hex()}")
        ok = False
    try:
        parsed = cls()
        parsed.ParseFromString(expected)
        canonical = json_format.MessageToDict(parsed)
    except DecodeError as exc:
        rep.fail(where, f"hex does not parse: {exc}")
        return False
    if not strict_equal(case["fields"], canonical):
        rep.fail(where, "fields are not canonical proto3 JSON: "
                 + (first_difference(case["fields"], canonical) or "differs"))
        ok = False
    if cls is pb2.MessageScheme:
        err = env.classify(expected)
        if err is not None:
            rep.fail(where, f"valid case is refused by the envelope rules: {err}")
            ok = False
        which = parsed.WhichOneof("payload")
        if which is not None:
            route_counts[env.payload_numbers[which]] = route_counts.get(env.payload_numbers[which], 0) + 1
    return ok


def check_invalid(env, case, where, rep):
    err = case.get("error")
    if err not in ERROR_KINDS:
        rep.fail(where, f"error {err!r} is not one of {sorted(ERROR_KINDS)}")
        return False
    try:
        data = parse_hex(case.get("hex"))
    except ValueError as exc:
        rep.fail(where, f"hex: {exc}")
        return False
    max_bytes = case.get("max_stanza_bytes", DEFAULT_MAX)
    if "max_stanza_bytes" in case and err != "too_large":
        rep.fail(where, "max_stanza_bytes is only for too_large cases")
        return False
    if not isinstance(max_bytes, int) or isinstance(max_bytes, bool) or max_bytes < 0:
        rep.fail(where, f"max_stanza_bytes must be a non-negative integer, got {max_bytes!r}")
        return False
    if "note" in case and (not isinstance(case["note"], str) or "\n" in case["note"].strip()):
        rep.fail(where, "note must be one line")
        return False
    if err == "malformed":
        try:
            env.parse(data)
        except DecodeError:
            return True
        rep.fail(where, "marked malformed but Python protobuf parses it")
        return False
    if err == "too_large":
        if len(data) <= max_bytes:
            rep.fail(where, f"too_large but {len(data)} bytes <= max_stanza_bytes {max_bytes}")
            return False
        if env.classify(data, max_bytes) != "too_large" or env.classify(data, len(data)) is not None:
            rep.fail(where, "too_large case should be an otherwise valid stanza")
            return False
        return True
    got = env.classify(data, max_bytes)
    if got != err:
        rep.fail(where, f"error {err} but the reference envelope rules say {got or 'valid'}")
        return False
    return True


def check_framing(env, case, where, rep, valid_hexes):
    chunks_raw = case.get("chunks")
    if not isinstance(chunks_raw, list) or not chunks_raw:
        rep.fail(where, "chunks must be a non-empty list of hex strings")
        return False
    try:
        chunks = [parse_hex(c) for c in chunks_raw]
    except ValueError as exc:
        rep.fail(where, f"chunks: {exc}")
        return False
    has_frames, has_error = "frames" in case, "error" in case
    if has_frames == has_error:
        rep.fail(where, "exactly one of `frames` and `error` is required")
        return False
    max_bytes = case.get("max_stanza_bytes", DEFAULT_MAX)
    if not isinstance(max_bytes, int) or isinstance(max_bytes, bool) or max_bytes < 0:
        rep.fail(where, f"max_stanza_bytes must be a non-negative integer, got {max_bytes!r}")
        return False
    frames, err = deframe(chunks, max_bytes)
    if has_error:
        if case["error"] not in FRAMING_ERRORS:
            rep.fail(where, f"error {case['error']!r} is not one of {sorted(FRAMING_ERRORS)}")
            return False
        if err != case["error"]:
            rep.fail(where, f"error {case['error']} but the reference deframer says {err or 'ok'}")
            return False
        if frames:
            rep.fail(where, f"error case also yields {len(frames)} complete frame(s) first; keep error cases frame-free")
            return False
        return True
    try:
        expected = [parse_hex(f) for f in case["frames"]]
    except (ValueError, TypeError) as exc:
        rep.fail(where, f"frames: {exc}")
        return False
    if err is not None:
        rep.fail(where, f"reference deframer fails with {err}")
        return False
    if frames != expected:
        rep.fail(where, f"frames {[f.hex() for f in frames]} != expected {[f.hex() for f in expected]}")
        return False
    for f in frames:
        if f and env.classify(f, max_bytes) is not None:
            rep.fail(where, f"frame {f.hex()} is not a valid stanza ({env.classify(f, max_bytes)})")
            return False
        if f and f.hex() not in valid_hexes:
            rep.fail(where, f"frame {f.hex()} is not the hex of any valid case (regenerate framing from the vectors)")
            return False
    return True


def run_checks(pb2, vectors: Path) -> int:
    env = Envelope(pb2)
    rep = Report()
    ids: dict = {}
    route_counts: dict = {}
    valid_hexes: set = set()
    counts = []
    for area in AREA_FILES:
        path = vectors / f"{area}.yaml"
        rel = path.relative_to(ROOT) if path.is_relative_to(ROOT) else path
        if not path.exists():
            rep.fail(str(rel), "file missing")
            continue
        try:
            doc = load_yaml(path)
        except yaml.YAMLError as exc:
            rep.fail(str(rel), f"YAML error: {exc}")
            continue
        if not isinstance(doc, dict):
            rep.fail(str(rel), "top level must be a mapping")
            continue
        extra = set(doc) - TOP_KEYS
        if extra:
            rep.fail(str(rel), f"unknown top-level keys {sorted(extra)}")
        if not isinstance(doc.get("description"), str) or not doc["description"].strip():
            rep.fail(str(rel), "description missing")
        if "framing" in doc and area != "framing":
            rep.fail(str(rel), "`framing:` belongs in framing.yaml only")
        n = {"valid": 0, "invalid": 0, "framing": 0}
        for section, keys in (("valid", VALID_KEYS), ("invalid", INVALID_KEYS), ("framing", FRAMING_KEYS)):
            cases = doc.get(section) or []
            if not isinstance(cases, list):
                rep.fail(str(rel), f"`{section}` must be a list")
                continue
            for i, case in enumerate(cases):
                cid = case.get("id", f"#{i}") if isinstance(case, dict) else f"#{i}"
                where = f"{rel}:{section}:{cid}"
                n[section] += 1
                if not check_common(case, keys, area, where, rep, ids):
                    continue
                if section == "valid":
                    good = check_valid(pb2, env, case, where, rep, route_counts)
                    if good:
                        valid_hexes.add(case["hex"])
                elif section == "invalid":
                    good = check_invalid(env, case, where, rep)
                else:
                    good = check_framing(env, case, where, rep, valid_hexes)
                if good:
                    rep.ok()
        counts.append((area, n))

    for name, number in sorted(env.payload_numbers.items(), key=lambda kv: kv[1]):
        have = route_counts.get(number, 0)
        if have < 2:
            rep.fail("coverage", f"route {number} ({name}) has {have} valid case(s), needs >= 2")

    for area, n in counts:
        print(f"  {area + '.yaml':<18} valid {n['valid']:>3}  invalid {n['invalid']:>3}  framing {n['framing']:>3}")
    for line in rep.failures:
        print(line)
    print(f"{rep.passed} passed, {len(rep.failures)} failed")
    return 1 if rep.failures else 0


# --------------------------------------------------------------------------
# --write: rewrite the `hex:` line of every valid case, keeping the rest
# --------------------------------------------------------------------------

ID_LINE = re.compile(r"^(\s*)- id:\s*(\S+)\s*$")
SECTION_LINE = re.compile(r"^(\w+):")


def write_hex(pb2, vectors: Path) -> int:
    problems = 0
    for area in AREA_FILES:
        path = vectors / f"{area}.yaml"
        if not path.exists():
            continue
        doc = load_yaml(path) or {}
        wanted = {}
        for case in doc.get("valid") or []:
            try:
                _, encoded = encode_fields(pb2, case)
            except Exception as exc:
                print(f"FAIL {path.name}:{case.get('id')}: fields do not parse: {exc}")
                problems += 1
                continue
            wanted[case["id"]] = encoded.hex()
        lines = path.read_text(encoding="utf-8").splitlines(keepends=True)
        out = []
        section = None
        current = None  # (id, indent) of the valid case being read
        done = set()
        for line in lines:
            m = SECTION_LINE.match(line)
            if m:
                section = m.group(1)
                current = None
            m = ID_LINE.match(line)
            if m:
                cid = m.group(2).strip("'\"")
                current = (cid, len(m.group(1)) + 2) if section == "valid" else None
            elif current and re.match(r"^\s{%d}hex:" % current[1], line) and current[0] in wanted:
                line = " " * current[1] + f'hex: "{wanted[current[0]]}"\n'
                done.add(current[0])
            out.append(line)
        missing = set(wanted) - done
        for cid in sorted(missing):
            print(f"FAIL {path.name}:{cid}: no `hex:` line to rewrite (add `hex: \"\"` to the case)")
            problems += 1
        new = "".join(out)
        if new != path.read_text(encoding="utf-8"):
            path.write_text(new, encoding="utf-8")
            print(f"wrote {path.relative_to(ROOT) if path.is_relative_to(ROOT) else path} ({len(done)} hex lines)")
    return 1 if problems else 0


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--write", action="store_true", help="rewrite hex: of valid cases, then check")
    ap.add_argument("--proto", type=Path, default=ROOT / "proto" / "bimip.proto")
    ap.add_argument("--vectors", type=Path, default=ROOT / "vectors")
    args = ap.parse_args(argv)
    pb2 = compile_schema(args.proto.resolve())
    from google.protobuf.internal import api_implementation
    import google.protobuf
    print(f"python protobuf {google.protobuf.__version__} ({api_implementation.Type()})")
    if args.write and write_hex(pb2, args.vectors.resolve()):
        return 1
    return run_checks(pb2, args.vectors.resolve())


if __name__ == "__main__":
    sys.exit(main())
