#!/usr/bin/env python3
# ab4.py OLD NEW PAIRS be:dt:np:size ... : per-config paired A/B, old and new
# one-size gocollbench runs back to back, order alternating; median of new/old.
# NOSYNC=1: back-to-back calls; otherwise -sync.
import json, os, subprocess, sys, statistics
old, new, pairs = sys.argv[1], sys.argv[2], int(sys.argv[3])
def run(binp, be, dt, np_, s):
    args = [binp] + ([] if os.environ.get("NOSYNC") else ["-sync"]) + ["-json", "-budget", "0.3s", "-iters", "100",
        "-settle", "20ms", "-b", s, "-e", s, "-np", np_, "-t", dt, "-backend", be]
    out = subprocess.run(args, capture_output=True, text=True, env=dict(os.environ, GOCOLL_BACKEND=be), timeout=300)
    return json.loads(out.stdout)["rows"][0]["time_us"]
print("| backend | dtype | np | size | old us | new us | new/old median | p25..p75 |")
print("| --- | --- | ---: | ---: | ---: | ---: | ---: | --- |")
for cfg in sys.argv[4:]:
    be, dt, np_, s = cfg.split(":")
    O, N, R = [], [], []
    for rep in range(pairs):
        if rep % 2 == 0: o = run(old, be, dt, np_, s); n = run(new, be, dt, np_, s)
        else: n = run(new, be, dt, np_, s); o = run(old, be, dt, np_, s)
        O.append(o); N.append(n); R.append(n / o)
    R.sort()
    print(f"| {be} | {dt} | {np_} | {s} | {statistics.median(O):.3g} | {statistics.median(N):.3g} | {statistics.median(R):.3f} | {R[len(R)//4]:.2f}..{R[3*len(R)//4]:.2f} |", flush=True)
