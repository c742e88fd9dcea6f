#!/usr/bin/env python3
"""Web page benchmark: API latency under 50 concurrent clients while the
gateway polls 200 Modbus TCP devices, the web server's extra RSS, and
alarm flip -> visible on the console's live stream.

The real `estate-gateway` binary polls N pymodbus servers (this process)
every second (10 holding registers + a coil each) plus one door contact
polled every 100 ms, forwarding to a real mosquitto. A technician account
is made with `estate-gateway user add`. Then:

1. RSS (VmRSS) of the gateway, polling, with the web server listening but
   never asked (after warmup).
2. `wrk` with 50 connections for `--duration` s on each of
   /api/v1/dashboard, /api/v1/alarms, /api/v1/devices (the 200-device
   table: ~2,200 points) with the session cookie; wrk's latency
   percentiles. Meanwhile the door is flipped every 0.5 s and an SSE
   client on /api/v1/alarms/stream stamps when each flip's alarm list
   arrives: flip -> console p50/p99 (includes the 100 ms poll).
3. RSS after the load: the web server's extra RSS is the difference.

Output: one JSON object on the last line.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import re
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time

from pymodbus.server import ModbusTcpServer
from pymodbus.simulator import DataType, SimData, SimDevice

PASSWORD = "bench-passw0rd-long"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def rss_kib(pid: int, key: str = "VmRSS") -> int:
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            if line.startswith(key + ":"):
                return int(line.split()[1])
    return 0


def percentile(xs, p):
    if not xs:
        return None
    xs = sorted(xs)
    return xs[min(len(xs) - 1, max(0, round(p / 100 * (len(xs) - 1))))]


def config(args, ports, door_port, broker_port, web_port, journal) -> str:
    out = [
        '[site]\nid = "bench"\ngateway = "gw-bench"\n',
        '[log]\nlevel = "warn"\n',
        f'[journal]\npath = "{journal}"\n',
        f'[uplink]\nhost = "127.0.0.1"\nport = {broker_port}\nkeepalive_s = 5\nheartbeat_s = 15\n',
        "[telemetry]\nmax_interval_s = 300\nbatch_s = 1\n",
        f'[web]\nlisten = "127.0.0.1:{web_port}"\n',
        '[[profiles]]\nid = "bench-device"\n',
        '[[profiles.points]]\nid = "alarm"\nregister = "coil"\naddress = 0\n',
    ]
    for r in range(args.registers):
        out.append(f'[[profiles.points]]\nid = "r{r}"\nregister = "holding"\naddress = {r}\ntype = "u16"\n')
    for i, port in enumerate(ports):
        out.append(
            f'[[devices]]\nid = "dev-{i}"\ncategory = "perimeter"\nprofile = "bench-device"\n'
            f'poll_interval_s = 1\ntimeout_s = 1\n[devices.modbus]\nhost = "127.0.0.1"\nport = {port}\n'
        )
    out.append(
        f'[[devices]]\nid = "door"\ncategory = "intrusion"\npoll_interval_s = 0.1\ntimeout_s = 0.5\n'
        f'[devices.modbus]\nhost = "127.0.0.1"\nport = {door_port}\n'
        '[[devices.points]]\nid = "contact"\nregister = "coil"\naddress = 0\n'
        '[[alarms]]\npoint = "door/contact"\nequals = true\npriority = 1\nmessage = "Door forced"\nlatching = false\n'
    )
    return "\n".join(out)


def http(port: int, method: str, path: str, body: str = "", headers: dict | None = None):
    s = socket.create_connection(("127.0.0.1", port))
    h = {"Host": "127.0.0.1", "Connection": "close", **(headers or {})}
    if body:
        h["Content-Type"] = "application/json"
        h["Content-Length"] = str(len(body))
    req = f"{method} {path} HTTP/1.1\r\n" + "".join(f"{k}: {v}\r\n" for k, v in h.items()) + "\r\n" + body
    s.sendall(req.encode())
    data = b""
    while chunk := s.recv(65536):
        data += chunk
    s.close()
    head, _, rest = data.partition(b"\r\n\r\n")
    return head.decode(), rest.decode(errors="replace")


class Stream(threading.Thread):
    """SSE client: the receive time of every `alarms` event and whether the
    door alarm is active in it (its condition present)."""

    def __init__(self, port: int, cookie: str):
        super().__init__(daemon=True)
        self.sock = socket.create_connection(("127.0.0.1", port))
        self.sock.sendall(
            f"GET /api/v1/alarms/stream HTTP/1.1\r\nHost: x\r\nCookie: eg_session={cookie}\r\n\r\n".encode()
        )
        self.events: list[tuple[float, bool]] = []
        self.lock = threading.Lock()

    def run(self):
        buf = b""
        while True:
            try:
                chunk = self.sock.recv(65536)
            except OSError:
                return
            if not chunk:
                return
            now = time.monotonic()
            buf += chunk
            while b"\n" in buf:
                line, _, buf = buf.partition(b"\n")
                if line.startswith(b"data: "):
                    alarms = json.loads(line[6:])
                    door = next((a for a in alarms if a["key"] == "door/contact"), None)
                    active = door is not None and door["state"] in ("active_unacked", "active_acked")
                    with self.lock:
                        self.events.append((now, active))


def wrk(port: int, cookie: str, path: str, secs: int, conns: int) -> dict:
    out = subprocess.run(
        ["wrk", "-t2", f"-c{conns}", f"-d{secs}s", "--latency", "-H", f"Cookie: eg_session={cookie}",
         f"http://127.0.0.1:{port}{path}"],
        capture_output=True, text=True, check=True,
    ).stdout
    def ms(v: str) -> float:
        m = re.match(r"([\d.]+)(us|ms|s)", v)
        x = float(m.group(1))
        return {"us": x / 1000, "ms": x, "s": x * 1000}[m.group(2)]
    lat = dict(re.findall(r"^\s+(50|99)%\s+(\S+)", out, re.M))
    rps = re.search(r"Requests/sec:\s+([\d.]+)", out)
    errors = re.search(r"Non-2xx or 3xx responses: (\d+)", out)
    return {
        "path": path,
        "p50_ms": round(ms(lat["50"]), 2),
        "p99_ms": round(ms(lat["99"]), 2),
        "req_per_s": float(rps.group(1)) if rps else None,
        "non_2xx": int(errors.group(1)) if errors else 0,
    }


async def run(args) -> dict:
    tmp = tempfile.mkdtemp(prefix="estate-bench-web-")
    broker_port, web_port = free_port(), free_port()
    with open(f"{tmp}/mosquitto.conf", "w") as f:
        f.write(f"listener {broker_port} 127.0.0.1\nallow_anonymous true\npersistence false\n")
    broker = subprocess.Popen([args.mosquitto, "-c", f"{tmp}/mosquitto.conf"], stderr=subprocess.DEVNULL)

    def device(n_regs: int):
        return SimDevice(
            id=1,
            simdata=(
                [SimData(0, count=16, values=False, datatype=DataType.BITS)],
                [SimData(0, count=16, values=False, datatype=DataType.BITS)],
                [SimData(0, count=max(n_regs, 1), values=7, datatype=DataType.REGISTERS)],
                [SimData(0, count=16, values=0, datatype=DataType.REGISTERS)],
            ),
        )

    servers, ports = [], []
    for _ in range(args.devices):
        port = free_port()
        s = ModbusTcpServer(device(args.registers), address=("127.0.0.1", port))
        await s.serve_forever(background=True)
        servers.append(s)
        ports.append(port)
    door_port = free_port()
    door = ModbusTcpServer(device(1), address=("127.0.0.1", door_port))
    await door.serve_forever(background=True)

    cfg = f"{tmp}/gw.toml"
    with open(cfg, "w") as f:
        f.write(config(args, ports, door_port, broker_port, web_port, f"{tmp}/journal"))
    subprocess.run([args.binary, "user", "add", "bench", "--role", "technician", "--config", cfg],
                   input=PASSWORD + "\n", text=True, check=True, capture_output=True)
    gw = subprocess.Popen([args.binary, "run", "--config", cfg], stderr=open(f"{tmp}/gw.log", "w"))
    await asyncio.sleep(args.warmup)
    rss_before = rss_kib(gw.pid)

    head, body = http(web_port, "POST", "/api/v1/session", json.dumps({"name": "bench", "password": PASSWORD}))
    cookie = re.search(r"eg_session=([0-9a-f]+)", head).group(1)
    stream = Stream(web_port, cookie)
    stream.start()

    # Flip the door every 0.5 s while wrk runs (in threads).
    results: list[dict] = []
    done = threading.Event()

    windows: list[tuple[str, float, float]] = []

    def load():
        for path in ("/api/v1/dashboard", "/api/v1/alarms", "/api/v1/devices"):
            t0 = time.monotonic()
            results.append(wrk(web_port, cookie, path, args.duration, args.clients))
            windows.append((path, t0, time.monotonic()))
        done.set()

    threading.Thread(target=load, daemon=True).start()
    flips: list[tuple[float, bool]] = []
    state = False
    await asyncio.sleep(1)
    while not done.is_set():
        state = not state
        t = time.monotonic()
        await door.context.async_setValues(1, 5, 0, [state])
        flips.append((t, state))
        await asyncio.sleep(0.5)
    await asyncio.sleep(1)
    rss_after = rss_kib(gw.pid)
    peak = rss_kib(gw.pid, "VmHWM")

    # Each flip -> the first stream event after it whose door state matches.
    with stream.lock:
        evs = list(stream.events)
    delays, missed = [], 0
    per_route: dict[str, list[float]] = {p: [] for p, _, _ in windows}
    for t, want in flips:
        hit = next((et for et, has in evs if et >= t and has == want), None)
        if hit is None:
            missed += 1
        else:
            d = (hit - t) * 1000.0
            delays.append(d)
            for p, a, b in windows:
                if a <= t < b:
                    per_route[p].append(d)
    for r in results:
        ds = per_route.get(r["path"], [])
        r["flip_to_console_ms_p50"] = percentile(ds, 50) and round(percentile(ds, 50), 1)
        r["flip_to_console_ms_p99"] = percentile(ds, 99) and round(percentile(ds, 99), 1)

    gw.send_signal(signal.SIGTERM)
    try:
        gw.wait(timeout=20)
    except subprocess.TimeoutExpired:
        gw.kill()
    broker.terminate()
    for s in servers + [door]:
        await s.shutdown()
    shutil.rmtree(tmp, ignore_errors=True)
    return {
        "scenario": f"{args.devices} devices x ({args.registers} registers + coil) @1Hz + door @10Hz, "
        f"{args.clients} API clients x {args.duration} s per route",
        "api": results,
        "rss_idle_web_mib": round(rss_before / 1024, 2),
        "rss_after_load_mib": round(rss_after / 1024, 2),
        "web_extra_rss_mib": round((rss_after - rss_before) / 1024, 2),
        "peak_rss_mib": round(peak / 1024, 2),
        "flips": len(flips),
        "flips_missed": missed,
        "flip_to_console_ms_p50": percentile(delays, 50) and round(percentile(delays, 50), 1),
        "flip_to_console_ms_p99": percentile(delays, 99) and round(percentile(delays, 99), 1),
    }


def main():
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--binary", default="target/release/estate-gateway")
    ap.add_argument("--mosquitto", default=shutil.which("mosquitto") or "/usr/sbin/mosquitto")
    ap.add_argument("--devices", type=int, default=200)
    ap.add_argument("--registers", type=int, default=10)
    ap.add_argument("--clients", type=int, default=50)
    ap.add_argument("--duration", type=int, default=20)
    ap.add_argument("--warmup", type=float, default=8)
    args = ap.parse_args()
    print(json.dumps(asyncio.run(run(args))))


if __name__ == "__main__":
    sys.exit(main())
