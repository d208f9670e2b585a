#!/usr/bin/env python3
"""Measurement and table steps of benches/compare.sh (Python 3 standard library only).

  compare.py measure --name NAME --server-pid PID --mode load|idle --out RESULT.json \
      [--cpus 0,1] -- LOADGEN_CMD...
      Runs one load generator command (which must write --json to RESULT.json.loadgen),
      sampling the server's and the generator's CPU time and RSS from /proc every 0.2 s,
      and writes RESULT.json with the generator's summary plus what the server cost.

  compare.py table DIR
      Prints the comparison tables (markdown) for every result in DIR.

CPU time per delivered message is computed over the load generator's steady window (every
client joined, sending on schedule), so the ramp's handshakes and token checks are left out.
"""

import argparse
import json
import os
import re
import subprocess
import sys
import threading
import time
from pathlib import Path

TICK = os.sysconf("SC_CLK_TCK")
PAGE_KIB = os.sysconf("SC_PAGE_SIZE") // 1024


# ---- /proc readers -------------------------------------------------------------

def proc_cpu_secs(pid):
    """utime + stime of a process (all its threads), in seconds; None once it is gone."""
    try:
        with open(f"/proc/{pid}/stat") as f:
            text = f.read()
    except OSError:
        return None
    # The command name may hold spaces; fields after the closing parenthesis are fixed.
    fields = text[text.rindex(")") + 2:].split()
    return (int(fields[11]) + int(fields[12])) / TICK


def proc_status_kib(pid, key):
    try:
        with open(f"/proc/{pid}/status") as f:
            for line in f:
                if line.startswith(key + ":"):
                    return int(line.split()[1])
    except OSError:
        return None
    return None


def cpu_busy_secs(cpus):
    """Busy (non-idle, non-iowait) seconds summed over the given CPUs, from /proc/stat."""
    total = 0
    with open("/proc/stat") as f:
        for line in f:
            m = re.match(r"cpu(\d+)\s", line)
            if m and int(m.group(1)) in cpus:
                v = [int(x) for x in line.split()[1:]]
                # user nice system idle iowait irq softirq steal ...
                total += v[0] + v[1] + v[2] + v[5] + v[6] + (v[7] if len(v) > 7 else 0)
    return total / TICK


def loadavg():
    with open("/proc/loadavg") as f:
        return " ".join(f.read().split()[:3])


# ---- measure -------------------------------------------------------------------

def interpolate(samples, key, t):
    """Value of samples[key] at time t (linear between the samples around t)."""
    pts = [(s["t"], s[key]) for s in samples if s.get(key) is not None]
    if not pts:
        return None
    if t <= pts[0][0]:
        return pts[0][1]
    for (t0, v0), (t1, v1) in zip(pts, pts[1:]):
        if t0 <= t <= t1:
            return v0 if t1 == t0 else v0 + (v1 - v0) * (t - t0) / (t1 - t0)
    return pts[-1][1]


def measure(args):
    cpus = {int(c) for c in args.cpus.split(",")}
    spid = args.server_pid
    lg_json = Path(str(args.out) + ".loadgen")
    cmd = args.cmd[1:] if args.cmd and args.cmd[0] == "--" else args.cmd

    rss_before = proc_status_kib(spid, "VmRSS")
    load_before = loadavg()
    samples = []
    joined_at = [None]
    stderr_lines = []

    start = time.monotonic()
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)

    def read_stderr():
        for line in proc.stderr:
            stderr_lines.append(line)
            if joined_at[0] is None and re.search(r"\d+ of \d+ clients joined", line):
                joined_at[0] = time.monotonic() - start
            sys.stderr.write("    | " + line)

    stdout_holder = []
    t_err = threading.Thread(target=read_stderr, daemon=True)
    t_out = threading.Thread(target=lambda: stdout_holder.append(proc.stdout.read()), daemon=True)
    t_err.start()
    t_out.start()

    rusage = None
    while True:
        now = time.monotonic() - start
        samples.append({
            "t": now,
            "server_cpu": proc_cpu_secs(spid),
            "server_rss": proc_status_kib(spid, "VmRSS"),
            "loadgen_cpu": proc_cpu_secs(proc.pid),
            "busy": cpu_busy_secs(cpus),
        })
        # Reap the generator ourselves so its rusage (total CPU) is kept.
        pid, status, ru = os.wait4(proc.pid, os.WNOHANG)
        if pid == proc.pid:
            rusage = ru
            proc.returncode = os.waitstatus_to_exitcode(status)
            break
        time.sleep(0.2)
    end = time.monotonic() - start
    samples.append({
        "t": end, "server_cpu": proc_cpu_secs(spid), "server_rss": proc_status_kib(spid, "VmRSS"),
        "loadgen_cpu": rusage.ru_utime + rusage.ru_stime, "busy": cpu_busy_secs(cpus),
    })
    t_err.join(timeout=5)
    t_out.join(timeout=5)

    result = {
        "name": args.name,
        "mode": args.mode,
        "command": cmd,
        "exit_code": proc.returncode,
        "loadavg_before": load_before,
        "loadavg_after": loadavg(),
        "rss_before_kib": rss_before,
        "peak_rss_kib": proc_status_kib(spid, "VmHWM"),
        "loadgen_cpu_total_s": rusage.ru_utime + rusage.ru_stime,
        "loadgen_maxrss_kib": rusage.ru_maxrss,
        "wall_s": end,
        "stdout": stdout_holder[0] if stdout_holder else "",
    }
    try:
        lg = json.loads(lg_json.read_text())
    except (OSError, ValueError) as e:
        result["error"] = f"no load generator JSON: {e}"
        Path(args.out).write_text(json.dumps(result, indent=1) + "\n")
        return 1
    result["loadgen"] = {k: v for k, v in lg.items() if k != "timeline"}
    result["timeline"] = lg.get("timeline", [])

    # The generator's clock starts at its first connection attempt, a few ms after the
    # process starts; the error this leaves is far below the 0.2 s sampling step.
    t1 = lg["duration_s"]
    t0 = t1 - lg["steady_s"] if lg["steady_s"] > 0 else lg["ramp_s"]
    win = max(t1 - t0, 1e-9)

    def delta(key):
        a, b = interpolate(samples, key, t0), interpolate(samples, key, t1)
        return None if a is None or b is None else b - a

    server_cpu = delta("server_cpu")
    loadgen_cpu = delta("loadgen_cpu")
    busy = delta("busy")
    delivered = lg["delivered_per_sec"] * win
    result["window_s"] = [round(t0, 2), round(t1, 2)]
    result["server_cpu_pct"] = 100 * server_cpu / win
    result["loadgen_cpu_pct"] = 100 * loadgen_cpu / win
    # CPU used on these cores by anything but the server and the generator.
    result["other_cpu_pct"] = 100 * max(busy - server_cpu - loadgen_cpu, 0) / win
    result["server_us_per_delivery"] = 1e6 * server_cpu / delivered if delivered else None

    if args.mode == "idle":
        # RSS while every connection is held: the samples from 1 s after the joined line
        # until the generator starts closing (--duration).
        if joined_at[0] is not None:
            hold = [s["server_rss"] for s in samples
                    if joined_at[0] + 1.0 <= s["t"] <= t1 - 0.3 and s["server_rss"]]
            if hold:
                hold.sort()
                rss_hold = hold[len(hold) // 2]
                held = lg.get("held") or 0
                result["rss_hold_kib"] = rss_hold
                result["held"] = held
                result["kib_per_conn"] = (rss_hold - rss_before) / held if held else None
                result["hold_samples"] = len(hold)

    Path(args.out).write_text(json.dumps(result, indent=1) + "\n")
    return 0 if proc.returncode == 0 else proc.returncode


# ---- table ---------------------------------------------------------------------

def ms(us):
    return "-" if us is None else (f"{us / 1000:.2f}" if us < 10_000 else f"{us / 1000:.0f}")


def k(n):
    if n is None:
        return "-"
    return f"{n / 1000:.1f}k" if n >= 1000 else f"{n:.0f}"


def table(args):
    d = Path(args.dir)
    results = []
    for p in sorted(d.glob("*.json")):
        if p.name.endswith(".loadgen"):
            continue
        try:
            r = json.loads(p.read_text())
        except ValueError:
            continue
        if "mode" in r:
            results.append(r)
    order = {n: i for i, n in enumerate(args.order.split(","))} if args.order else {}
    results.sort(key=lambda r: (r.get("level", 0), order.get(r["name"], 99), r["name"]))

    out = []
    if any(r["name"] == "hubbub" for r in results):
        out.append("hubbub runs with its default durable history (redb, an fdatasync per commit batch,")
        out.append("fan-out after the commit); the peers store nothing. See docs/benchmarks.md.")
        out.append("")
    loads = [r for r in results if r["mode"] == "load"]
    levels = sorted({r.get("level", 0) for r in loads})
    for level in levels:
        rows = [r for r in loads if r.get("level", 0) == level]
        if not rows:
            continue
        lg0 = rows[0].get("loadgen", {})
        out.append(f"### Load level {level}: {rows[0].get('label', '')}")
        out.append("")
        out.append(
            "| server | sent/s | delivered/s | p50 ms | p99 ms | peak RSS MiB | server CPU % "
            "| server µs/delivery | deliveries per core-s | lost | loadgen CPU % | send lag p99 ms "
            "| other CPU % | load avg |"
        )
        out.append("|" + "---|" * 14)
        hub = next((r for r in rows if r["name"] == "hubbub"), None)
        for r in rows:
            lg = r.get("loadgen")
            if not lg:
                out.append(f"| {r['name']} | failed: {r.get('error', 'exit ' + str(r.get('exit_code')))} |")
                continue
            lat = lg.get("latency_us") or {}
            lag = lg.get("send_lag_us") or {}
            us = r.get("server_us_per_delivery")
            cap = 1e6 / us if us else None
            out.append(
                f"| {r['name']} | {k(lg['sent_per_sec'])} | {k(lg['delivered_per_sec'])} "
                f"| {ms(lat.get('p50'))} | {ms(lat.get('p99'))} "
                f"| {r['peak_rss_kib'] / 1024:.1f} | {r['server_cpu_pct']:.0f} "
                f"| {us:.2f} | {k(cap)} | {lg.get('lost', 0)} "
                f"| {r['loadgen_cpu_pct']:.0f} | {ms(lag.get('p99'))} | {r['other_cpu_pct']:.0f} "
                f"| {r['loadavg_before']} |"
                if us is not None else
                f"| {r['name']} | {k(lg['sent_per_sec'])} | {k(lg['delivered_per_sec'])} | - | - | - | - | - | - | - | - | - | - | - |"
            )
        if hub and hub.get("loadgen"):
            out.append("")
            out.append("hubbub against each peer at this load (>1 favours hubbub):")
            out.append("")
            out.append("| peer | delivered/s ratio | p99 ratio (peer ÷ hubbub) | CPU per delivery ratio (peer ÷ hubbub) | peak RSS ratio (peer ÷ hubbub) |")
            out.append("|---|---|---|---|---|")
            hl = hub["loadgen"]
            for r in rows:
                if r is hub or not r.get("loadgen"):
                    continue
                pl = r["loadgen"]
                d_ratio = hl["delivered_per_sec"] / pl["delivered_per_sec"] if pl["delivered_per_sec"] else None
                hp = (hl.get("latency_us") or {}).get("p99")
                pp = (pl.get("latency_us") or {}).get("p99")
                p_ratio = pp / hp if hp and pp else None
                hu, pu = hub.get("server_us_per_delivery"), r.get("server_us_per_delivery")
                c_ratio = pu / hu if hu and pu else None
                m_ratio = r["peak_rss_kib"] / hub["peak_rss_kib"]
                f = lambda x: "-" if x is None else (f"{x:.2f}" if x >= 0.1 else f"{x:.3f}")
                out.append(f"| {r['name']} | {f(d_ratio)} | {f(p_ratio)} | {f(c_ratio)} | {f(m_ratio)} |")
        out.append("")

    idle = [r for r in results if r["mode"] == "idle"]
    if idle:
        out.append("### Idle joined connections")
        out.append("")
        out.append("| server | held | RSS before MiB | RSS held MiB | KiB per idle joined connection | load avg |")
        out.append("|---|---|---|---|---|---|")
        for r in idle:
            if "kib_per_conn" not in r or r["kib_per_conn"] is None:
                out.append(f"| {r['name']} | failed: {r.get('error', 'no hold samples')} |")
                continue
            out.append(
                f"| {r['name']} | {r['held']} | {r['rss_before_kib'] / 1024:.1f} "
                f"| {r['rss_hold_kib'] / 1024:.1f} | {r['kib_per_conn']:.2f} | {r['loadavg_before']} |"
            )
        out.append("")
    print("\n".join(out))
    return 0


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = ap.add_subparsers(dest="cmd_name", required=True)
    m = sub.add_parser("measure")
    m.add_argument("--name", required=True)
    m.add_argument("--server-pid", type=int, required=True)
    m.add_argument("--mode", choices=["load", "idle"], default="load")
    m.add_argument("--out", required=True)
    m.add_argument("--cpus", default="0,1", help="CPUs whose busy time is watched (other-CPU gauge)")
    m.add_argument("--level", type=int, default=0)
    m.add_argument("--label", default="")
    m.add_argument("cmd", nargs=argparse.REMAINDER)
    t = sub.add_parser("table")
    t.add_argument("dir")
    t.add_argument("--order", default="hubbub,bun,node-ws,go-gorilla,rust-tokio")
    a = ap.parse_args()
    if a.cmd_name == "measure":
        rc = measure(a)
        # Level and label travel with the result for the table step.
        p = Path(a.out)
        if p.exists():
            r = json.loads(p.read_text())
            r["level"], r["label"] = a.level, a.label
            p.write_text(json.dumps(r, indent=1) + "\n")
        return rc
    return table(a)


if __name__ == "__main__":
    sys.exit(main())
