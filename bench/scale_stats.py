#!/usr/bin/env python3
"""Statistics of one bench/scale.sh run, printed as the middle cells of its
table row: leader changes and failed requests during the run, latency
percentiles inside snapshot windows and outside them, snapshot duration and
size, peak RSS per node and bytes per key.

usage: scale_stats.py DIR RUN_START_MS RUN_END_MS KEYS
"""
import datetime
import json
import re
import sys

RAW_BYTES_PER_KEY = 116  # 16-byte key + 100-byte value
ANSI = re.compile(r"\x1b\[[0-9;]*m")


def ts_ms(line):
    stamp = line.split()[0]
    t = datetime.datetime.strptime(stamp, "%Y-%m-%dT%H:%M:%S.%fZ")
    return t.replace(tzinfo=datetime.timezone.utc).timestamp() * 1000


def node_events(path):
    """(ms, line) of every log line of interest."""
    out = []
    with open(path, errors="replace") as f:
        for raw in f:
            line = ANSI.sub("", raw)
            if any(k in line for k in ("taking snapshot", "snapshot saved", "became leader")):
                try:
                    out.append((ts_ms(line), line))
                except ValueError:
                    pass
    return out


def percentile(sorted_values, q):
    if not sorted_values:
        return float("nan")
    i = min(len(sorted_values) - 1, int(q * len(sorted_values)))
    return sorted_values[i] / 1000.0


def main():
    d, start, end, keys = sys.argv[1], float(sys.argv[2]), float(sys.argv[3]), int(sys.argv[4])
    windows, durations, sizes, leader_changes = [], [], [], 0
    for node in (1, 2, 3):
        taking = None
        for ms, line in node_events(f"{d}/node{node}.log"):
            if "became leader" in line and start <= ms <= end:
                leader_changes += 1
            elif "taking snapshot" in line:
                taking = ms
            elif "snapshot saved" in line and taking is not None:
                if taking <= end and ms >= start:
                    windows.append((taking, ms))
                    durations.append((ms - taking) / 1000.0)
                    m = re.search(r"bytes=(\d+)", line)
                    if m:
                        sizes.append(int(m.group(1)))
                taking = None
    inside, outside = [], []
    with open(f"{d}/latency.txt") as f:
        for row in f:
            ms, us, _ok = row.split()
            ms, us = float(ms), int(us)
            (inside if any(a <= ms <= b for a, b in windows) else outside).append(us)
    inside.sort()
    outside.sort()
    with open(f"{d}/run.json") as f:
        run = json.load(f)
    peaks = {}
    with open(f"{d}/rss.txt") as f:
        for row in f:
            node, kb = row.split()
            peaks[node] = max(peaks.get(node, 0), int(kb))
    peak_mb = [peaks.get(str(n), 0) // 1024 for n in (1, 2, 3)]
    per_key = max(peaks.values()) * 1024 / keys if peaks else float("nan")

    def pair(q):
        return f"{percentile(inside, q):.1f} / {percentile(outside, q):.1f}"

    cells = [
        str(leader_changes),
        str(run["errors"]),
        pair(0.5),
        pair(0.99),
        pair(0.999),
        f"{(inside[-1] / 1000.0 if inside else float('nan')):.1f} / {(outside[-1] / 1000.0 if outside else float('nan')):.1f}",
        f"{(max(durations) if durations else 0):.1f}",
        f"{(max(sizes) / 1e6 if sizes else 0):.0f}",
        " / ".join(str(m) for m in peak_mb),
        f"{per_key:.0f}",
        f"{per_key / RAW_BYTES_PER_KEY:.2f}",
    ]
    print(" | ".join(cells), end="")


if __name__ == "__main__":
    main()
