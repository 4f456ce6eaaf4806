#!/usr/bin/env python3
"""Aggregates TestVectorBars output (abba-runs.txt): per size, the median
over runs of rank 0's median times and of the ratios."""
import re,statistics,sys
blocks=[]
for line in open(sys.argv[1]):
    m=re.search(r'\| (\d+) \| ([\d.]+) \| ([\d.]+) \| ([\d.]+) \| (\d+) \|',line)
    if m:
        size=int(m.group(1))
        if size==64: blocks.append({})
        blocks[-1][size]=(float(m.group(2)),float(m.group(3)),float(m.group(4)),int(m.group(5)))
for name,a,b,idx in (("alltoallv vs alltoall, np 4, shm","alltoall","alltoallv",0),("allgatherv vs allgather, np 4, tcp","allgather","allgatherv",1)):
    bs=blocks[idx::2]
    print(f"### {name} ({len(bs)} runs)\n")
    print(f"| size (B) | {a} us | {b} us | median ratio | per-run ratios | pairs/run |")
    print("|---:|---:|---:|---:|---|---:|")
    for s in sorted(bs[0]):
        rs=[x[s][2] for x in bs]
        fa=statistics.median(x[s][0] for x in bs); va=statistics.median(x[s][1] for x in bs)
        print(f"| {s} | {fa:.2f} | {va:.2f} | {statistics.median(rs):.3f} | {' '.join(f'{r:.2f}' for r in rs)} | {bs[0][s][3]} |")
    print()
