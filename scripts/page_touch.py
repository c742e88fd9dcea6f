#!/usr/bin/env python3
"""What touching a page of memory costs on this machine, by how long the
page was left alone before: 256 random pages of a 64 MiB buffer (all
touched once first) are touched, left alone for GAP seconds, and read
again one by one, each read timed.

    python3 scripts/page_touch.py [--rounds 2]

On a machine whose host takes back guest memory left idle (a virtual
machine with its memory overcommitted), a read after a second or more
waits for the host to bring the page back: tens to hundreds of
microseconds, against well under one for a page in use. Such waits are
counted as the reading process's CPU time, so a program's CPU seconds then
follow how many pages it touches per second (scripts/pages_referenced)
more than its instructions.
"""
import argparse
import mmap
import random
import time

SIZE = 64 * 1024 * 1024
PAGE = mmap.PAGESIZE
SAMPLE = 256


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--rounds", type=int, default=2)
    args = ap.parse_args()
    buf = mmap.mmap(-1, SIZE)
    for off in range(0, SIZE, PAGE):
        buf[off] = 1
    pages = SIZE // PAGE
    for _ in range(args.rounds):
        for gap in (0.0, 0.3, 1.0, 3.0):
            idx = random.sample(range(pages), SAMPLE)
            for i in idx:
                buf[i * PAGE] = 2
            time.sleep(gap)
            times = []
            for i in idx:
                t0 = time.perf_counter_ns()
                buf[i * PAGE]
                times.append(time.perf_counter_ns() - t0)
            times.sort()
            slow = sum(1 for t in times if t > 20_000)
            print(
                f"left alone {gap:3.1f} s: p50 {times[SAMPLE // 2] / 1000:7.1f} us, "
                f"p90 {times[SAMPLE * 9 // 10] / 1000:7.1f} us, "
                f"p99 {times[SAMPLE * 99 // 100] / 1000:7.1f} us; "
                f"{slow * 100 // SAMPLE:3d} % over 20 us",
                flush=True,
            )


if __name__ == "__main__":
    main()
