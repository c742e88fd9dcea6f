#!/usr/bin/env python3
"""Does a second `fdatasync` wait for one already running on the same file?

The journal's committer makes one group commit at a time: a commit asked
for while an `fdatasync` runs waits for it to end, then runs its own. This
measures, on a preallocated file in DIR (default: target/), the latency of

- "alone": a 400-byte `pwrite` and its `fdatasync`, nothing else running;
- "overlapping": the same, started 0.3 ms after another thread began an
  `fdatasync` of the file (the two run at once);
- "after the other": started at the same moment, but waiting for the other
  thread's `fdatasync` to end first (what one committer thread does).

Each is timed from the moment the second commit was asked for. ROUNDS
rounds (default 150), 30 ms apart, printed as p50 / p90 / p99.

    python3 scripts/fsync_overlap.py [DIR] [ROUNDS]
"""

from __future__ import annotations

import os
import sys
import threading
import time

FILE_BYTES = 1 << 22


def pct(values: list[float], p: float) -> float:
    s = sorted(values)
    return s[int(p * (len(s) - 1))]


def main() -> None:
    directory = sys.argv[1] if len(sys.argv) > 1 else "target"
    rounds = int(sys.argv[2]) if len(sys.argv) > 2 else 150
    os.makedirs(directory, exist_ok=True)
    path = os.path.join(directory, "fsync_overlap.tmp")
    fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
    try:
        os.posix_fallocate(fd, 0, FILE_BYTES)
        os.fsync(fd)
        offset = 0

        def write() -> None:
            nonlocal offset
            os.pwrite(fd, b"x" * 400, offset)
            offset = (offset + 4096) % FILE_BYTES

        alone: list[float] = []
        overlapping: list[float] = []
        after: list[float] = []
        for _ in range(rounds):
            write()
            t = time.perf_counter()
            os.fdatasync(fd)
            alone.append((time.perf_counter() - t) * 1e3)
            time.sleep(0.03)

            for waits, into in ((False, overlapping), (True, after)):
                write()
                other = threading.Thread(target=os.fdatasync, args=(fd,))
                other.start()
                time.sleep(0.0003)
                write()
                t = time.perf_counter()
                if waits:
                    other.join()
                os.fdatasync(fd)
                into.append((time.perf_counter() - t) * 1e3)
                other.join()
                time.sleep(0.03)
    finally:
        os.close(fd)
        os.unlink(path)
    for name, values in (
        ("alone", alone),
        ("overlapping", overlapping),
        ("after the other", after),
    ):
        print(
            f"{name:<16} p50 {pct(values, 0.5):.2f}  p90 {pct(values, 0.9):.2f}"
            f"  p99 {pct(values, 0.99):.2f} ms"
        )


if __name__ == "__main__":
    main()
