#!/usr/bin/python3
"""Camera benchmark: CPU and memory of the gateway per RTSP camera.

GStreamer's gst-rtsp-server (tests/peers/rtsp_server.py) encodes one
1080p H.264 test pattern (x264, ~4 Mbit/s, 25 fps, keyframe every 2 s)
and serves it; the real `estate-gateway` binary opens `--cameras`
independent RTSP sessions to it (each receives the full stream, as from
separate cameras), keeps each camera's pre-alarm buffer (`--pre-s`), and
measures health. The encoder runs in the server's process, not the
gateway's.

Two runs: the gateway without cameras (baseline), then with them. Per
camera: CPU = (gateway CPU with cameras - baseline CPU) / cameras, in % of
one core; memory = (RSS with cameras - baseline RSS) / cameras, and the
same without the pre-alarm buffer the gateway reports in /metrics.

Output: one JSON object on the last line. Runs under the system python
(needs python3-gi for the server; the gateway is any binary).
"""

from __future__ import annotations

import argparse
import json
import os
import re
import socket
import subprocess
import sys
import tempfile
import time
import urllib.request

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
CLK = os.sysconf("SC_CLK_TCK")


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def cpu_ticks(pid: int) -> int:
    with open(f"/proc/{pid}/stat") as f:
        fields = f.read().rsplit(")", 1)[1].split()
    return int(fields[11]) + int(fields[12])  # utime + stime


def rss_bytes(pid: int) -> int:
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) * 1024
    return 0


def metrics(port: int) -> dict[str, float]:
    text = urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5).read().decode()
    out: dict[str, float] = {}
    for line in text.splitlines():
        m = re.match(r'^(estate_gateway_camera_\w+)\{camera="([^"]+)"\} (\S+)$', line)
        if m:
            out[f"{m.group(1)}/{m.group(2)}"] = float(m.group(3))
    return out


def config(tmp: str, web: int, url: str, cameras: int, pre_s: int) -> str:
    cams = "".join(
        f"""
[[cameras]]
id = "cam-{i}"
url = "{url}"
pre_s = {pre_s}
pre_buffer_bytes = 16777216
"""
        for i in range(cameras)
    )
    return f"""
[site]
id = "bench"
gateway = "gw"

[log]
level = "warn"
format = "text"

[journal]
path = "{tmp}/journal"

[uplink]
host = "127.0.0.1"
port = {free_port()}

[telemetry]
enabled = false

[web]
listen = "127.0.0.1:{web}"

[clips]
path = "{tmp}/clips"
min_free_bytes = 0
{cams}"""


def run_gateway(binary: str, cameras: int, url: str, pre_s: int, warmup: float, duration: float):
    with tempfile.TemporaryDirectory() as tmp:
        web = free_port()
        path = os.path.join(tmp, "gw.toml")
        with open(path, "w") as f:
            f.write(config(tmp, web, url, cameras, pre_s))
        log_path = os.path.join(tmp, "gw.log")
        log = open(log_path, "w")
        gw = subprocess.Popen([binary, "run", "--config", path], stdout=log, stderr=log)
        try:
            time.sleep(warmup)
            if gw.poll() is not None:
                sys.exit(f"gateway exited: {open(log_path).read()}")
            t0, c0 = time.monotonic(), cpu_ticks(gw.pid)
            time.sleep(duration)
            t1, c1 = time.monotonic(), cpu_ticks(gw.pid)
            rss = rss_bytes(gw.pid)
            m = metrics(web) if cameras else {}
        finally:
            gw.terminate()
            gw.wait(timeout=20)
        return 100.0 * (c1 - c0) / CLK / (t1 - t0), rss, m


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--binary", default=os.path.join(REPO, "target/release/estate-gateway"))
    ap.add_argument("--cameras", type=int, default=4)
    ap.add_argument("--width", type=int, default=1920)
    ap.add_argument("--height", type=int, default=1080)
    ap.add_argument("--fps", type=int, default=25)
    ap.add_argument("--bitrate-kbps", type=int, default=4000)
    ap.add_argument("--pre-s", type=int, default=10)
    ap.add_argument("--warmup", type=float, default=15.0)
    ap.add_argument("--duration", type=float, default=60.0)
    a = ap.parse_args()

    port = free_port()
    server = subprocess.Popen(
        ["/usr/bin/python3", os.path.join(REPO, "tests/peers/rtsp_server.py"),
         "--port", str(port), "--width", str(a.width), "--height", str(a.height),
         "--fps", str(a.fps), "--bitrate-kbps", str(a.bitrate_kbps), "--keyint", str(2 * a.fps)],
        stdout=subprocess.PIPE, text=True)
    try:
        line = server.stdout.readline()
        if not line.startswith("READY"):
            sys.exit(f"rtsp server did not start: {line!r}")
        url = f"rtsp://127.0.0.1:{port}/cam0"
        base_cpu, base_rss, _ = run_gateway(a.binary, 0, url, a.pre_s, a.warmup / 2, a.duration / 2)
        cpu, rss, m = run_gateway(a.binary, a.cameras, url, a.pre_s, a.warmup, a.duration)
    finally:
        server.terminate()
        server.wait(timeout=10)
    n = a.cameras
    fps = [m.get(f"estate_gateway_camera_fps/cam-{i}", 0.0) for i in range(n)]
    bps = [m.get(f"estate_gateway_camera_bitrate_bps/cam-{i}", 0.0) for i in range(n)]
    pre = [m.get(f"estate_gateway_camera_pre_buffer_bytes/cam-{i}", 0.0) for i in range(n)]
    per_cam_rss = (rss - base_rss) / n
    print(json.dumps({
        "bench": "cameras",
        "cameras": n,
        "stream": f"{a.width}x{a.height}@{a.fps} H.264 ~{a.bitrate_kbps} kbit/s",
        "measured_fps": [round(x, 1) for x in fps],
        "measured_mbit_s": [round(x / 1e6, 2) for x in bps],
        "cpu_pct_one_core_total": round(cpu, 2),
        "cpu_pct_one_core_baseline": round(base_cpu, 2),
        "cpu_pct_one_core_per_camera": round((cpu - base_cpu) / n, 3),
        "rss_mib_total": round(rss / 2**20, 1),
        "rss_mib_baseline": round(base_rss / 2**20, 1),
        "rss_mib_per_camera": round(per_cam_rss / 2**20, 2),
        "pre_buffer_mib_per_camera": round(sum(pre) / n / 2**20, 2),
        "rss_mib_per_camera_without_pre_buffer": round((per_cam_rss - sum(pre) / n) / 2**20, 2),
        "duration_s": a.duration,
    }))


if __name__ == "__main__":
    main()
