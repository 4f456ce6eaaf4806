#!/usr/bin/env python3
"""Per-size paired A/B of two gocollbench binaries: for every size, REPS
pairs of one-size runs, OLD and NEW back to back (order alternating), and
the median over pairs of NEW/OLD. Pairs a fraction of a second apart cancel
the machine's drift, which moves over seconds.
usage: ab2.py OLD NEW REPS backend:dtype:np[:size] ...
A config without a size runs every size from 8 B to 64 MiB.
env: ITERS (100), BUDGET (0.3s), NOSYNC=1 (back to back; default -sync)"""
import json, os, subprocess, sys, statistics
old, new, reps = sys.argv[1], sys.argv[2], int(sys.argv[3])
iters = os.environ.get("ITERS", "100"); budget = os.environ.get("BUDGET", "0.3s")
sizes = [8 << i for i in range(24)]  # 8 B .. 64 MiB
def run(binp, be, dt, np_, s):
    out = subprocess.run([binp] + ([] if os.environ.get("NOSYNC") else ["-sync"]) + ["-json", "-budget", budget, "-iters", iters, "-settle", "20ms",
        "-b", str(s), "-e", str(s), "-np", np_, "-t", dt, "-backend", be], capture_output=True, text=True,
        env=dict(os.environ, GOCOLL_BACKEND=be), timeout=600)
    if out.returncode != 0:
        sys.stderr.write(out.stderr); raise SystemExit(1)
    return json.loads(out.stdout)["rows"][0]["time_us"]
print("| backend | dtype | np | size | old us | new us | new/old, median of %d pairs | p25..p75 |" % reps)
print("| --- | --- | ---: | ---: | ---: | ---: | ---: | --- |", flush=True)
for cfg in sys.argv[4:]:
    be, dt, np_, *size = cfg.split(":")
    for s in ([int(size[0])] if size else sizes):
        O, N, R = [], [], []
        for rep in range(reps):
            if rep % 2 == 0:
                o = run(old, be, dt, np_, s); n = run(new, be, dt, np_, s)
            else:
                n = run(new, be, dt, np_, s); o = run(old, be, dt, np_, s)
            O.append(o); N.append(n); R.append(n / o)
        R.sort()
        print(f"| {be} | {dt} | {np_} | {s} | {statistics.median(O):.3g} | {statistics.median(N):.3g} | {statistics.median(R):.3f} | {R[len(R)//4]:.2f}..{R[3*len(R)//4]:.2f} |", flush=True)
