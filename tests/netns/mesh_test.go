package netns

import (
	"context"
	"errors"
	"fmt"
	"os"
	"slices"
	"strconv"
	"sync"
	"testing"
	"time"

	"github.com/gocoll/gocoll/core"
	"github.com/gocoll/gocoll/dispatch"
	"github.com/gocoll/gocoll/internal/checked"
	"github.com/gocoll/gocoll/internal/proctest"
	"github.com/gocoll/gocoll/tests/conform"
)

// meshCount is the number of int64 elements in each checked allreduce of
// the mesh tests (16 Ki).
const meshCount = 1 << 14

func init() { proctest.Register("mesh", meshBody) }

// TestMesh2D is the layout of tensor parallelism inside nodes and data
// parallelism across them: 2 nodes x 4 ranks; the TP groups (the ranks of
// one node) must pick shm and the DP groups (one rank of each node) tcp,
// and each rank drives both from two goroutines at once, every result
// checked.
func TestMesh2D(t *testing.T) {
	n := Setup(t, 2)
	n.Run(t, "mesh", 8, proctest.Timeout(3*time.Minute), proctest.Env(envWant+"=shm+tcp"))
}

func meshBody(ctx context.Context, r *proctest.Rank) error {
	c, err := hierComm(ctx, r, time.Minute)
	if err != nil {
		return err
	}
	defer c.Close()
	if c.NumNodes() != 2 || c.LocalSize() != 4 {
		return fmt.Errorf("rank %d: %d nodes, %d ranks on its node; want 2 and 4", r.Rank, c.NumNodes(), c.LocalSize())
	}
	tp, err := c.Split(ctx, c.NodeRank(), c.LocalRank())
	if err != nil {
		return fmt.Errorf("rank %d: TP split: %w", r.Rank, err)
	}
	defer tp.Close()
	dp, err := c.Split(ctx, c.LocalRank(), c.NodeRank())
	if err != nil {
		return fmt.Errorf("rank %d: DP split: %w", r.Rank, err)
	}
	defer dp.Close()
	node := c.NodeRank()
	if want := []int{4 * node, 4*node + 1, 4*node + 2, 4*node + 3}; !slices.Equal(tp.Ranks(), want) || tp.Backend() != "shm" {
		return fmt.Errorf("rank %d: TP group of world ranks %v on %s; want %v on shm", r.Rank, tp.Ranks(), tp.Backend(), want)
	}
	if want := []int{c.LocalRank(), 4 + c.LocalRank()}; !slices.Equal(dp.Ranks(), want) || dp.Backend() != "tcp" {
		return fmt.Errorf("rank %d: DP group of world ranks %v on %s; want %v on tcp", r.Rank, dp.Ranks(), dp.Backend(), want)
	}

	// Both groups at once, from two goroutines: each runs the
	// conformance cases, then allreduces large enough to overlap.
	errs := make([]error, 2)
	var wg sync.WaitGroup
	for i, g := range []*dispatch.Comm{tp, dp} {
		wg.Go(func() {
			if err := conform.Run(ctx, g, conform.Options{Sizes: []int{0, 7, 300}, NoRandom: true, NoInPlace: true}); err != nil {
				errs[i] = fmt.Errorf("rank %d: %s group %v: %w", r.Rank, g.Backend(), g.Ranks(), err)
				return
			}
			for it := range 200 {
				if err := checked.Allreduce(ctx, g, it, meshCount); err != nil {
					errs[i] = fmt.Errorf("rank %d: %s group %v: allreduce #%d: %w", r.Rank, g.Backend(), g.Ranks(), it, err)
					return
				}
			}
		})
	}
	wg.Wait()
	fmt.Printf("rank %d: TP %v on %s and DP %v on %s\n", r.Rank, tp.Ranks(), tp.Backend(), dp.Ranks(), dp.Backend())
	if err := errors.Join(errs...); err != nil {
		return err
	}
	return c.Barrier(ctx)
}

func init() { proctest.Register("meshshrink", meshShrinkBody) }

// TestShrinkAcrossNodes: 2 nodes x 2 ranks on the hierarchical backend;
// a rank (a node's leader or not) is killed with SIGKILL, and the 3
// survivors Shrink onto a hierarchical communicator of their own (one node
// still has two of them) and run 200 checked allreduces.
func TestShrinkAcrossNodes(t *testing.T) {
	const np = 4
	for _, victim := range []int{1, 2} {
		t.Run(fmt.Sprint("victim", victim), func(t *testing.T) {
			n := Setup(t, 2)
			res := n.Run(t, "meshshrink", np, proctest.Timeout(2*time.Minute),
				proctest.Env(envWant+"=shm+tcp", "GOCOLL_NETNS_VICTIM="+strconv.Itoa(victim)),
				proctest.KillOnMark(victim, "running"))
			if !res[victim].Killed {
				t.Errorf("rank %d was not killed: %+v", victim, res[victim])
			}
		})
	}
}

func meshShrinkBody(ctx context.Context, r *proctest.Rank) error {
	victim, err := strconv.Atoi(os.Getenv("GOCOLL_NETNS_VICTIM"))
	if err != nil {
		return err
	}
	c, err := hierComm(ctx, r, 20*time.Second)
	if err != nil {
		return err
	}
	defer c.Close()
	for i := 0; ; i++ {
		if r.Rank == victim && i == 10 {
			r.Mark("running") // the parent kills this process now
		}
		err := checked.Allreduce(ctx, c, i, meshCount)
		if err == nil {
			continue
		}
		var pe *core.PeerError
		if !errors.As(err, &pe) || !slices.Contains(pe.Ranks, victim) {
			return fmt.Errorf("rank %d: allreduce #%d: want a *core.PeerError naming rank %d: %w", r.Rank, i, victim, err)
		}
		break
	}
	s, err := c.Shrink(ctx)
	if err != nil {
		return fmt.Errorf("rank %d: shrink: %w", r.Rank, err)
	}
	defer s.Close()
	want := slices.DeleteFunc([]int{0, 1, 2, 3}, func(w int) bool { return w == victim })
	if !slices.Equal(s.Ranks(), want) || s.Backend() != "shm+tcp" {
		return fmt.Errorf("rank %d: shrunk to world ranks %v on %s; want %v on shm+tcp", r.Rank, s.Ranks(), s.Backend(), want)
	}
	for i := range 200 {
		if err := checked.Allreduce(ctx, s, i, meshCount); err != nil {
			return fmt.Errorf("rank %d: allreduce #%d after shrinking: %w", r.Rank, i, err)
		}
	}
	return nil
}
