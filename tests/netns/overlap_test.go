package netns

import (
	"context"
	"fmt"
	"math"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/gocoll/gocoll/generated/coll"
	"github.com/gocoll/gocoll/internal/proctest"
)

func init() { proctest.Register("overlap", overlapBody) }

// overlapBytes is the allreduce the overlap bar starts.
const overlapBytes = 8 << 20

// overlapReps is how many times each of the three timings is taken,
// interleaved; medians are reported.
const overlapReps = 5

// compute burns the CPU for about n units of work and returns a value the
// compiler cannot drop.
func compute(n int) float64 {
	x := 1.0
	for i := range n {
		x = math.Sqrt(x + float64(i&1023))
	}
	return x
}

// overlapBody measures, on each of two ranks: an 8 MiB allreduce alone
// (comm), a computation calibrated to take about as long (compute), and
// the allreduce started, then the computation, then Wait (both). Rank 0
// prints the medians.
func overlapBody(ctx context.Context, r *proctest.Rank) error {
	c, err := hierComm(ctx, r, 2*time.Minute)
	if err != nil {
		return err
	}
	defer c.Close()
	send, recv := make([]float32, overlapBytes/4), make([]float32, overlapBytes/4)
	for i := range send {
		send[i] = float32(r.Rank + i%3)
	}
	allreduce := func() error { return coll.AllreduceFloat32(ctx, c, send, recv, coll.OpSum) }
	if err := allreduce(); err != nil { // warm up: connections, buffers
		return err
	}
	// Calibrate: units of compute per second on this rank.
	t0 := time.Now()
	sink := compute(1 << 22)
	rate := float64(1<<22) / time.Since(t0).Seconds()
	t0 = time.Now()
	if err := allreduce(); err != nil {
		return err
	}
	units := int(rate * time.Since(t0).Seconds())
	var comm, work, both []float64
	for range overlapReps {
		if err := coll.Barrier(ctx, c); err != nil {
			return err
		}
		t0 = time.Now()
		if err := allreduce(); err != nil {
			return err
		}
		comm = append(comm, time.Since(t0).Seconds())

		t0 = time.Now()
		sink += compute(units)
		work = append(work, time.Since(t0).Seconds())

		if err := coll.Barrier(ctx, c); err != nil {
			return err
		}
		t0 = time.Now()
		h, err := coll.StartAllreduceFloat32(ctx, c, send, recv, coll.OpSum)
		if err != nil {
			return err
		}
		sink += compute(units)
		if err := h.Wait(ctx); err != nil {
			return err
		}
		both = append(both, time.Since(t0).Seconds())
		for i := range 16 { // rank r sent r + i%3

			if exp := float32(1 + 2*(i%3)); recv[i] != exp {
				return fmt.Errorf("overlapped allreduce: element %d = %v, want %v", i, recv[i], exp)
			}
		}
	}
	if r.Rank == 0 {
		fmt.Printf("OVERLAP comm=%.2f compute=%.2f both=%.2f sink=%g\n",
			1e3*median(comm), 1e3*median(work), 1e3*median(both), sink)
	}
	return nil
}

// BenchmarkOverlap is the overlap bar: two ranks on two nodes over the
// shaped 1 Gbit/s, 1 ms link; each starts an 8 MiB allreduce, computes for
// about as long, then waits. It reports the three medians (ms) and the
// overlap: the share of the shorter of comm and compute hidden behind the
// other, (comm + compute - both) / min(comm, compute). The bar is both <=
// max + 20% of min, an overlap of at least 80%.
func BenchmarkOverlap(b *testing.B) {
	n := Setup(b, 2)
	how, delayed := n.Shape(b, "1gbit", "1ms")
	b.Logf("links: %s", how)
	if !delayed {
		b.Fatalf("the 1 ms delay is not emulated (%s); the bar needs it", how)
	}
	for range b.N {
		opts := []proctest.Option{
			proctest.Wrapper(func(r int) []string { return []string{"ip", "netns", "exec", n.Nodes[r]} }),
			proctest.RankEnv(func(r int) []string {
				return []string{"GOCOLL_SOCKET_IFNAME=" + Ifname, "GOCOLL_NODE_ID=" + n.Nodes[r]}
			}),
			proctest.StoreAddr(n.HubIP+":0", n.HubIP),
			proctest.Timeout(4 * time.Minute),
			proctest.Env(envWant + "=tcp"),
		}
		var res []proctest.Result
		if err := inNamespace(n.Hub, func() error {
			res = proctest.Run(b, "overlap", 2, opts...)
			return nil
		}); err != nil {
			b.Fatal(err)
		}
		out := res[0].Output
		i := strings.Index(out, "OVERLAP ")
		if i < 0 {
			b.Fatalf("rank 0 printed no result:\n%s", out)
		}
		vals := map[string]float64{}
		for _, f := range strings.Fields(out[i+len("OVERLAP "):]) {
			k, v, _ := strings.Cut(f, "=")
			if x, err := strconv.ParseFloat(v, 64); err == nil {
				vals[k] = x
			}
			if k == "sink" {
				break
			}
		}
		comm, work, both := vals["comm"], vals["compute"], vals["both"]
		lo, hi := min(comm, work), max(comm, work)
		overlap := 100 * (comm + work - both) / lo
		b.ReportMetric(comm, "comm-ms")
		b.ReportMetric(work, "compute-ms")
		b.ReportMetric(both, "both-ms")
		b.ReportMetric(overlap, "overlap-%")
		fmt.Printf("overlap: comm %.1f ms, compute %.1f ms, both %.1f ms: %.0f%% of the shorter hidden; bar both <= %.1f ms: %v\n",
			comm, work, both, overlap, hi+0.2*lo, both <= hi+0.2*lo)
	}
}
