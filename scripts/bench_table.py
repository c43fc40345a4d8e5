#!/usr/bin/env python3
"""Prints the markdown table of one scripts/bench-vs-mosquitto.sh run from the JSON files in DIR."""
import json
import sys
from pathlib import Path


def load(path):
    try:
        return json.loads(path.read_text())
    except (OSError, ValueError):
        return None


def lat(report, key, q):
    return report[key][q] if report and report.get(key) and report[key]["count"] else None


def fmt(value, unit=""):
    if value is None:
        return "-"
    if unit == "ms":
        return f"{value:.2f} ms"
    if unit == "B":
        return f"{value:,.0f} B"
    return f"{value:,.0f}"


def main():
    out = Path(sys.argv[1])
    mf, bf = load(out / "mqtt-flat.json"), load(out / "bimip-flat.json")
    mr, br = load(out / "mqtt-rate.json"), load(out / "bimip-rate.json")
    idle = load(out / "bimip-idle.json")
    store = (bf or br or {}).get("server", {}).get("store") or "?"
    transport = "tcp" if (bf or {}).get("url", "").startswith("tcp") else "WebSocket"
    rows = []
    m_flat = mf["delivered_per_sec"] if mf else None
    b_flat = bf["delivered_per_sec"] if bf else None
    ratio = b_flat / m_flat if m_flat and b_flat else None
    target_met = "yes" if ratio and ratio >= 2 and store == "durable" else ("**no**" if ratio and ratio < 2 else "n/a: not durable")
    rows.append(("delivered msgs/s, flat out", fmt(m_flat), fmt(b_flat), f"{ratio:.2f}x" if ratio else "-",
                 ">= 2x mosquitto (durable)", target_met))
    rate = (br or mr or {}).get("rate")
    for q, label in (("p50_ms", "p50"), ("p99_ms", "p99"), ("p999_ms", "p99.9")):
        m, b = lat(mr, "latency_delivery", q), lat(br, "latency_delivery", q)
        target, met = ("", "")
        if q == "p99_ms" and b is not None:
            target, met = "<= 5 ms", "yes" if b <= 5 else "**no**"
        rows.append((f"send -> receiver {label} at {rate:,.0f} msgs/s" if rate else f"send -> receiver {label}",
                     fmt(m, "ms"), fmt(b, "ms"), f"{b / m:.2f}x" if m and b else "-", target, met))
    rows.append(("send -> accepted p99 (PUBACK / VersionUpdate)", fmt(lat(mr, "latency_accepted", "p99_ms"), "ms"),
                 fmt(lat(br, "latency_accepted", "p99_ms"), "ms"), "-", "", ""))
    rows.append(("send -> delivered acknowledgment p99", "(none in MQTT)",
                 fmt(lat(br, "latency_delivered_ack", "p99_ms"), "ms"), "-", "", ""))
    rows.append(("delivered msgs/s at the fixed rate", fmt(mr["delivered_per_sec"] if mr else None),
                 fmt(br["delivered_per_sec"] if br else None), "-", "", ""))
    def cpu_per_msg(report, key):
        if not report or not report.get("delivered"):
            return None
        value = report.get(key) if key in report else (report.get("cpu") or {}).get(key.split(":")[-1])
        return value * 1e6 / report["delivered"] if value is not None else None

    m_srv, b_srv = cpu_per_msg(mf, "broker_cpu_s"), cpu_per_msg(bf, "cpu:server_s")
    rows.append(("server CPU per delivered message, flat out", f"{m_srv:.1f} us" if m_srv else "-",
                 f"{b_srv:.1f} us" if b_srv else "-", f"{b_srv / m_srv:.2f}x" if m_srv and b_srv else "-", "", ""))
    m_cli, b_cli = cpu_per_msg(mf, "bench_cpu_s"), cpu_per_msg(bf, "cpu:bench_s")
    rows.append(("load generator CPU per delivered message, flat out", f"{m_cli:.1f} us" if m_cli else "-",
                 f"{b_cli:.1f} us" if b_cli else "-", f"{b_cli / m_cli:.2f}x" if m_cli and b_cli else "-", "", ""))
    per = idle.get("server_bytes_per_connection") if idle else None
    rows.append((f"server memory per idle WebSocket connection ({idle['connections']:,} open)" if idle
                 else "server memory per idle connection", "-", fmt(per, "B"), "-", "<= 2 KB",
                 ("yes" if per <= 2048 else "**no**") if per is not None else ""))
    print(f"| measurement | mosquitto QoS 1 | BIMIP ({store} store, {transport}) | BIMIP / mosquitto | target | met |")
    print("|---|---|---|---|---|---|")
    for row in rows:
        print("| " + " | ".join(row) + " |")
    for name, report in (("mqtt-flat", mf), ("bimip-flat", bf), ("mqtt-rate", mr), ("bimip-rate", br)):
        if report:
            errors = report.get("errors") or {}
            print(f"\n{name}: sent {report['sent']:,} delivered {report['delivered']:,} "
                  f"undelivered {report['undelivered']:,} duplicates {report['duplicates']:,}"
                  + (f" errors {errors}" if errors else ""))


if __name__ == "__main__":
    main()
