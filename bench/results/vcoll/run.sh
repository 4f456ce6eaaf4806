#!/bin/sh
# The vector collectives' bars, A/B interleaved (the machine is shared, so
# each pair of sweeps runs back to back and the report takes medians):
#   alltoallv vs alltoall at np 4 on shm, uniform counts;
#   allgatherv vs allgather at np 4 on tcp, uniform counts.
# Usage: run.sh BENCH_BINARY REPS OUTDIR
set -eu
bin=$1 reps=$2 out=$3
mkdir -p "$out"
for r in $(seq 1 "$reps"); do
	for pair in "shm alltoall alltoallv" "tcp allgather allgatherv"; do
		set -- $pair
		be=$1
		for c in $2 $3; do
			nice "$bin" -np 4 -backend "$be" -c "$c" -t float32 -b 8 -e 16M -f 4 \
				-iters 50 -warmup 5 -budget 1s -json > "$out/$be-$c-$r.json" 2>/dev/null
		done
	done
done
