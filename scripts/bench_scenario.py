#!/usr/bin/env python3
"""Scenario benchmark of the whole gateway against real peers.

N Modbus TCP devices (pymodbus servers, in this process) are polled by the
real `estate-gateway` binary every second for holding registers 0..R-1 and
coil 0, with an alarm rule on the coil; the gateway forwards to a real
mosquitto at QoS 1. Each device's coil flips at random every 2-6 s. Over the
measured window this prints the gateway process's CPU seconds, its peak RSS,
its own delay from the device's reply to receipt by a subscriber on the
broker, and lost alarms (flips without their event).

The delay runs from the moment the simulated device answered the first
coil read after a flip (its datastore read, microseconds, wall clock) to
the subscriber's receive time of that flip's event: every device's events
are matched to its flips in order. `delay_ts_ms_*` is the older measure,
from the event's `ts` (taken when the reply arrived, truncated to the
millisecond, so up to 1 ms over).

Output: one JSON object on the last line.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import random
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from datetime import datetime

from pymodbus.server import ModbusTcpServer
from pymodbus.simulator import DataType, SimData, SimDevice

CLK_TCK = os.sysconf("SC_CLK_TCK")


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def cpu_seconds(pid: int) -> float:
    with open(f"/proc/{pid}/stat") as f:
        fields = f.read().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / CLK_TCK  # utime + stime


class CpuClock:
    """The gateway's CPU seconds, all threads (those that ended too).

    Precise (nanoseconds) when the process can be put in a cgroup of its
    own: cgroup v2, or v1's cpuacct (needs root). Otherwise from
    /proc/PID/stat, in clock ticks (10 ms): about +-0.01 s on a window.
    """

    def __init__(self, pid: int):
        self.pid = pid
        self.dir = None
        self.source = "proc-ticks"
        name = f"estate-bench-{os.getpid()}-{pid}"
        # (hierarchy, file that marks it, usage file in the new group)
        for base, marker, usage in (
            ("/sys/fs/cgroup/cpuacct", "cpuacct.usage", "cpuacct.usage"),
            ("/sys/fs/cgroup", "cgroup.controllers", "cpu.stat"),
        ):
            d = os.path.join(base, name)
            if not os.path.exists(os.path.join(base, marker)):
                continue
            try:
                os.mkdir(d)
                with open(os.path.join(d, "cgroup.procs"), "w") as f:
                    f.write(str(pid))
                self.dir, self.usage = d, usage
                self.source = "cgroup"
                break
            except OSError:
                try:
                    os.rmdir(d)
                except OSError:
                    pass

    def seconds(self) -> float:
        if self.dir is None:
            return cpu_seconds(self.pid)
        with open(os.path.join(self.dir, self.usage)) as f:
            text = f.read()
        if self.usage == "cpuacct.usage":
            return int(text) / 1e9
        for line in text.splitlines():
            if line.startswith("usage_usec "):
                return int(line.split()[1]) / 1e6
        return cpu_seconds(self.pid)

    def close(self) -> None:
        if self.dir is not None:
            try:
                os.rmdir(self.dir)
            except OSError:
                pass


def proc_io(pid: int) -> dict:
    """The process's /proc/PID/io counters (write_bytes: to the block layer)."""
    out = {}
    with open(f"/proc/{pid}/io") as f:
        for line in f:
            k, _, v = line.partition(":")
            out[k.strip()] = int(v)
    return out


def rss_kib(pid: int, key: str) -> int:
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            if line.startswith(key + ":"):
                return int(line.split()[1])
    return 0


def config(args, ports, broker_port, journal) -> str:
    out = [
        '[site]\nid = "bench"\ngateway = "gw-bench"\n',
        '[log]\nlevel = "warn"\n',
        # The web server as by default, on a free port: runs that share the
        # machine would otherwise race for 127.0.0.1:8080, and the loser
        # runs without its web server.
        f'[web]\nlisten = "127.0.0.1:{free_port()}"\n',
        f'[journal]\npath = "{journal}"\nfsync = {"false" if args.no_fsync else "true"}\n'
        + (f"telemetry_flush_s = {args.checkpoint_s}\n" if args.checkpoint_s else "")
        + (f"max_bytes = {args.max_bytes}\n" if args.max_bytes else ""),
        f'[uplink]\nhost = "127.0.0.1"\nport = {broker_port}\nkeepalive_s = 5\nheartbeat_s = 15\n',
        f"[telemetry]\nevery_poll = {'true' if args.every_poll else 'false'}\nmax_interval_s = 300\nbatch_s = 1\n",
    ]
    # The devices are one model: their points are one profile, as a
    # technician would write it.
    out.append('[[profiles]]\nid = "bench-device"\n')
    out.append('[[profiles.points]]\nid = "alarm"\nregister = "coil"\naddress = 0\n')
    for r in range(args.registers):
        out.append(f'[[profiles.points]]\nid = "r{r}"\nregister = "holding"\naddress = {r}\ntype = "u16"\n')
    for i, port in enumerate(ports):
        out.append(
            f'[[devices]]\nid = "dev-{i}"\ncategory = "perimeter"\nzone = "zone-{i}"\n'
            f'profile = "bench-device"\npoll_interval_s = 1\ntimeout_s = 1\n'
            f'[devices.modbus]\nhost = "127.0.0.1"\nport = {port}\n'
        )
        out.append(
            f'[[alarms]]\npoint = "dev-{i}/alarm"\nequals = true\npriority = 2\nmessage = "Zone {i} breach"\n'
        )
    return "\n".join(out)


class Subscriber:
    """The platform's side: a separate mosquitto_sub process stamps each
    message with its receive time (`%U`), so this process's own load does not
    add to the measured delay."""

    def __init__(self, port: int, out_path: str):
        self.out_path = out_path
        self.proc = subprocess.Popen(
            [
                shutil.which("mosquitto_sub") or "/usr/bin/mosquitto_sub",
                "-h", "127.0.0.1", "-p", str(port), "-q", "1", "-i", "bench-platform",
                "-t", "estate/v1/bench/gw-bench/events", "-F", "%U %p",
            ],
            stdout=open(out_path, "w"),
            stderr=subprocess.DEVNULL,
        )

    def stop(self) -> list[tuple[float, dict]]:
        self.proc.terminate()
        self.proc.wait(timeout=5)
        events = []
        with open(self.out_path) as f:
            for line in f:
                stamp, _, payload = line.partition(" ")
                try:
                    events.append((float(stamp), json.loads(payload)))
                except ValueError:
                    pass
        return events


def parse_ts(s: str) -> float:
    return datetime.fromisoformat(s.replace("Z", "+00:00")).timestamp()


def percentile(xs, p):
    if not xs:
        return None
    xs = sorted(xs)
    k = min(len(xs) - 1, max(0, round(p / 100 * (len(xs) - 1))))
    return xs[k]


def watch_coil_replies(server, i: int, pending: list, replied: list) -> None:
    """Note the wall-clock time at which device `i` answers a coil read
    while a flip of its coil is `pending` (the reply that carries it)."""
    ctx = server.context
    read = ctx.async_getValues

    async def get(device_id, func_code, address, count=1):
        values = await read(device_id, func_code, address, count)
        if func_code == 1 and address == 0 and pending[i]:
            pending[i] = False
            replied[i].append(time.time())
        return values

    ctx.async_getValues = get


async def run(args) -> dict:
    tmp = tempfile.mkdtemp(prefix="estate-bench-")
    broker_port = free_port()
    with open(f"{tmp}/mosquitto.conf", "w") as f:
        f.write(f"listener {broker_port} 127.0.0.1\nallow_anonymous true\npersistence false\nmax_queued_messages 100000\n")
    broker = subprocess.Popen([args.mosquitto, "-c", f"{tmp}/mosquitto.conf"], stderr=subprocess.DEVNULL)

    servers, ports = [], []
    pending = [False] * args.devices
    replied: list[list[float]] = [[] for _ in range(args.devices)]
    for i in range(args.devices):
        port = free_port()
        regs = [random.randrange(0, 65536) for _ in range(max(args.registers, 1))]
        dev = SimDevice(
            id=1,
            simdata=(
                [SimData(0, count=16, values=False, datatype=DataType.BITS)],
                [SimData(0, count=16, values=False, datatype=DataType.BITS)],
                [SimData(0, count=len(regs), values=regs, datatype=DataType.REGISTERS)],
                [SimData(0, count=16, values=0, datatype=DataType.REGISTERS)],
            ),
        )
        s = ModbusTcpServer(dev, address=("127.0.0.1", port))
        watch_coil_replies(s, i, pending, replied)
        await s.serve_forever(background=True)
        servers.append(s)
        ports.append(port)

    journal = args.journal_dir or f"{tmp}/journal"
    with open(f"{tmp}/gw.toml", "w") as f:
        f.write(config(args, ports, broker_port, journal))
    time.sleep(0.3)
    sub = Subscriber(broker_port, f"{tmp}/received.txt")
    gw = subprocess.Popen([args.binary, "run", "--config", f"{tmp}/gw.toml"], stderr=open(f"{tmp}/gw.log", "w"))
    clock = CpuClock(gw.pid)
    await asyncio.sleep(args.warmup)

    state = [False] * args.devices
    next_flip = [time.monotonic() + random.uniform(0, args.first_flip_max_s) for _ in range(args.devices)]
    flips = 0
    cpu0 = clock.seconds()
    io0 = proc_io(gw.pid)
    t0 = time.monotonic()
    end = t0 + args.duration
    next_change = time.monotonic()
    while time.monotonic() < end:
        now = time.monotonic()
        if args.changing and now >= next_change:
            # Analog values drifting: a few registers per device change each second.
            next_change = now + args.change_interval_s
            for i in range(args.devices):
                for _ in range(args.changing):
                    addr = random.randrange(0, max(args.registers, 1))
                    await servers[i].context.async_setValues(1, 6, addr, [random.randrange(0, 65536)])
        for i in range(args.devices):
            if now >= next_flip[i]:
                state[i] = not state[i]
                await servers[i].context.async_setValues(1, 5, 0, [state[i]])
                pending[i] = True
                flips += 1
                next_flip[i] = now + random.uniform(args.flip_min_s, args.flip_max_s)
        await asyncio.sleep(0.02)
    cpu = clock.seconds() - cpu0
    elapsed = time.monotonic() - t0
    io1 = proc_io(gw.pid)
    await asyncio.sleep(3)  # the last flips' alarms
    peak_rss = rss_kib(gw.pid, "VmHWM")
    rss_now = rss_kib(gw.pid, "VmRSS")
    gw.send_signal(signal.SIGTERM)
    try:
        gw.wait(timeout=20)
    except subprocess.TimeoutExpired:
        gw.kill()
        gw.wait()
    clock.close()
    events = sub.stop()
    broker.terminate()
    for s in servers:
        await s.shutdown()

    alarms = [(t, e) for t, e in events if e.get("kind") in ("alarm.raised", "alarm.cleared")]
    delays_ts = [(t - parse_ts(e["ts"])) * 1000.0 for t, e in alarms]
    # Each device's events in the order received (its seq order), matched
    # to its flips' replies in order.
    by_device: dict[str, list[float]] = {}
    for t, e in alarms:
        by_device.setdefault(e.get("source", {}).get("device", ""), []).append(t)
    delays = []
    for i in range(args.devices):
        for t, at in zip(by_device.get(f"dev-{i}", []), replied[i]):
            delays.append((t - at) * 1000.0)
    seqs = [e["seq"] for _, e in events]
    # Each flip must produce exactly one raised/cleared event; events of
    # flips made during warmup don't exist (flips start after warmup).
    lost = max(0, flips - len({e["id"] for _, e in alarms}))
    result = {
        "scenario": f"{args.devices} devices x {args.registers} registers + coil @1Hz, "
        + ("every value every poll" if args.every_poll else "report by exception")
        + (", journal fsync off" if args.no_fsync else "")
        + (f", {args.changing} registers/device changing every {args.change_interval_s:g} s" if args.changing else "")
        + (f", coil flips every {args.flip_min_s:g}-{args.flip_max_s:g} s" if (args.flip_min_s, args.flip_max_s) != (2, 6) else ""),
        "window_s": round(elapsed, 1),
        "cpu_s": round(cpu, 3),
        "cpu_source": clock.source,
        "cpu_s_per_60s": round(cpu * 60.0 / elapsed, 3),
        "cpu_pct_one_core": round(cpu / elapsed * 100.0, 2),
        "peak_rss_mib": round(peak_rss / 1024.0, 2),
        "rss_end_mib": round(rss_now / 1024.0, 2),
        "flips": flips,
        "alarm_events": len(alarms),
        "lost_alarms": lost,
        "delay_ms_p50": percentile(delays, 50) and round(percentile(delays, 50), 2),
        "delay_ms_p99": percentile(delays, 99) and round(percentile(delays, 99), 2),
        "delay_ts_ms_p50": percentile(delays_ts, 50) and round(percentile(delays_ts, 50), 2),
        "delay_ts_ms_p99": percentile(delays_ts, 99) and round(percentile(delays_ts, 99), 2),
        "seq_gap_free": seqs == list(range(seqs[0], seqs[0] + len(seqs))) if seqs else None,
        # Bytes the gateway sent to the block device (write_bytes) and passed
        # to write calls (wchar; includes the log on stderr), extrapolated.
        "write_bytes": io1["write_bytes"] - io0["write_bytes"],
        "write_mb_per_day": round((io1["write_bytes"] - io0["write_bytes"]) * 86400.0 / elapsed / 1e6, 1),
        "wchar_mb_per_day": round((io1["wchar"] - io0["wchar"]) * 86400.0 / elapsed / 1e6, 1),
    }
    if args.keep:
        result["dir"] = tmp
    else:
        shutil.rmtree(tmp, ignore_errors=True)
    return result


def main():
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--binary", default="target/release/estate-gateway")
    ap.add_argument("--mosquitto", default=shutil.which("mosquitto") or "/usr/sbin/mosquitto")
    ap.add_argument("--devices", type=int, default=50)
    ap.add_argument("--registers", type=int, default=100)
    ap.add_argument("--duration", type=float, default=60)
    ap.add_argument("--warmup", type=float, default=5)
    ap.add_argument("--every-poll", action="store_true")
    ap.add_argument("--no-fsync", action="store_true", help="journal fsync off (to show its cost)")
    ap.add_argument("--first-flip-max-s", type=float, default=4.0, help="each coil's first flip within this many seconds")
    ap.add_argument("--change-interval-s", type=float, default=1.0, help="seconds between drifts of the --changing registers")
    ap.add_argument("--checkpoint-s", type=int, default=0, help="journal telemetry_flush_s (checkpoint interval)")
    ap.add_argument("--keep", action="store_true", help="keep the temp dir (logs, journal)")
    ap.add_argument("--journal-dir", help="journal directory (default: in the temp dir), e.g. on a small filesystem")
    ap.add_argument("--max-bytes", type=int, default=0, help="journal max_bytes (default: the gateway's)")
    ap.add_argument("--changing", type=int, default=0, help="registers per device given a new value every second")
    ap.add_argument("--flip-min-s", type=float, default=2, help="shortest time between a device's coil flips")
    ap.add_argument("--flip-max-s", type=float, default=6, help="longest time between a device's coil flips")
    args = ap.parse_args()
    print(json.dumps(asyncio.run(run(args))))


if __name__ == "__main__":
    sys.exit(main())
