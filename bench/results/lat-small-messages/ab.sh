#!/bin/bash
# Used for bench/results/lat-small-messages: binaries in /tmp/lat/bin (gocollbench
# builds named bench-NAME, mpi_bench built with mpicc from bench/mpi_bench.c).
# ab.sh NP REPS SIZES(b e f) TOOLS... : interleaved runs, JSON into /tmp/lat/ab/<tag>/
np=$1; reps=$2; b=$3; e=$4; f=$5; shift 5
tag=${TAG:-run}; out=/tmp/lat/ab/$tag; mkdir -p $out
export OMPI_ALLOW_RUN_AS_ROOT=1 OMPI_ALLOW_RUN_AS_ROOT_CONFIRM=1
iters=${ITERS:-200}; budget=${BUDGET:-1}
for r in $(seq 1 $reps); do
  for t in "$@"; do
    case $t in
      ompi-tcp) cmd=(mpirun --oversubscribe --bind-to none --mca btl self,tcp -np $np /tmp/lat/bin/mpi_bench -c allreduce -t float32 -b $b -e $e -f $f -iters $iters -warmup 5 -budget $budget -sync 1 -backend tcp);;
      ompi) cmd=(mpirun --oversubscribe --bind-to none -np $np /tmp/lat/bin/mpi_bench -c allreduce -t float32 -b $b -e $e -f $f -iters $iters -warmup 5 -budget $budget -sync 1);;
      *:*) bin=${t%%:*}; be=${t##*:}; cmd=(env $ENVS /tmp/lat/bin/bench-$bin -np $np -backend $be -c allreduce -t float32 -b $b -e $e -f $f -iters $iters -warmup 5 -budget ${budget}s -sync -json);;
    esac
    "${cmd[@]}" > $out/${t//:/_}.$r.json 2>$out/${t//:/_}.$r.err || echo "FAIL $t $r" >&2
  done
done
python3 - "$out" "$@" <<'PY'
import json,sys,glob,statistics
out=sys.argv[1]; tools=sys.argv[2:]
med={}
for t in tools:
    d={}
    for fn in glob.glob(f"{out}/{t.replace(':','_')}.*.json"):
        try: j=json.load(open(fn))
        except Exception: continue
        for row in j['rows']: d.setdefault(row['size'],[]).append(row['time_us'])
    med[t]={s:statistics.median(v) for s,v in d.items()}
    import os
    if os.environ.get('SPREAD'):
        for s_,v in sorted(d.items()):
            v=sorted(v); print(t, s_, 'n=%d'%len(v), 'p25=%.2f med=%.2f p75=%.2f min=%.2f'%(v[len(v)//4], statistics.median(v), v[3*len(v)//4], v[0]))
sizes=sorted(set().union(*[m.keys() for m in med.values()]))
print("size".rjust(10)+"".join(t.rjust(14) for t in tools)+("   ratio %s/%s"%(tools[-2],tools[-1]) if len(tools)>1 else ""))
for s in sizes:
    line=str(s).rjust(10)+"".join(("%.2f"%med[t][s] if s in med[t] else "-").rjust(14) for t in tools)
    if len(tools)>1 and s in med[tools[-1]] and s in med[tools[-2]]: line+="   %.2f"%(med[tools[-2]][s]/med[tools[-1]][s])
    print(line)
PY
