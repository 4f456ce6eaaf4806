package tests

import (
	"context"
	"fmt"
	"os"
	"slices"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/gocoll/gocoll/dispatch"
	"github.com/gocoll/gocoll/generated/coll"
	"github.com/gocoll/gocoll/internal/proctest"
	"github.com/gocoll/gocoll/store"
)

// The costs of groups, as benchmarks (machine-dependent, never asserted):
// an allreduce on a Split group against the same allreduce on a world
// communicator of the group's size, and how long creating a group takes.

func init() { proctest.Register("groupbench", groupBenchBody) }

// Sizes of BenchmarkGroupCosts' allreduces, in bytes.
var groupBenchBytes = []int{8, 64 << 10, 1 << 20}

// BenchmarkGroupCosts runs np ranks (GOCOLL_TEST_NP, default 8) on one
// backend (GOCOLL_TEST_BACKEND, default shm), splits them into two halves,
// and in each half times float32 allreduces on the Split group and on a
// world communicator of the same ranks (Init on a prefix of the same
// store), in alternating rounds, reporting medians; and it times Split
// and NewGroup at np, each as the slowest rank saw it. Run it with
// -benchtime 1x: one iteration is the whole measurement.
func BenchmarkGroupCosts(b *testing.B) {
	be := os.Getenv(envBackend)
	if be == "" {
		be = "shm"
	}
	np := 8
	if s := os.Getenv("GOCOLL_TEST_NP"); s != "" {
		v, err := strconv.Atoi(s)
		if err != nil || v < 2 {
			b.Fatalf("GOCOLL_TEST_NP=%q: want a number of ranks, at least 2", s)
		}
		np = v
	}
	for range b.N {
		res := proctest.Run(b, "groupbench", np, proctest.Timeout(5*time.Minute), proctest.Env(envBackend+"="+be))
		for _, line := range strings.Split(res[0].Output, "\n") {
			i := strings.Index(line, "RESULT ")
			if i < 0 {
				continue
			}
			b.Log(line[i:])
			f := strings.Fields(line[i+len("RESULT "):])
			if len(f) == 2 {
				if v, err := strconv.ParseFloat(f[1], 64); err == nil {
					b.ReportMetric(v, f[0])
				}
			}
		}
	}
}

func groupBenchBody(ctx context.Context, r *proctest.Rank) error {
	be := os.Getenv(envBackend)
	c, err := initComm(ctx, r, be)
	if err != nil {
		return err
	}
	defer c.Close()
	me, np := r.Rank, r.Size
	half := me * 2 / np

	// Creation: Split into halves and NewGroup of every rank, 30 times
	// each; a creation lasts until the slowest rank has its group.
	const creations = 30
	var split, newg []float64
	for i := range creations {
		for _, kind := range []string{"split", "new_group"} {
			if err := c.Barrier(ctx); err != nil {
				return err
			}
			start := time.Now()
			var g *dispatch.Comm
			if kind == "split" {
				g, err = c.Split(ctx, half, 0)
			} else {
				g, err = c.NewGroup(ctx, seq(0, np))
			}
			if err != nil {
				return fmt.Errorf("%s #%d: %w", kind, i, err)
			}
			took := []float64{float64(time.Since(start).Microseconds()) / 1000}
			if err := g.Close(); err != nil {
				return err
			}
			if err := coll.AllreduceFloat64(ctx, c, took, took, coll.OpMax); err != nil {
				return err
			}
			if kind == "split" {
				split = append(split, took[0])
			} else {
				newg = append(newg, took[0])
			}
		}
	}

	// The Split group and a world of the same ranks, side by side.
	g, err := c.Split(ctx, half, 0)
	if err != nil {
		return err
	}
	defer g.Close()
	w, err := dispatch.Init(ctx, dispatch.WithStore(store.Prefix(r.Store, "world-of-half"+strconv.Itoa(half)+"/")),
		dispatch.WithRank(g.Rank()), dispatch.WithSize(g.Size()), dispatch.WithSecret(r.Secret),
		dispatch.WithBackend(be), dispatch.WithTimeout(collTimeout))
	if err != nil {
		return fmt.Errorf("a world of half %d: %w", half, err)
	}
	defer w.Close()
	if g.Backend() != w.Backend() {
		return fmt.Errorf("the group runs %s, the world of its ranks %s", g.Backend(), w.Backend())
	}
	const rounds = 31
	for _, size := range groupBenchBytes {
		n := size / 4
		send, recv := make([]float32, n), make([]float32, n)
		iters := max(20, min(2000, (64<<20)/max(size, 1)/np))
		times := map[string][]float64{}
		for round := range rounds {
			order := []*dispatch.Comm{g, w}
			if round%2 == 1 {
				order = []*dispatch.Comm{w, g}
			}
			for _, cm := range order {
				for range iters / 10 { // warm up
					if err := coll.AllreduceFloat32(ctx, cm, send, recv, coll.OpSum); err != nil {
						return err
					}
				}
				if err := cm.Barrier(ctx); err != nil {
					return err
				}
				start := time.Now()
				for range iters {
					if err := coll.AllreduceFloat32(ctx, cm, send, recv, coll.OpSum); err != nil {
						return err
					}
				}
				us := []float64{float64(time.Since(start).Nanoseconds()) / 1000 / float64(iters)}
				// Both halves run alike; the slowest rank of the pair of
				// halves is the round's time.
				if err := coll.AllreduceFloat64(ctx, c, us, us, coll.OpMax); err != nil {
					return err
				}
				name := "group"
				if cm == w {
					name = "world"
				}
				times[name] = append(times[name], us[0])
			}
		}
		if me == 0 {
			// Each round's two measurements ran back to back, under the
			// same load: their ratio cancels most of what the machine's
			// other work does to either, and its median is the figure.
			ratios := make([]float64, rounds)
			for i := range ratios {
				ratios[i] = times["group"][i] / times["world"][i]
			}
			fmt.Printf("RESULT group_us_%dB %.3f\n", size, median(times["group"]))
			fmt.Printf("RESULT world_us_%dB %.3f\n", size, median(times["world"]))
			fmt.Printf("RESULT group_vs_world_%%_%dB %.2f\n", size, 100*(median(ratios)-1))
		}
	}
	if me == 0 {
		fmt.Printf("RESULT split_ms_median %.3f\n", median(split))
		fmt.Printf("RESULT split_ms_max %.3f\n", slices.Max(split))
		fmt.Printf("RESULT new_group_ms_median %.3f\n", median(newg))
		fmt.Printf("RESULT new_group_ms_max %.3f\n", slices.Max(newg))
	}
	return c.Barrier(ctx)
}

func median(xs []float64) float64 {
	s := slices.Clone(xs)
	slices.Sort(s)
	if len(s)%2 == 1 {
		return s[len(s)/2]
	}
	return (s[len(s)/2-1] + s[len(s)/2]) / 2
}
