#!/usr/bin/python3
"""gloo_bench: the torch.distributed Gloo peer of gocollbench for bench/compare.

    /usr/bin/python3 bench/gloo_bench.py -np 2 -c allreduce -t float32 \
        -b 8 -e 64M -f 4 -iters 20 -warmup 5 -budget 2 -root 0 [-sync]

Without RANK/WORLD_SIZE in its environment it starts -np copies of itself
with torchrun's variables (RANK, WORLD_SIZE, MASTER_ADDR, MASTER_PORT) and
waits; each copy joins with init_process_group("gloo", init_method="env://").

It times dist.all_reduce (SUM), dist.broadcast or dist.all_gather the way
gocollbench times gocoll: for each size, warmup calls, then each timed call
alone with time.perf_counter; the row's time is the median over the timed
calls on each rank, then the maximum over ranks. Sizes, bandwidths and the
per-size time budget follow bench/perf (nccl-tests' conventions); -sync puts
an untimed dist.barrier() before every call (OSU style). Rank 0
prints one JSON object in bench/perf's schema on stdout. A dtype Gloo
rejects gives a result marked "unsupported" with Gloo's reason.
"""

import argparse
import datetime
import json
import os
import socket
import statistics
import subprocess
import sys
import time

BLOCKED = {"allgather"}  # collectives whose row size holds n per-rank blocks
BUS_FACTOR = {
    "allreduce": lambda n: 2 * (n - 1) / n,
    "allgather": lambda n: (n - 1) / n,
    "broadcast": lambda n: 1.0,
}


def parse_size(s):
    t = s.strip().upper().rstrip("B").rstrip("I")
    mult = {"K": 1 << 10, "M": 1 << 20, "G": 1 << 30}.get(t[-1:], 1)
    if mult != 1:
        t = t[:-1]
    return int(t) * mult


def sizes(lo, hi, factor, align):
    """bench/perf.Sizes: lo to hi times factor, aligned, ending with hi."""
    out, s = [], lo
    while s <= hi:
        a = max(s // align * align, align)
        if not out or out[-1] != a:
            out.append(a)
        s = max(int(s * factor), s + 1)
    last = hi // align * align
    if last >= align and out[-1] < last:
        out.append(last)
    return out


def launch(args):
    """Start args.np ranks of this script and wait for them."""
    with socket.socket() as s:  # a free port for torch's TCPStore on rank 0
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    procs = []
    for r in range(args.np):
        env = dict(os.environ, RANK=str(r), WORLD_SIZE=str(args.np), LOCAL_RANK=str(r),
                   MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
        procs.append(subprocess.Popen([sys.executable, os.path.abspath(__file__)] + sys.argv[1:],
                                      env=env, stdout=None if r == 0 else subprocess.DEVNULL))
    status = 0
    for p in procs:
        status = status or p.wait()
    return status


def main():
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("-np", type=int, default=2)
    p.add_argument("-c", default="allreduce", choices=sorted(BUS_FACTOR))
    p.add_argument("-t", default="float32", choices=["float32", "bfloat16"])
    p.add_argument("-b", default="8")
    p.add_argument("-e", default="64M")
    p.add_argument("-f", type=float, default=4)
    p.add_argument("-iters", type=int, default=20)
    p.add_argument("-warmup", type=int, default=5)
    p.add_argument("-budget", type=float, default=2.0, help="seconds of timed calls per size")
    p.add_argument("-root", type=int, default=0)
    p.add_argument("-sync", action="store_true", help="untimed barrier before every call")
    args = p.parse_args()
    if "RANK" not in os.environ:
        sys.exit(launch(args))

    import torch
    import torch.distributed as dist

    torch.set_num_threads(1)
    dist.init_process_group("gloo", init_method="env://")
    rank, n = dist.get_rank(), dist.get_world_size()
    dtype = {"float32": torch.float32, "bfloat16": torch.bfloat16}[args.t]
    esz = torch.tensor([], dtype=dtype).element_size()
    block = n if args.c in BLOCKED else 1
    root = args.root if args.c == "broadcast" else -1
    out = {"tool": "gloo", "backend": "gloo", "collective": args.c, "dtype": args.t,
           "np": n, "root": root, "iters": args.iters, "warmup": args.warmup,
           "host": socket.gethostname(),
           "date": datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ"),
           "rows": []}
    if args.c == "allreduce":
        out["op"] = "sum"
    if args.sync:
        out["sync"] = True

    def call_for(count):
        send = torch.ones(count, dtype=dtype)
        if args.c == "allreduce":
            # In place, as torch.distributed has it; zeros stay zeros, so the
            # data neither overflows nor turns subnormal over the iterations.
            send.zero_()
            return lambda: dist.all_reduce(send, op=dist.ReduceOp.SUM)
        if args.c == "broadcast":
            return lambda: dist.broadcast(send, src=args.root)
        outs = list(torch.empty(count * n, dtype=dtype).chunk(n))
        return lambda: dist.all_gather(outs, send)

    def agree_max(v):
        t = torch.tensor([v], dtype=torch.float64)
        dist.all_reduce(t, op=dist.ReduceOp.MAX)
        return t.item()

    try:
        call_for(1)()  # does Gloo take this dtype at all?
    except RuntimeError as e:
        out["unsupported"] = "gloo: " + str(e).splitlines()[0]
    if "unsupported" not in out:
        for size in sizes(parse_size(args.b), parse_size(args.e), args.f, esz * block):
            call = call_for(size // (esz * block))
            dist.barrier()
            warm = []
            for _ in range(args.warmup):
                if args.sync:
                    dist.barrier()
                t0 = time.perf_counter()
                call()
                warm.append(time.perf_counter() - t0)
            iters = args.iters
            if args.budget > 0 and warm:
                est = agree_max(statistics.median(warm))
                if est > 0 and args.budget / est < iters:
                    iters = max(5, int(args.budget / est))
            times = []
            for _ in range(iters):
                if args.sync:
                    dist.barrier()
                t0 = time.perf_counter()
                call()
                times.append(time.perf_counter() - t0)
            t = agree_max(statistics.median(times) * 1e6)
            alg = size / (t * 1e-6) / 1e9 if t > 0 else 0.0
            out["rows"].append({"size": size, "count": size // esz, "time_us": t, "algbw": alg,
                                "busbw": alg * BUS_FACTOR[args.c](n), "iters": iters})
    if rank == 0:
        json.dump(out, sys.stdout, indent=2)
        print()
    dist.destroy_process_group()


if __name__ == "__main__":
    main()
