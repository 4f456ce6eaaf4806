#!/bin/bash
# The key figures, interleaved: tcp np 2 and 4 against main and Open MPI's
# tcp btl; shm 8 B at np 2 with the spin round trip in between; shm np 4
# against Open MPI's default (shared memory) transports.
cd /tmp/lat
rm -rf ab/final-*
echo "== tcp np=2"; SPREAD=1 TAG=final-tcp2 ITERS=300 ./ab.sh 2 8 8 64K 8 main:tcp new:tcp ompi-tcp
uptime
echo "== tcp np=4"; SPREAD=1 TAG=final-tcp4 ITERS=200 ./ab.sh 4 4 8 64K 8 main:tcp new:tcp ompi-tcp
uptime
echo "== shm np=2 8..64 B, spin round trip before each rep"
mkdir -p ab/final-rtt
for r in $(seq 8); do
  bin/spinrtt -json > ab/final-rtt/rtt.$r.json
  SPREAD= TAG=final-shm2 ITERS=5000 BUDGET=2 ./ab.sh 2 1 8 64 8 main:shm new:shm > /dev/null
  for t in main:shm new:shm; do mv ab/final-shm2/${t//:/_}.1.json ab/final-shm2/${t//:/_}.r$r.json; done
done
python3 - <<'PY'
import json,glob,statistics
rtt=[json.load(open(f))['median_ns'] for f in glob.glob('/tmp/lat/ab/final-rtt/*.json')]
print('spin round trip ns: median %.1f (runs: %s)'%(statistics.median(rtt), ' '.join('%.0f'%x for x in sorted(rtt))))
for t in ['main:shm','new:shm']:
    d={}
    for f in glob.glob('/tmp/lat/ab/final-shm2/%s.r*.json'%t.replace(':','_')):
        for row in json.load(open(f))['rows']: d.setdefault(row['size'],[]).append(row['time_us'])
    for s,v in sorted(d.items()):
        m=statistics.median(v)
        print('%s %d B: median %.3f us over %d runs (%s); / spin rtt = %.2f'%(t,s,m,len(v),' '.join('%.2f'%x for x in sorted(v)),m*1000/statistics.median(rtt)))
PY
uptime
echo "== tcp large np=2,4"; for np in 2 4; do SPREAD= TAG=final-large$np ITERS=10 BUDGET=1 ./ab.sh $np 3 2M 64M 4 main:tcp new:tcp ompi-tcp; done
uptime
echo "== shm np=4 vs Open MPI (default transports)"; SPREAD= TAG=final-shm4 ITERS=300 ./ab.sh 4 3 8 64M 4 main:shm new:shm ompi
uptime
