#!/usr/bin/env python3
"""CPU cost of one durable commit on this disk, by way of system call.

Appends N records of 300 bytes, one commit each, to a preallocated 4 MiB
file (as the journal's WAL does) with four ways of making them durable,
and prints each way's CPU time per commit (user + system, from
getrusage) and wall time per commit:

  buffered      pwrite + fdatasync (what the WAL does)
  rwf_dsync     pwritev with RWF_DSYNC (one call)
  direct_dsync  O_DIRECT write of the whole 4 KiB tail block, RWF_DSYNC
  direct+fds    O_DIRECT write of the tail block, then fdatasync

    python3 scripts/commit_syscalls.py [DIR] [N]   # DIR: where the test
                                                   # files go (default: the
                                                   # system's temp dir)
"""

from __future__ import annotations

import mmap
import os
import resource
import shutil
import sys
import tempfile
import time

SIZE = 4 << 20
BLOCK = 4096
RECORD = b"r" * 300


def prepare(path: str) -> None:
    """Write every block once (no allocation later), then drop the cache."""
    fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
    zeros = b"\0" * BLOCK
    for off in range(0, SIZE, BLOCK):
        os.pwrite(fd, zeros, off)
    os.fsync(fd)
    os.posix_fadvise(fd, 0, 0, os.POSIX_FADV_DONTNEED)
    os.close(fd)


def cpu() -> tuple[float, float]:
    r = resource.getrusage(resource.RUSAGE_SELF)
    return r.ru_utime + r.ru_stime, r.ru_stime


def buffered(path: str, n: int) -> None:
    fd = os.open(path, os.O_RDWR)
    off = 32
    for _ in range(n):
        os.pwrite(fd, RECORD, off)
        os.fdatasync(fd)
        off += len(RECORD)
    os.close(fd)


def rwf_dsync(path: str, n: int) -> None:
    fd = os.open(path, os.O_RDWR)
    off = 32
    for _ in range(n):
        os.pwritev(fd, [RECORD], off, os.RWF_DSYNC)
        off += len(RECORD)
    os.close(fd)


def direct(path: str, n: int, dsync: bool) -> None:
    fd = os.open(path, os.O_RDWR | os.O_DIRECT)
    buf = mmap.mmap(-1, 2 * BLOCK)  # page-aligned, as O_DIRECT needs
    off = 32
    for _ in range(n):
        block = off // BLOCK * BLOCK
        end = off + len(RECORD)
        length = (end - block + BLOCK - 1) // BLOCK * BLOCK
        buf[off - block : end - block] = RECORD
        if dsync:
            os.pwritev(fd, [memoryview(buf)[:length]], block, os.RWF_DSYNC)
        else:
            os.pwritev(fd, [memoryview(buf)[:length]], block)
            os.fdatasync(fd)
        if end // BLOCK != block // BLOCK:
            buf[0:BLOCK] = buf[BLOCK : 2 * BLOCK]
        off = end
    os.close(fd)


def main() -> None:
    base = sys.argv[1] if len(sys.argv) > 1 else None
    n = int(sys.argv[2]) if len(sys.argv) > 2 else 1500
    work = tempfile.mkdtemp(prefix="commit-syscalls-", dir=base)
    ways = [
        ("buffered", buffered),
        ("rwf_dsync", rwf_dsync),
        ("direct_dsync", lambda p, k: direct(p, k, True)),
        ("direct+fds", lambda p, k: direct(p, k, False)),
    ]
    try:
        for _ in range(2):
            for name, way in ways:
                path = os.path.join(work, name)
                prepare(path)
                c0, s0 = cpu()
                t0 = time.monotonic()
                way(path, n)
                c1, s1 = cpu()
                t1 = time.monotonic()
                print(
                    f"{name:12} CPU {1e6 * (c1 - c0) / n:6.1f} µs/commit"
                    f" (system {1e6 * (s1 - s0) / n:5.1f})"
                    f"  wall {1e6 * (t1 - t0) / n:6.1f} µs"
                )
                os.unlink(path)
    finally:
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
