#!/usr/bin/env python3
"""Per-size medians of the interleaved runs run.sh made, and the ratio of
each vector collective's median time to its fixed-count form's."""
import glob, json, statistics, sys

out = sys.argv[1]
def med(be, c):
    times = {}
    for f in sorted(glob.glob(f"{out}/{be}-{c}-*.json")):
        for row in json.load(open(f))["rows"]:
            times.setdefault(row["size"], []).append(row["time_us"])
    return {s: (statistics.median(v), len(v)) for s, v in times.items()}

for be, a, b in [("shm", "alltoall", "alltoallv"), ("tcp", "allgather", "allgatherv")]:
    ma, mb = med(be, a), med(be, b)
    print(f"## {b} vs {a}, np 4, {be}, float32, uniform counts (median us over runs)\n")
    print(f"| size | {a} | {b} | ratio | runs |")
    print("|---:|---:|---:|---:|---:|")
    worst = 0
    for s in sorted(ma):
        if s not in mb:
            continue
        r = mb[s][0] / ma[s][0]
        worst = max(worst, r)
        print(f"| {s} | {ma[s][0]:.2f} | {mb[s][0]:.2f} | {r:.3f} | {min(ma[s][1], mb[s][1])} |")
    print(f"\nworst ratio: {worst:.3f}\n")
