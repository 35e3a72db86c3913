#!/usr/bin/env python3
"""Helpers for bench/run.sh: the file-tree workloads that a shell loop would
drown in fork costs, and the report that turns results.tsv into Markdown.

Every workload here does the same system calls whatever directory it runs
in, so native, bindfs, passthrough_hp and umbra are compared on equal terms. Nothing here
times itself: run.sh times each call from outside.
"""

import os
import sys

BLOCK = 64 * 1024  # umbra's pre-image block size
MIB = 1024 * 1024


def tree_paths(root, n, per_dir=1000):
    """The n file paths of a tree of `per_dir` files per directory."""
    for i in range(n):
        yield os.path.join(root, "d%04d" % (i // per_dir), "f%06d" % i)


def mkfiles(root, n, size=100):
    """Creates n small files of `size` bytes, 1,000 to a directory."""
    n = int(n)
    data = b"x" * int(size)
    made = set()
    for path in tree_paths(root, n):
        d = os.path.dirname(path)
        if d not in made:
            os.makedirs(d, exist_ok=True)
            made.add(d)
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o644)
        os.write(fd, data)
        os.close(fd)


def rename(root):
    """Renames every file of a mkfiles tree within its directory."""
    for d in sorted(os.listdir(root)):
        dp = os.path.join(root, d)
        for f in os.listdir(dp):
            os.rename(os.path.join(dp, f), os.path.join(dp, f + ".r"))


def mkbig(path, mib, mode="random"):
    """A file of `mib` MiB: random throughout, or one random MiB repeated
    (`dup`: every 64 KiB block appears mib times)."""
    mib = int(mib)
    pattern = os.urandom(MIB)
    with open(path, "wb") as f:
        for _ in range(mib):
            f.write(os.urandom(MIB) if mode == "random" else pattern)
        f.flush()
        os.fsync(f.fileno())


def overwrite(path, every):
    """Overwrites every `every`-th 64 KiB block of a file in place (1: all of
    it, 2: half of it, interleaved), with data that differs from it."""
    every = int(every)
    size = os.path.getsize(path)
    fd = os.open(path, os.O_WRONLY)
    try:
        if every == 1:
            buf = b"\xa5" * MIB
            for off in range(0, size, MIB):
                os.pwrite(fd, buf[: min(MIB, size - off)], off)
        else:
            buf = b"\x5a" * BLOCK
            for off in range(0, size, BLOCK * every):
                os.pwrite(fd, buf[: min(BLOCK, size - off)], off)
    finally:
        os.close(fd)


def status_field(path, field):
    """One number from `umbra status --json` saved in a file."""
    import json

    with open(path) as f:
        doc = json.load(f)
    print(doc["diff_area"][field])


def latency(log, start_ms, end_ms):
    """Writes of a fio latency log (log_unix_epoch=1, log_avg_msec=0: one
    line per write, completion time in ms, latency in ns) that were in
    flight at some point of [start_ms, end_ms]: their count and latency
    percentiles p50, p99, p99.9 and the maximum, in microseconds."""
    start, end = int(start_ms), int(end_ms)
    lat = []
    with open(log) as f:
        for line in f:
            parts = line.split(",")
            if len(parts) < 2:
                continue
            done, ns = int(parts[0]), int(parts[1])
            issued = done - ns / 1e6
            if issued <= end and done >= start:
                lat.append(ns / 1000)
    lat.sort()
    if not lat:
        print("0 0 0 0 0")
        return

    def pct(p):
        return lat[min(len(lat) - 1, int(p / 100 * len(lat)))]

    print("%d %.0f %.0f %.0f %.0f" % (len(lat), pct(50), pct(99), pct(99.9), lat[-1]))


# ---------------------------------------------------------------- report


def median(xs):
    xs = sorted(xs)
    n = len(xs)
    if n == 0:
        return None
    return xs[n // 2] if n % 2 else (xs[n // 2 - 1] + xs[n // 2]) / 2


def fmt(x):
    if x is None:
        return "–"
    if abs(x) >= 100:
        return "%.0f" % x
    if abs(x) >= 10:
        return "%.1f" % x
    if abs(x) >= 1:
        return "%.2f" % x
    return "%.3f" % x


def ratio(a, b):
    if a is None or b is None or b == 0:
        return "–"
    return "%.2f×" % (a / b)


def load_results(path):
    rows = {}
    order = []
    units = {}
    with open(path) as f:
        for line in f:
            parts = line.rstrip("\n").split("\t")
            if len(parts) != 5:
                continue
            group, work, target, value, unit = parts
            key = (group, work)
            if key not in order:
                order.append(key)
            rows.setdefault(key, {}).setdefault(target, []).append(float(value))
            units[key] = unit
    return rows, order, units


LIVE_TARGETS = ["native", "bindfs", "hp", "nos", "cow"]


def report(results, meta):
    rows, order, units = load_results(results)
    out = []
    with open(meta) as f:
        out.append(f.read().rstrip("\n"))
    out.append("")

    def med(key, target):
        return median(rows.get(key, {}).get(target, []))

    def n_of(key, target):
        return len(rows.get(key, {}).get(target, []))

    live = [k for k in order if k[0] in ("fio", "meta", "untar")]
    if live:
        out.append("### Live volume: throughput (median of the runs; higher is better)")
        out.append("")
        out.append(
            "| workload | unit | native | bindfs | passthrough_hp | umbra, no set "
            "| umbra, after a set | umbra/native | umbra/bindfs | umbra/passthrough_hp "
            "| after-set/native | after-set/no-set | runs |"
        )
        out.append("|" + "---|" * 13)
        for key in live:
            m = {t: med(key, t) for t in LIVE_TARGETS}
            out.append(
                "| %s | %s | %s | %s | %s | %s | %s | %s | %s | %s | %s | %s | %d |"
                % (
                    key[1],
                    units[key],
                    fmt(m["native"]),
                    fmt(m["bindfs"]),
                    fmt(m["hp"]),
                    fmt(m["nos"]),
                    fmt(m["cow"]),
                    ratio(m["nos"], m["native"]),
                    ratio(m["nos"], m["bindfs"]),
                    ratio(m["nos"], m["hp"]),
                    ratio(m["cow"], m["native"]),
                    ratio(m["cow"], m["nos"]),
                    min((n_of(key, t) for t in LIVE_TARGETS if n_of(key, t)), default=0),
                )
            )
        out.append("")

    create = [k for k in order if k[0] == "create"]
    if create:
        out.append("### `umbra create`, ms (lower is better)")
        out.append("")
        out.append(
            "`hold`: live writes held (the daemon's `hold_ms`); `total`: the daemon's"
            " `total_ms` (flush, hold, durable record); `wall`: the client command as"
            " the script sees it."
        )
        out.append("")
        out.append(
            "| case | hold median | hold p99 | hold max | total median | total p99 |"
            " wall median | wall p99 | samples |"
        )
        out.append("|---|---|---|---|---|---|---|---|---|")

        def pct(xs, p):
            return xs[min(len(xs) - 1, int(p * len(xs)))] if xs else None

        for key in create:
            series = {k: sorted(rows[key].get(k, [])) for k in ("hold", "total", "wall")}
            h, t, w = series["hold"], series["total"], series["wall"]
            out.append(
                "| %s | %s | %s | %s | %s | %s | %s | %s | %d |"
                % (
                    key[1],
                    fmt(median(h)) if h else "–",
                    fmt(pct(h, 0.99)) if h else "–",
                    fmt(h[-1]) if h else "–",
                    fmt(median(t)) if t else "–",
                    fmt(pct(t, 0.99)) if t else "–",
                    fmt(median(w)),
                    fmt(pct(w, 0.99)),
                    len(w),
                )
            )
        out.append("")

    snap = [k for k in order if k[0] == "snap"]
    if snap:
        out.append("### Snapshot reads (median; higher is better)")
        out.append("")
        if any("hp" in rows[k] for k in snap):
            out.append(
                "passthrough_hp: the same backing tree read through passthrough_hp"
                " (the unchanged file `p0` for every large-file row, as native)."
            )
            out.append("")
        out.append(
            "| workload | unit | native | passthrough_hp | shadow copy | copy/native"
            " | copy/passthrough_hp | runs |"
        )
        out.append("|---|---|---|---|---|---|---|---|")
        for key in snap:
            a, h, b = med(key, "native"), med(key, "hp"), med(key, "set")
            out.append(
                "| %s | %s | %s | %s | %s | %s | %s | %d |"
                % (
                    key[1],
                    units[key],
                    fmt(a),
                    fmt(h),
                    fmt(b),
                    ratio(b, a),
                    ratio(b, h),
                    n_of(key, "set"),
                )
            )
        out.append("")

    gc = [k for k in order if k[0] == "gc"]
    if gc:
        out.append(
            "### Live writes while a deleted set's pre-images are collected "
            "(the span the deletion took; lower latency is better)"
        )
        out.append("")
        out.append("| measure | unit | no collection | during collection | during/none |")
        out.append("|---|---|---|---|---|")
        for key in gc:
            if "-" in rows[key]:
                continue
            a, b = med(key, "idle"), med(key, "collect")
            out.append(
                "| %s | %s | %s | %s | %s |"
                % (key[1], units[key], fmt(a), fmt(b), ratio(b, a))
            )
        for key in gc:
            if "-" in rows[key]:
                out.append("| %s | %s | | %s | |" % (key[1], units[key], fmt(med(key, "-"))))
        out.append("")

    probe = [k for k in order if k[0] == "probe"]
    if probe:
        out.append("### The daemon's descriptors and memory with many sets and files walked")
        out.append("")
        out.append(
            "descriptors: the most open at once during the stage (sampled every 0.2 s)"
            " and at its end; RSS at its end; peak RSS: VmHWM, reset at the stage's start."
        )
        out.append("")
        out.append(
            "| stage | entries | errors | descriptors, most | descriptors, at the end"
            " | RSS, MiB | peak RSS, MiB |"
        )
        out.append("|---|---|---|---|---|---|---|")
        for key in probe:
            r = rows[key]

            def one(t, r=r):
                xs = r.get(t)
                return "%d" % median(xs) if xs else "–"

            def mib(t, r=r):
                xs = r.get(t)
                return fmt(median(xs)) if xs else "–"

            out.append(
                "| %s | %s | %s | %s | %s | %s | %s |"
                % (
                    key[1],
                    one("entries"),
                    one("errors"),
                    one("fds"),
                    one("fds_after"),
                    mib("rss"),
                    mib("hwm"),
                )
            )
        out.append("")

    other = [k for k in order if k[0] in ("store", "rss")]
    if other:
        out.append("### Diff area and daemon memory")
        out.append("")
        out.append("| measure | value | unit |")
        out.append("|---|---|---|")
        for key in other:
            for target, xs in rows[key].items():
                name = key[1] if target == "-" else "%s (%s)" % (key[1], target)
                x = median(xs)
                out.append("| %s | %s | %s |" % (name, "%.0f" % x if x >= 1000 else "%.4g" % x, units[key]))
        out.append("")
    print("\n".join(out))


def main():
    cmd, args = sys.argv[1], sys.argv[2:]
    {
        "mkfiles": mkfiles,
        "rename": rename,
        "mkbig": mkbig,
        "overwrite": overwrite,
        "status-field": status_field,
        "latency": latency,
        "report": report,
    }[cmd](*args)


if __name__ == "__main__":
    main()
