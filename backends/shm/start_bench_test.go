package shm

import (
	"context"
	"fmt"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/gocoll/gocoll/core"
	"github.com/gocoll/gocoll/generated/coll"
	"github.com/gocoll/gocoll/internal/proctest"
)

func init() { proctest.Register("startbench", startBenchBody) }

// startBenchBody times an 8-byte allreduce issued blocking
// (coll.AllreduceFloat32) and started and waited for at once
// (coll.StartAllreduceFloat32, Wait), in alternating blocks so
// that load on the machine hits both alike, and prints the medians of the
// blocks' per-call times (rank 0).
func startBenchBody(ctx context.Context, r *proctest.Rank) error {
	b, err := newProcBackend(ctx, r, "shm/")
	if err != nil {
		return err
	}
	g := core.NewGuard(b)
	defer g.Close()
	send, recv := make([]float32, 2), make([]float32, 2)
	// Both through the typed API, as a user calls them: each builds its
	// Request from the arguments.
	blocking := func() error { return coll.AllreduceFloat32(ctx, g, send, recv, coll.OpSum) }
	started := func() error {
		h, err := coll.StartAllreduceFloat32(ctx, g, send, recv, coll.OpSum)
		if err != nil {
			return err
		}
		return h.Wait(ctx)
	}
	const iters, blocks = 20000, 40
	var per [2][]float64
	for k := range blocks + 2 {
		run := blocking
		if k%2 == 1 {
			run = started
		}
		if err := g.Do(ctx, &core.Request{Kind: core.KindBarrier}); err != nil {
			return err
		}
		t0 := time.Now()
		for range iters {
			if err := run(); err != nil {
				return err
			}
		}
		if k >= 2 { // the first pair warms up
			per[k%2] = append(per[k%2], float64(time.Since(t0).Nanoseconds())/iters)
		}
	}
	if r.Rank == 0 {
		var diffs []float64
		for i := range per[0] {
			diffs = append(diffs, per[1][i]-per[0][i])
		}
		slices.Sort(per[0])
		slices.Sort(per[1])
		slices.Sort(diffs)
		fmt.Printf("STARTBENCH blocking=%.1f started=%.1f delta=%.1f\n", per[0][len(per[0])/2], per[1][len(per[1])/2], diffs[len(diffs)/2])
	}
	return nil
}

// BenchmarkStartedOverhead8B: the cost of the started path (Start then
// Wait at once) over the blocking one for an 8-byte allreduce at np=2, as
// medians of interleaved blocks: ns/coll of each and the median of the
// paired differences.
func BenchmarkStartedOverhead8B(b *testing.B) {
	res := procRanks(b, "startbench", 2)
	for _, r := range res {
		if r.Rank != 0 {
			continue
		}
		i := strings.Index(r.Output, "STARTBENCH ")
		if i < 0 {
			b.Fatalf("no result in rank 0's output:\n%s", r.Output)
		}
		var bl, st, d float64
		fmt.Sscanf(r.Output[i:], "STARTBENCH blocking=%f started=%f delta=%f", &bl, &st, &d)
		b.ReportMetric(bl, "blocking-ns/coll")
		b.ReportMetric(st, "started-ns/coll")
		b.ReportMetric(d, "delta-ns/coll")
	}
}

// TestStartAllocs: a started call waited for allocates nothing: its state
// is reused once Wait has released it.
func TestStartAllocs(t *testing.T) {
	mustOK(t, goRanks(t, 1, nil, func(ctx context.Context, g *core.Guard) error {
		send, recv := make([]float32, 2), make([]float32, 2)
		n := testing.AllocsPerRun(1000, func() {
			h, err := coll.StartAllreduceFloat32(ctx, g, send, recv, coll.OpSum)
			if err == nil {
				err = h.Wait(ctx)
			}
			if err != nil {
				t.Error(err)
			}
		})
		if n > 0 {
			return fmt.Errorf("%.1f allocations per started call, want none", n)
		}
		return nil
	}))
}

// BenchmarkStartOverheadOneRank: the started path's own cost, without any
// waiting: an 8-byte allreduce on one rank, blocking and started.
func BenchmarkStartOverheadOneRank(b *testing.B) {
	for _, mode := range []string{"blocking", "started"} {
		b.Run(mode, func(b *testing.B) {
			mustOK(b, goRanks(b, 1, nil, func(ctx context.Context, g *core.Guard) error {
				send, recv := make([]float32, 2), make([]float32, 2)
				b.ReportAllocs()
				c0 := cpuTime()
				b.ResetTimer()
				defer func() {
					// CPU time, the GC's included: unlike ns/op it does
					// not count the time other processes take the CPU.
					b.ReportMetric(float64(cpuTime()-c0)/float64(b.N), "cpu-ns/op")
				}()
				for range b.N {
					var err error
					if mode == "blocking" {
						err = coll.AllreduceFloat32(ctx, g, send, recv, coll.OpSum)
					} else {
						var h core.Handle
						if h, err = coll.StartAllreduceFloat32(ctx, g, send, recv, coll.OpSum); err == nil {
							err = h.Wait(ctx)
						}
					}
					if err != nil {
						return err
					}
				}
				return nil
			}))
		})
	}
}
