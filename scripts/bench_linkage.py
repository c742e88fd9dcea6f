#!/usr/bin/env python3
"""Fire linkage benchmark: fire trip → linked door-release write.

Two Modbus TCP devices run in this process (pymodbus servers): a fire panel
with a fire zone on coil 3, and an access-control panel with an escape-door
release on coil 9. The real `estate-gateway` binary polls the fire panel
every `--poll-ms` and has a linkage rule: fire raised → write the release.
The uplink points at a port where nothing listens (the platform is
unreachable, as in a fire that took the network down).

Each trip sets the fire coil in the panel's datastore (t0); the access
panel's datastore records when the gateway's write of the release arrives
(t1, stamped inside the server as the write is applied). Trips land at
random phases of the poll cycle. Between trips the fire coil and the
release are reset and the benchmark waits until the gateway has polled the
panel twice (so the alarm has returned and the next trip raises it again).
`missed` counts trips without a release write within poll interval + 2 s.

Output: one JSON object on the last line (milliseconds).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import random
import socket
import subprocess
import sys
import tempfile
import time

from pymodbus.server import ModbusTcpServer
from pymodbus.simulator import DataType, SimData, SimDevice

FIRE_COIL = 3
DOOR_COIL = 9


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def device() -> SimDevice:
    bits = lambda: [SimData(0, count=64, values=False, datatype=DataType.BITS)]  # noqa: E731
    regs = lambda: [SimData(0, count=64, values=0, datatype=DataType.REGISTERS)]  # noqa: E731
    return SimDevice(id=1, simdata=(bits(), bits(), regs(), regs()))


class Recorder:
    """The access panel's datastore, stamping the gateway's release writes."""

    def __init__(self, core):
        self.core = core
        self.writes: list[float] = []
        self.event = asyncio.Event()

    def device_ids(self):
        return self.core.device_ids()

    async def async_getValues(self, device_id, func_code, address, count=1):
        return await self.core.async_getValues(device_id, func_code, address, count)

    async def async_setValues(self, device_id, func_code, address, values):
        if func_code in (5, 15) and address == DOOR_COIL and values and values[0]:
            self.writes.append(time.perf_counter())
            self.event.set()
        return await self.core.async_setValues(device_id, func_code, address, values)


class ReadCounter:
    """The fire panel's datastore, counting the gateway's polls."""

    def __init__(self, core):
        self.core = core
        self.reads = 0

    def device_ids(self):
        return self.core.device_ids()

    async def async_getValues(self, device_id, func_code, address, count=1):
        self.reads += 1
        return await self.core.async_getValues(device_id, func_code, address, count)

    async def async_setValues(self, device_id, func_code, address, values):
        return await self.core.async_setValues(device_id, func_code, address, values)


def config(fire_port, door_port, poll_ms, journal) -> str:
    return f"""
[site]
id = "bench"
gateway = "gw-bench"
[log]
level = "warn"
[journal]
path = "{journal}"
[uplink]
host = "127.0.0.1"
port = {free_port()}
reconnect_min_s = 1
reconnect_max_s = 5
[telemetry]
enabled = false

[[devices]]
id = "fire-panel"
category = "fire"
zone = "villa-12"
poll_interval_s = {poll_ms / 1000}
timeout_s = 0.5
[devices.modbus]
host = "127.0.0.1"
port = {fire_port}
[[devices.points]]
id = "zone-3"
register = "coil"
address = {FIRE_COIL}

[[devices]]
id = "access-panel"
category = "access"
zone = "villa-12"
poll_interval_s = 1
timeout_s = 0.5
[devices.modbus]
host = "127.0.0.1"
port = {door_port}
[[devices.points]]
id = "escape-release"
register = "coil"
address = {DOOR_COIL}
writable = true

[[alarms]]
point = "fire-panel/zone-3"
equals = true
priority = 1
latching = false
message = "Fire: villa 12"

[[linkage]]
id = "fire-release-escape-doors"
category = "fire"
[[linkage.actions]]
type = "write"
point = "access-panel/escape-release"
value = true
"""


def percentile(xs, p):
    if not xs:
        return None
    s = sorted(xs)
    k = min(len(s) - 1, max(0, round(p / 100 * (len(s) - 1))))
    return s[k]


async def run(args) -> dict:
    tmp = tempfile.mkdtemp(prefix="bench-linkage-")
    fire_port, door_port = free_port(), free_port()
    fire = ModbusTcpServer([device()], address=("127.0.0.1", fire_port))
    door = ModbusTcpServer([device()], address=("127.0.0.1", door_port))
    rec = Recorder(door.context)
    door.context = rec
    polls = ReadCounter(fire.context)
    fire.context = polls
    await fire.serve_forever(background=True)
    await door.serve_forever(background=True)
    with open(f"{tmp}/gw.toml", "w") as f:
        f.write(config(fire_port, door_port, args.poll_ms, f"{tmp}/journal"))
    gw = subprocess.Popen(
        [args.binary, "run", "--config", f"{tmp}/gw.toml"],
        stderr=open(f"{tmp}/gw.log", "w"),
    )
    delays = []
    missed = 0
    try:
        await asyncio.sleep(1.5)  # the gateway connects and polls
        poll = args.poll_ms / 1000
        for _ in range(args.trips):
            rec.event.clear()
            t0 = time.perf_counter()
            await polls.core.async_setValues(1, 5, FIRE_COIL, [True])
            try:
                await asyncio.wait_for(rec.event.wait(), timeout=poll + 2.0)
                delays.append((rec.writes[-1] - t0) * 1000)
            except asyncio.TimeoutError:
                missed += 1
            # Reset; wait until the gateway polled the panel twice since (the
            # alarm has returned), then land the next trip at a random phase.
            await polls.core.async_setValues(1, 5, FIRE_COIL, [False])
            await rec.core.async_setValues(1, 5, DOOR_COIL, [False])
            seen = polls.reads
            while polls.reads < seen + 2:
                await asyncio.sleep(0.005)
            await asyncio.sleep(random.uniform(0, poll))
    finally:
        gw.terminate()
        gw.wait(timeout=10)
    return {
        "bench": "fire_trip_to_door_release",
        "poll_interval_ms": args.poll_ms,
        "trips": args.trips,
        "missed": missed,
        "delay_ms_p50": round(percentile(delays, 50), 2) if delays else None,
        "delay_ms_p99": round(percentile(delays, 99), 2) if delays else None,
        "delay_ms_max": round(max(delays), 2) if delays else None,
        "target_p99_ms": args.poll_ms + 20,
    }


def main():
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--binary", default="target/release/estate-gateway")
    ap.add_argument("--poll-ms", type=int, default=100)
    ap.add_argument("--trips", type=int, default=200)
    args = ap.parse_args()
    import logging

    logging.getLogger("pymodbus").setLevel(logging.CRITICAL)
    print(json.dumps(asyncio.run(run(args))))


if __name__ == "__main__":
    sys.exit(main())
