#!/bin/bash
# nosync.sh NP REPS SIZE TOOLS : back-to-back period medians
np=$1; reps=$2; sz=$3; shift 3
for t in "$@"; do echo -n > /tmp/lat/ns.$t; done
for r in $(seq $reps); do for t in "$@"; do bin=${t%%:*}; be=${t##*:}
 /tmp/lat/bin/bench-$bin -np $np -backend $be -b $sz -e $sz -iters 3000 -budget 1s 2>&1 | grep -E '^ +[0-9]' | awk '{print $6}' >> /tmp/lat/ns.$t; done; done
for t in "$@"; do echo "$t $(sort -n /tmp/lat/ns.$t | tr '\n' ' ')"; done
