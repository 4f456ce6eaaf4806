package netns

import (
	"context"
	"fmt"
	"os"
	"slices"
	"sort"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/gocoll/gocoll/dispatch"
	"github.com/gocoll/gocoll/generated/coll"
	"github.com/gocoll/gocoll/internal/proctest"
)

func init() {
	proctest.Register("hiervsflat", hierVsFlatBody)
}

// benchSizes are the sizes BenchmarkHierVsFlat times, in bytes. A size is
// the whole buffer of the collective (nccl-tests' convention): allgather's
// and gather's receive buffer, reduce_scatter's, scatter's and alltoall's
// send buffer, the one buffer of allreduce, reduce and broadcast. Each
// rank's block is size/np.
// GOCOLL_NETNS_SIZES (comma-separated bytes) replaces them.
var benchSizes = []int{8, 8 << 20}

// sizesToBench is benchSizes, or the sizes GOCOLL_NETNS_SIZES lists.
func sizesToBench() []int {
	s := os.Getenv("GOCOLL_NETNS_SIZES")
	if s == "" {
		return benchSizes
	}
	var sizes []int
	for _, f := range strings.Split(s, ",") {
		if v, err := strconv.Atoi(f); err == nil && v > 0 {
			sizes = append(sizes, v)
		}
	}
	return sizes
}

// benchKinds are the collectives BenchmarkHierVsFlat times, in order;
// GOCOLL_NETNS_KINDS (comma-separated) times only those it names.
var benchKinds = []string{"allreduce", "broadcast", "allgather", "reduce_scatter", "reduce", "gather", "scatter", "alltoall", "barrier"}

// kindsToBench is benchKinds, or the ones GOCOLL_NETNS_KINDS names.
func kindsToBench() []string {
	s := os.Getenv("GOCOLL_NETNS_KINDS")
	if s == "" {
		return benchKinds
	}
	return slices.DeleteFunc(slices.Clone(benchKinds), func(k string) bool { return !slices.Contains(strings.Split(s, ","), k) })
}

// benchIters is how many timed calls follow the warm-up at a size: enough
// 8 B calls to average out wake-up jitter, few 8 MiB calls because each
// crosses the 1 Gbit/s link in tens of milliseconds.
func benchIters(size int) (warm, iters int) {
	if size <= 4096 {
		return 5, 50
	}
	n := 3
	if s := os.Getenv("GOCOLL_NETNS_ITERS"); s != "" {
		if v, err := strconv.Atoi(s); err == nil && v > 0 {
			n = v
		}
	}
	return 1, n
}

// benchCall returns one call of collective kind at size bytes on c, with
// buffers allocated once so that the timed loop allocates nothing.
func benchCall(c *dispatch.Comm, kind string, size int) (func(context.Context) error, error) {
	np := c.Size()
	block := max(size/np, 1)
	whole := block * np
	switch kind {
	case "allreduce":
		send, recv := make([]uint8, size), make([]uint8, size)
		return func(ctx context.Context) error { return coll.AllreduceUint8(ctx, c, send, recv, coll.OpSum) }, nil
	case "broadcast":
		buf := make([]uint8, size)
		return func(ctx context.Context) error { return coll.BroadcastUint8(ctx, c, buf, 0) }, nil
	case "allgather":
		send, recv := make([]uint8, block), make([]uint8, whole)
		return func(ctx context.Context) error { return coll.AllgatherUint8(ctx, c, send, recv) }, nil
	case "reduce_scatter":
		send, recv := make([]uint8, whole), make([]uint8, block)
		return func(ctx context.Context) error { return coll.ReduceScatterUint8(ctx, c, send, recv, coll.OpSum) }, nil
	case "reduce":
		send := make([]uint8, size)
		var recv []uint8
		if c.Rank() == 0 {
			recv = make([]uint8, size)
		}
		return func(ctx context.Context) error { return coll.ReduceUint8(ctx, c, send, recv, coll.OpSum, 0) }, nil
	case "gather":
		send := make([]uint8, block)
		var recv []uint8
		if c.Rank() == 0 {
			recv = make([]uint8, whole)
		}
		return func(ctx context.Context) error { return coll.GatherUint8(ctx, c, send, recv, 0) }, nil
	case "scatter":
		var send []uint8
		if c.Rank() == 0 {
			send = make([]uint8, whole)
		}
		recv := make([]uint8, block)
		return func(ctx context.Context) error { return coll.ScatterUint8(ctx, c, send, recv, 0) }, nil
	case "alltoall":
		send, recv := make([]uint8, whole), make([]uint8, whole)
		return func(ctx context.Context) error { return coll.AlltoallUint8(ctx, c, send, recv) }, nil
	case "barrier":
		return func(ctx context.Context) error { return coll.Barrier(ctx, c) }, nil
	}
	return nil, fmt.Errorf("benchmark: unknown collective %q", kind)
}

// hierVsFlatBody times every collective of benchKinds at every size of
// benchSizes through dispatch (the backend GOCOLL_BACKEND names, or auto),
// and prints on rank 0 one RESULT line per pair with the worst rank's mean
// time per call. Every timed loop starts after a barrier, so that no rank
// counts time spent waiting for a peer still in the previous loop.
func hierVsFlatBody(ctx context.Context, r *proctest.Rank) error {
	c, err := hierComm(ctx, r, 2*time.Minute)
	if err != nil {
		return err
	}
	defer c.Close()
	sizes := sizesToBench()
	for _, size := range sizes {
		for _, kind := range kindsToBench() {
			if kind == "barrier" && size != sizes[0] {
				continue // a barrier moves no data; once is enough
			}
			call, err := benchCall(c, kind, size)
			if err != nil {
				return err
			}
			warm, iters := benchIters(size)
			for range warm {
				if err := call(ctx); err != nil {
					return fmt.Errorf("%s %d B warm-up: %w", kind, size, err)
				}
			}
			if err := coll.Barrier(ctx, c); err != nil {
				return err
			}
			start := time.Now()
			for range iters {
				if err := call(ctx); err != nil {
					return fmt.Errorf("%s %d B: %w", kind, size, err)
				}
			}
			worst := []float64{time.Since(start).Seconds() / float64(iters)}
			if err := coll.AllreduceFloat64(ctx, c, worst, worst, coll.OpMax); err != nil {
				return err
			}
			if r.Rank == 0 {
				bytes := size
				if kind == "barrier" {
					bytes = 0
				}
				fmt.Printf("RESULT backend=%s kind=%s bytes=%d iters=%d time_us=%.1f\n", c.Backend(), kind, bytes, iters, worst[0]*1e6)
			}
		}
	}
	return nil
}

// benchKey names one measured pair.
type benchKey struct {
	kind  string
	bytes int
}

// runBench runs the hiervsflat body like Net.Run, for a benchmark, and
// returns rank 0's times by collective and size, in microseconds.
func (n *Net) runBench(b *testing.B, np int, env ...string) map[benchKey]float64 {
	b.Helper()
	k := len(n.Nodes)
	node := func(r int) int { return r * k / np }
	opts := []proctest.Option{
		proctest.Wrapper(func(r int) []string { return []string{"ip", "netns", "exec", n.Nodes[node(r)]} }),
		proctest.RankEnv(func(r int) []string {
			return []string{"GOCOLL_SOCKET_IFNAME=" + Ifname, "GOCOLL_NODE_ID=" + n.Nodes[node(r)]}
		}),
		proctest.StoreAddr(n.HubIP+":0", n.HubIP),
		proctest.Timeout(4 * time.Minute),
		proctest.Env(env...),
	}
	var res []proctest.Result
	if err := inNamespace(n.Hub, func() error {
		res = proctest.Run(b, "hiervsflat", np, opts...)
		return nil
	}); err != nil {
		b.Fatal(err)
	}
	out := map[benchKey]float64{}
	for _, line := range strings.Split(res[0].Output, "\n") {
		i := strings.Index(line, "RESULT ")
		if i < 0 {
			continue
		}
		var key benchKey
		var us float64
		for _, f := range strings.Fields(line[i+len("RESULT "):]) {
			k, v, _ := strings.Cut(f, "=")
			switch k {
			case "kind":
				key.kind = v
			case "bytes":
				key.bytes, _ = strconv.Atoi(v)
			case "time_us":
				us, _ = strconv.ParseFloat(v, 64)
			}
		}
		out[key] = us
	}
	if len(out) == 0 {
		b.Fatalf("rank 0 printed no RESULT lines; its output:\n%s", res[0].Output)
	}
	return out
}

func median(xs []float64) float64 {
	s := slices.Clone(xs)
	sort.Float64s(s)
	if len(s)%2 == 1 {
		return s[len(s)/2]
	}
	return (s[len(s)/2-1] + s[len(s)/2]) / 2
}

// BenchmarkHierVsFlat: 2 nodes x 2 ranks (GOCOLL_NETNS_NP ranks in all,
// if set) over links shaped to 1 Gbit/s
// and 1 ms of delay each way; every collective at 8 B and 8 MiB, once
// through dispatch's default choice (hierarchical: shm inside a node, tcp
// between) and once with GOCOLL_BACKEND=tcp (flat), GOCOLL_NETNS_REPS
// times (default 3), alternating which goes first. It prints a table of
// median times and hier/flat ratios (below 1: hierarchical faster) and
// reports the 8 MiB ratios as metrics. Run it with -benchtime 1x: one
// iteration is the whole measurement.
func BenchmarkHierVsFlat(b *testing.B) {
	n := Setup(b, 2)
	how, delayed := n.Shape(b, "1gbit", "1ms")
	b.Logf("links: %s", how)
	if !delayed {
		b.Fatalf("the 1 ms delay is not emulated (%s); the comparison needs it", how)
	}
	reps := 3
	if s := os.Getenv("GOCOLL_NETNS_REPS"); s != "" {
		v, err := strconv.Atoi(s)
		if err != nil || v < 1 {
			b.Fatalf("GOCOLL_NETNS_REPS=%q: want a positive count", s)
		}
		reps = v
	}
	np := 4
	if s := os.Getenv("GOCOLL_NETNS_NP"); s != "" {
		v, err := strconv.Atoi(s)
		if err != nil || v < 2 {
			b.Fatalf("GOCOLL_NETNS_NP=%q: want at least 2 ranks", s)
		}
		np = v
	}
	modes := []struct {
		name string
		env  []string
	}{
		{"hier", []string{envWant + "=shm+tcp"}},
		{"flat", []string{envWant + "=tcp", "GOCOLL_BACKEND=tcp"}},
	}
	for range b.N {
		times := map[string]map[benchKey][]float64{"hier": {}, "flat": {}}
		for rep := range reps {
			order := []int{0, 1}
			if rep%2 == 1 {
				order = []int{1, 0}
			}
			for _, m := range order {
				mode := modes[m]
				got := n.runBench(b, np, mode.env...)
				for k, us := range got {
					times[mode.name][k] = append(times[mode.name][k], us)
				}
				b.Logf("rep %d %s done", rep+1, mode.name)
			}
		}
		var tab strings.Builder
		fmt.Fprintf(&tab, "\n%-15s %9s %14s %14s %10s   %s\n", "collective", "bytes", "hier_us(med)", "flat_us(med)", "hier/flat", "per-rep hier/flat")
		for _, size := range append([]int{0}, sizesToBench()...) {
			for _, kind := range benchKinds {
				k := benchKey{kind, size}
				h, f := times["hier"][k], times["flat"][k]
				if len(h) == 0 || len(f) == 0 {
					continue
				}
				var per []string
				for i := range min(len(h), len(f)) {
					per = append(per, fmt.Sprintf("%.2f", h[i]/f[i]))
				}
				ratio := median(h) / median(f)
				fmt.Fprintf(&tab, "%-15s %9d %14.1f %14.1f %10.2f   %s\n", kind, size, median(h), median(f), ratio, strings.Join(per, " "))
				if size == 8<<20 {
					b.ReportMetric(ratio, kind+"-8MiB-hier/flat")
				}
			}
		}
		// Printed, not logged: the benchmark log keeps only the first lines.
		fmt.Print(tab.String())
	}
}
