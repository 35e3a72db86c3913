#!/usr/bin/env python3
"""What freeing space costs the durable writes beside it on the filesystem
under a directory (default /var/tmp): the latency of a 64 KiB append +
fdatasync in a loop (what a pack append of a pre-image waits for) over
2.5 s, alone and while another thread punches 1 GiB out of a file in
8 MiB steps, as a collection frees a deleted set's pack bytes. Prints a
table (microseconds) and the filesystem's mount options: with `discard`
the kernel discards every freed extent at the journal commit that frees
it, and the appends' commits wait for it.

    python3 bench/punches.py [DIR] [RUNS]

BENCHMARKS.md ("The full run of 2026-12-06, fifth") explains the numbers.
Not a test: timings depend on the disk and on what else runs.
"""
import ctypes
import os
import sys
import tempfile
import threading
import time

SPAN = 2.5
PUNCHES = 128
STEP = 8 << 20
FALLOC_FL_KEEP_SIZE, FALLOC_FL_PUNCH_HOLE = 1, 2

libc = ctypes.CDLL("libc.so.6", use_errno=True)


def mount_options(path):
    best, opts = "", ""
    with open("/proc/mounts") as mounts:
        for line in mounts:
            fields = line.split()
            point = fields[1]
            if path == point or path.startswith(point.rstrip("/") + "/"):
                if len(point) > len(best):
                    best, opts = point, f"{fields[2]} {fields[3]}"
    return best, opts


def punch_all(path):
    fd = os.open(path, os.O_RDWR)
    try:
        for i in range(PUNCHES):
            mode = FALLOC_FL_KEEP_SIZE | FALLOC_FL_PUNCH_HOLE
            if libc.fallocate(fd, mode, ctypes.c_long(i * STEP), ctypes.c_long(STEP)) != 0:
                raise OSError(ctypes.get_errno(), "fallocate(PUNCH_HOLE)")
            time.sleep(SPAN * 0.8 / PUNCHES)
        os.fdatasync(fd)
    finally:
        os.close(fd)


def run(d, punching):
    big = os.path.join(d, "big")
    with open(big, "wb") as f:
        block = os.urandom(STEP)
        for _ in range(PUNCHES):
            f.write(block)
        os.fsync(f.fileno())
    # The allocation's own journal commit goes by first.
    time.sleep(6)
    log = os.open(os.path.join(d, "log"), os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o600)
    puncher = threading.Thread(target=punch_all, args=(big,)) if punching else None
    times = []
    data = os.urandom(65536)
    try:
        if puncher:
            puncher.start()
        end = time.time() + SPAN
        while time.time() < end:
            t = time.perf_counter()
            os.write(log, data)
            os.fdatasync(log)
            times.append((time.perf_counter() - t) * 1e6)
    finally:
        if puncher:
            puncher.join()
        os.close(log)
        os.unlink(os.path.join(d, "log"))
        os.unlink(big)
    times.sort()
    at = lambda q: times[min(len(times) - 1, int(q * len(times)))]
    return len(times), at(0.5), at(0.99), times[-1]


def main():
    parent = os.path.abspath(sys.argv[1] if len(sys.argv) > 1 else "/var/tmp")
    runs = sys.argv[2] if len(sys.argv) > 2 else "2"
    if not os.path.isdir(parent):
        sys.exit(f"punches.py: {parent} is not a directory")
    if not runs.isdigit() or not 1 <= int(runs) <= 100:
        sys.exit(f"punches.py: RUNS must be a number from 1 to 100, not {runs!r}")
    runs = int(runs)
    point, opts = mount_options(parent)
    print(f"{parent} is on {point} ({opts})\n")
    print("| 64 KiB append + fdatasync, 2.5 s | appends | p50 µs | p99 µs | max µs |")
    print("|---|---|---|---|---|")
    with tempfile.TemporaryDirectory(prefix="umbra-punches.", dir=parent) as d:
        for _ in range(runs):
            for punching in (False, True):
                n, p50, p99, most = run(d, punching)
                what = "while 1 GiB is punched in 8 MiB steps" if punching else "alone"
                print(f"| {what} | {n} | {p50:.0f} | {p99:.0f} | {most:.0f} |", flush=True)


if __name__ == "__main__":
    try:
        main()
    except OSError as e:
        sys.exit(f"punches.py: {e} (it needs 1 GiB free and a filesystem that punches holes)")
