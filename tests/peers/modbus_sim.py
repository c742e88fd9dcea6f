#!/usr/bin/env python3
"""Modbus device simulator for end-to-end tests, built on pymodbus' own servers.

One datastore, several ways in:

* ``--tcp-port N[,N…]``: Modbus TCP servers (the devices under test); several
  ports give several devices on one datastore (benchmarks).
* ``--rtu-port PATH``: a Modbus RTU server on a serial device (e.g. one end
  of a socat pty pair), answering the unit ids of ``--units``.
* ``--control-port N``: a Modbus TCP server on the SAME datastore, so a test
  can change values (write coils/registers) while the gateway reads them over
  RTU or TCP.

With ``--changing``, every read of holding registers first writes a new
value (a read counter) to holding register 0 of its unit, so every poll of
a device sees changed values (benchmarks of decoding).

With ``--slow UNIT=SECONDS``, every read of that unit answers SECONDS late
(a slave slower than the gateway's timeout). The wait blocks the whole
simulator, so the late reply goes out before the answer to any request sent
after it.

Every unit id in ``--units`` has coils, discrete inputs, holding and input
registers at addresses 0..255, all zero at start. A request for a unit id not
in ``--units`` gets no reply at all (like an absent slave on an RS-485 line).

Prints ``READY`` on stdout once every server listens. Stops on SIGTERM/SIGINT.
"""

from __future__ import annotations

import argparse
import asyncio
import logging
import signal
import sys
import time

from pymodbus.exceptions import NoSuchIdException
from pymodbus.server import ModbusSerialServer, ModbusTcpServer
from pymodbus.simulator import DataType, SimData, SimDevice

SIZE = 256


class SharedStore:
    """The servers' datastore: pymodbus' SimCore, shared by every server, with
    unknown unit ids raising NoSuchIdException (so, with
    ``ignore_missing_devices``, the server stays silent)."""

    def __init__(self, core, units, changing=False, slow=None):
        self.core = core
        self.units = set(units)
        self.changing = changing
        self.slow = slow or {}
        self.reads = 0

    def device_ids(self):
        return list(self.units)

    def _check(self, device_id):
        if device_id not in self.units:
            raise NoSuchIdException(f"unit {device_id} is not simulated")

    async def async_getValues(self, device_id, func_code, address, count=1):
        self._check(device_id)
        if device_id in self.slow:
            time.sleep(self.slow[device_id])
        if self.changing and func_code == 3:
            self.reads = (self.reads + 1) & 0xFFFF
            await self.core.async_setValues(device_id, 6, 0, [self.reads])
        return await self.core.async_getValues(device_id, func_code, address, count)

    async def async_setValues(self, device_id, func_code, address, values):
        self._check(device_id)
        return await self.core.async_setValues(device_id, func_code, address, values)


def device(unit: int) -> SimDevice:
    bits = lambda: [SimData(0, count=SIZE, values=False, datatype=DataType.BITS)]  # noqa: E731
    regs = lambda: [SimData(0, count=SIZE, values=0, datatype=DataType.REGISTERS)]  # noqa: E731
    return SimDevice(id=unit, simdata=(bits(), bits(), regs(), regs()))


async def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--tcp-port", default="", help="comma-separated TCP ports")
    ap.add_argument("--rtu-port", help="serial device for the RTU server")
    ap.add_argument("--baud", type=int, default=19200)
    ap.add_argument("--control-port", type=int)
    ap.add_argument("--units", default="1", help="comma-separated unit ids")
    ap.add_argument("--changing", action="store_true", help="holding register 0 changes on every read")
    ap.add_argument("--slow", action="append", default=[], help="UNIT=SECONDS: that unit's reads answer late")
    ap.add_argument("--verbose", action="store_true")
    args = ap.parse_args()
    logging.basicConfig(level=logging.DEBUG if args.verbose else logging.ERROR)
    # pymodbus logs deprecations and missing-unit requests at warning/error.
    logging.getLogger("pymodbus").setLevel(logging.DEBUG if args.verbose else logging.CRITICAL)

    units = [int(u) for u in args.units.split(",") if u.strip()]
    slow = {int(u): float(s) for u, s in (a.split("=") for a in args.slow)}
    devices = [device(u) for u in units]
    servers = []
    store = None

    def add(server):
        nonlocal store
        if store is None:
            store = SharedStore(server.context, units, args.changing, slow)
        server.context = store
        servers.append(server)

    for port in (int(p) for p in args.tcp_port.split(",") if p.strip()):
        add(ModbusTcpServer(devices, address=("127.0.0.1", port), ignore_missing_devices=True))
    if args.rtu_port:
        add(
            ModbusSerialServer(
                devices,
                port=args.rtu_port,
                baudrate=args.baud,
                ignore_missing_devices=True,
                reconnect_delay=0.1,
            )
        )
    if args.control_port:
        add(ModbusTcpServer(devices, address=("127.0.0.1", args.control_port), ignore_missing_devices=True))
    if not servers:
        ap.error("give at least one of --tcp-port, --rtu-port, --control-port")

    for s in servers:
        await s.serve_forever(background=True)

    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    print("READY", flush=True)
    await stop.wait()
    for s in servers:
        await s.shutdown()


if __name__ == "__main__":
    try:
        asyncio.run(main())
    except KeyboardInterrupt:
        sys.exit(0)
