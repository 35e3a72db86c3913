#!/usr/bin/env python3
"""What a durable write costs on the filesystem under a directory (default
/var/tmp): the flushes a write that keeps a pre-image waits for (a pack
append and a WAL commit, each fdatasync'ed) against the application's own
4 KiB write + fsync. Prints a table of medians and p90s in microseconds.

    python3 bench/flushes.py [DIR]

BENCHMARKS.md ("Issue 13 on 2026-12-06, fourth") explains the numbers.
Not a test: timings depend on the disk and on what else runs.
"""
import mmap
import os
import sys
import tempfile
import threading
import time

N = 400
BLOCK = 65536 + 36  # a pack record: header and a 64 KiB block
WAL = 12288  # three WAL pages: a keeping write's commit


def measure(step):
    times = []
    for i in range(N):
        t = time.perf_counter()
        step(i)
        times.append(time.perf_counter() - t)
    times.sort()
    return times[N // 2] * 1e6, times[int(N * 0.9)] * 1e6


def fresh(d, name, prewrite=0, fallocate=0, flags=0):
    fd = os.open(os.path.join(d, name), os.O_RDWR | os.O_CREAT | os.O_TRUNC | flags)
    if prewrite:
        os.pwrite(fd, b"\0" * prewrite, 0)
        os.fsync(fd)
    if fallocate:
        os.posix_fallocate(fd, 0, fallocate)
        os.fsync(fd)
    return fd


def both(pack, wal, at_once, block, small):
    def step(i):
        os.pwrite(pack, block, i * BLOCK)
        os.pwrite(wal, small, i * WAL)
        if at_once:
            t = threading.Thread(target=os.fdatasync, args=(pack,))
            t.start()
            os.fdatasync(wal)
            t.join()
        else:
            os.fdatasync(pack)
            os.fdatasync(wal)
    return step


def main():
    base = sys.argv[1] if len(sys.argv) > 1 else "/var/tmp"
    block, small = os.urandom(BLOCK), os.urandom(WAL)
    rows = []
    with tempfile.TemporaryDirectory(dir=base) as d:
        f = fresh(d, "append")
        rows.append(("append 64 KiB + fdatasync", measure(lambda i: (os.pwrite(f, block, i * BLOCK), os.fdatasync(f)))))
        f = fresh(d, "prewritten", prewrite=N * BLOCK)
        rows.append(("overwrite 64 KiB, pre-written + fdatasync", measure(lambda i: (os.pwrite(f, block, i * BLOCK), os.fdatasync(f)))))
        f = fresh(d, "fallocated", fallocate=N * BLOCK)
        rows.append(("overwrite 64 KiB, fallocated + fdatasync", measure(lambda i: (os.pwrite(f, block, i * BLOCK), os.fdatasync(f)))))
        aligned = mmap.mmap(-1, 65536)
        aligned.write(block[:65536])
        fresh(d, "direct", prewrite=N * 65536)
        f = os.open(os.path.join(d, "direct"), os.O_RDWR | os.O_DIRECT)
        rows.append(("O_DIRECT + RWF_DSYNC overwrite 64 KiB", measure(lambda i: os.pwritev(f, [aligned], i * 65536, os.RWF_DSYNC))))
        f = fresh(d, "live", prewrite=N * 65536)
        rows.append(("overwrite 4 KiB + fsync (the application's)", measure(lambda i: (os.pwrite(f, block[:4096], i * 65536), os.fsync(f)))))
        for prewritten in (False, True):
            for at_once in (True, False):
                pack = fresh(d, "pack", prewrite=N * BLOCK if prewritten else 0)
                wal = fresh(d, "wal", prewrite=N * WAL if prewritten else 0)
                what = "pack + WAL, " + ("pre-written" if prewritten else "appended") + (", at once" if at_once else ", in turn")
                rows.append((what, measure(both(pack, wal, at_once, block, small))))
    print("| operation | median µs | p90 µs |")
    print("|---|---|---|")
    for what, (p50, p90) in rows:
        print(f"| {what} | {p50:.0f} | {p90:.0f} |")


if __name__ == "__main__":
    main()
