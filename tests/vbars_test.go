package tests

import (
	"context"
	"fmt"
	"os"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/gocoll/gocoll/core"
	"github.com/gocoll/gocoll/internal/proctest"
)

// The vector collectives' bars, measured with real processes: a vector
// collective with uniform counts against its fixed-count form, the two
// calls alternating in one loop, so that the load of a shared machine
// falls on both alike (separate sweeps, even interleaved, differ by more
// than the bar from one run to the next there). Rank 0 prints, per size,
// the median time of each call and their ratio.

const (
	envBars     = "GOCOLL_VBARS"      // "1": run TestVectorBars
	envBarsPair = "GOCOLL_VBARS_PAIR" // the fixed collective of the pair
)

func init() { proctest.Register("vbars", vbarsBody) }

func TestVectorBars(t *testing.T) {
	if os.Getenv(envBars) != "1" {
		t.Skipf("set %s=1 to measure the vector collectives against their fixed forms (minutes)", envBars)
	}
	for _, p := range []struct{ backend, fixed string }{{"shm", "alltoall"}, {"tcp", "allgather"}} {
		t.Run(p.backend+"-"+p.fixed, func(t *testing.T) {
			res := proctest.Run(t, "vbars", 4, proctest.Timeout(15*time.Minute),
				proctest.Env(envBackend+"="+p.backend, envBarsPair+"="+p.fixed))
			t.Logf("%s", strings.TrimSpace(res[0].Output))
		})
	}
}

func vbarsBody(ctx context.Context, r *proctest.Rank) error {
	c, err := initCommTimeout(ctx, r, os.Getenv(envBackend), 5*time.Minute)
	if err != nil {
		return err
	}
	defer c.Close()
	n := c.Size()
	fixedKind := core.KindAlltoall
	vectorKind := core.KindAlltoallv
	if os.Getenv(envBarsPair) == "allgather" {
		fixedKind, vectorKind = core.KindAllgather, core.KindAllgatherv
	}
	if r.Rank == 0 {
		fmt.Printf("| size | %v us | %v us | ratio | pairs |\n|---:|---:|---:|---:|---:|\n", fixedKind, vectorKind)
	}
	worst := 0.0
	for size := 16 * n; size <= 16<<20; size *= 4 {
		count := size / 4 / n // float32 elements per block; size is the n-block buffer
		counts := make([]int, n)
		for j := range counts {
			counts[j] = count
		}
		var fixed, vector *core.Request
		if fixedKind == core.KindAlltoall {
			send, recv := make([]byte, 4*count*n), make([]byte, 4*count*n)
			fixed = &core.Request{Kind: fixedKind, DType: 1, Count: count, Send: send, Recv: recv}
			vector = &core.Request{Kind: vectorKind, DType: 1, SendCounts: counts, RecvCounts: counts, Send: send, Recv: recv}
		} else {
			send, recv := make([]byte, 4*count), make([]byte, 4*count*n)
			fixed = &core.Request{Kind: fixedKind, DType: 1, Count: count, Send: send, Recv: recv}
			vector = &core.Request{Kind: vectorKind, DType: 1, RecvCounts: counts, Send: send, Recv: recv}
		}
		pairs := max(30, min(1000, (1<<30)/size))
		var tf, tv []time.Duration
		for i := -5; i < pairs; i++ { // 5 pairs of warm-up
			// ABBA: each goes first in every other pair, so that what
			// the position in a pair costs (the ranks' drift, the other
			// call's cache footprint) falls on both alike.
			order := []*core.Request{fixed, vector}
			if i%2 != 0 {
				order[0], order[1] = vector, fixed
			}
			for _, req := range order {
				k := 0
				if req == vector {
					k = 1
				}
				t := time.Now()
				if err := c.Do(ctx, req); err != nil {
					return fmt.Errorf("rank %d: %v of %d bytes: %w", r.Rank, req.Kind, size, err)
				}
				d := time.Since(t)
				if i >= 0 && k == 0 {
					tf = append(tf, d)
				} else if i >= 0 {
					tv = append(tv, d)
				}
			}
		}
		slices.Sort(tf)
		slices.Sort(tv)
		mf, mv := tf[len(tf)/2], tv[len(tv)/2]
		ratio := float64(mv) / float64(mf)
		worst = max(worst, ratio)
		if r.Rank == 0 {
			fmt.Printf("| %d | %.2f | %.2f | %.3f | %d |\n", size, float64(mf.Nanoseconds())/1e3, float64(mv.Nanoseconds())/1e3, ratio, pairs)
		}
	}
	if r.Rank == 0 {
		fmt.Printf("\nworst ratio (rank 0's medians): %.3f\n", worst)
	}
	return nil
}
