package dispatch

import (
	"context"
	"errors"
	"fmt"
	"slices"
	"strconv"
	"testing"
	"time"

	"github.com/gocoll/gocoll/core"
	"github.com/gocoll/gocoll/generated/coll"
	"github.com/gocoll/gocoll/internal/memstore"
	"github.com/gocoll/gocoll/internal/proctest"
)

// sumOfWorldRanks allreduces each rank's world rank + 1 over c and checks
// the sum against the members c says it has.
func sumOfWorldRanks(ctx context.Context, c *Comm) error {
	buf := []int64{int64(c.WorldRank() + 1)}
	if err := coll.AllreduceInt64(ctx, c, buf, buf, coll.OpSum); err != nil {
		return err
	}
	var want int64
	for _, r := range c.Ranks() {
		want += int64(r + 1)
	}
	if buf[0] != want {
		return fmt.Errorf("group %v: allreduce gave %d, want %d", c.Ranks(), buf[0], want)
	}
	return nil
}

// Goroutine ranks on two simulated nodes: Split by parity with reversed
// keys, NewGroup of some ranks, and a group of a group, each checked for
// its ranks, its backend and a collective.
func TestGroupsGoroutines(t *testing.T) {
	layout := []string{"a", "a", "a", "b", "b", "b"}
	n := len(layout)
	s := memstore.New()
	errs := goRanks(n, func(r int) []Option {
		return []Option{WithStore(s), WithRank(r), WithSize(n), WithNodeID(layout[r]), WithTimeout(30 * time.Second)}
	}, func(ctx context.Context, c *Comm) error {
		me := c.Rank()
		// Parity groups, ranked by descending world rank: {4, 2, 0} and
		// {5, 3, 1}, each across both nodes.
		g, err := c.Split(ctx, me%2, -me)
		if err != nil {
			return fmt.Errorf("split: %w", err)
		}
		defer g.Close()
		want := []int{4, 2, 0}
		if me%2 == 1 {
			want = []int{5, 3, 1}
		}
		if !slices.Equal(g.Ranks(), want) || g.WorldRank() != me || g.Ranks()[g.Rank()] != me || g.Size() != 3 {
			return fmt.Errorf("split: rank %d of %d, ranks %v, want ranks %v", g.Rank(), g.Size(), g.Ranks(), want)
		}
		if g.Backend() != "shm+tcp" {
			return fmt.Errorf("split across nodes with two ranks on one: backend %q, want shm+tcp", g.Backend())
		}
		if err := sumOfWorldRanks(ctx, g); err != nil {
			return err
		}
		// Inside a group: a group of the ranks on one node picks shm.
		sub, err := g.Split(ctx, g.NodeRank(), 0)
		if err != nil {
			return fmt.Errorf("nested split: %w", err)
		}
		defer sub.Close()
		if sub.NumNodes() != 1 || sub.Backend() != "shm" {
			return fmt.Errorf("nested split: %d nodes, backend %q; want 1 and shm", sub.NumNodes(), sub.Backend())
		}
		if err := sumOfWorldRanks(ctx, sub); err != nil {
			return err
		}
		// One rank per node: tcp.
		ng, err := c.NewGroup(ctx, []int{4, 1})
		if err != nil {
			return fmt.Errorf("new group: %w", err)
		}
		if me != 1 && me != 4 {
			if ng != nil {
				return fmt.Errorf("new group: rank %d is not a member but got a group", me)
			}
		} else {
			defer ng.Close()
			if ng.Backend() != "tcp" || !slices.Equal(ng.Ranks(), []int{1, 4}) {
				return fmt.Errorf("new group: backend %q, ranks %v; want tcp, [1 4]", ng.Backend(), ng.Ranks())
			}
			if err := sumOfWorldRanks(ctx, ng); err != nil {
				return err
			}
		}
		// No color: no group.
		color := -1
		if me == 0 {
			color = 7
		}
		lone, err := c.Split(ctx, color, 0)
		if err != nil {
			return fmt.Errorf("split with one color: %w", err)
		}
		if (lone != nil) != (me == 0) {
			return fmt.Errorf("split with one color: rank %d got group %v", me, lone)
		}
		if lone != nil {
			defer lone.Close()
			if err := sumOfWorldRanks(ctx, lone); err != nil {
				return err
			}
		}
		return sumOfWorldRanks(ctx, c)
	})
	checkErrs(t, errs)
}

// Ranks that pass NewGroup different ranks, or bad ones, fail on every
// rank, naming the culprit; the parent still works after.
func TestNewGroupMismatch(t *testing.T) {
	const n = 3
	s := memstore.New()
	errs := goRanks(n, func(r int) []Option {
		return []Option{WithStore(s), WithRank(r), WithSize(n), WithBackend("shm"), WithTimeout(30 * time.Second)}
	}, func(ctx context.Context, c *Comm) error {
		me := c.Rank()
		ranks := []int{0, 1}
		if me == 2 {
			ranks = []int{0, 2}
		}
		_, err := c.NewGroup(ctx, ranks)
		var mm *core.MismatchError
		if !errors.As(err, &mm) || mm.Field != "ranks" || (me != 2 && mm.Peer != 2) || (me == 2 && mm.Peer == 2) {
			return fmt.Errorf("different ranks: got %v, want a MismatchError on ranks naming rank 2 (or, on rank 2, another)", err)
		}
		ranks = []int{0, 1}
		if me == 1 {
			ranks = []int{0, 3}
		}
		_, err = c.NewGroup(ctx, ranks)
		if me == 1 {
			if !errors.Is(err, core.ErrInvalid) {
				return fmt.Errorf("rank out of range: got %v, want core.ErrInvalid", err)
			}
		} else if !errors.As(err, &mm) || mm.Field != "argument" || mm.Peer != 1 {
			return fmt.Errorf("a peer's bad ranks: got %v, want a MismatchError on argument naming rank 1", err)
		}
		_, err = c.Split(ctx, 0, 0)
		if err != nil {
			return fmt.Errorf("a split after the failed group calls: %w", err)
		}
		return sumOfWorldRanks(ctx, c)
	})
	checkErrs(t, errs)
}

// A rank that never calls Split is named once the caller's deadline passes.
func TestSplitNamesAbsentRank(t *testing.T) {
	const n = 3
	s := memstore.New()
	done := make(chan struct{})
	errs := goRanks(n, func(r int) []Option {
		return []Option{WithStore(s), WithRank(r), WithSize(n), WithBackend("shm"), WithTimeout(30 * time.Second)}
	}, func(ctx context.Context, c *Comm) error {
		if c.Rank() == 2 {
			<-done
			return nil
		}
		// A deadline sooner than the communicator's timeout ends the wait.
		ctx, cancel := context.WithTimeout(ctx, time.Second)
		defer cancel()
		_, err := c.Split(ctx, 0, 0)
		var pe *core.PeerError
		if !errors.As(err, &pe) || !slices.Equal(pe.Ranks, []int{2}) {
			return fmt.Errorf("got %v, want a PeerError naming rank 2", err)
		}
		if c.Rank() == 0 {
			defer close(done)
		}
		return nil
	})
	checkErrs(t, errs)
}

func init() { proctest.Register("shrinkowner", shrinkOwnerBody) }

// Shrink where rank 0 serves the store, as under torchrun's variables:
// with rank 2 killed, the survivors shrink, close the old communicator
// first, and still use and close the new one (rank 0's Close waits for
// the other survivor). With rank 0 killed the store is gone with it, and
// Shrink says so.
func TestShrinkStoreOwner(t *testing.T) {
	for _, victim := range []int{2, 0} {
		t.Run(fmt.Sprint("victim", victim), func(t *testing.T) {
			const np = 3
			var opts []proctest.Option
			if victim == 0 {
				opts = append(opts, proctest.ExpectError("cannot reach the store", 1, 2))
			}
			proctest.Run(t, "shrinkowner", np, append(opts, proctest.Timeout(time.Minute), proctest.KillOnMark(victim, "ready"),
				torchrunEnv(t, np, "GOCOLL_BACKEND=shm", "GOCOLL_TIMEOUT=20s", "GOCOLL_TEST_VICTIM="+strconv.Itoa(victim)))...)
		})
	}
}

func shrinkOwnerBody(ctx context.Context, r *proctest.Rank) error {
	victim := envInt("GOCOLL_TEST_VICTIM", -1)
	c, err := Init(ctx)
	if err != nil {
		return err
	}
	defer c.Close()
	if err := c.Barrier(ctx); err != nil {
		return err
	}
	if r.Rank == victim {
		r.Mark("ready") // proctest kills this process now
		<-ctx.Done()
		return ctx.Err()
	}
	var pe *core.PeerError
	if err := c.Barrier(ctx); !errors.As(err, &pe) || !slices.Contains(pe.Ranks, victim) {
		return fmt.Errorf("barrier after rank %d died: got %v; want a PeerError naming it", victim, err)
	}
	s, err := c.Shrink(ctx)
	if err != nil {
		return err
	}
	defer s.Close()
	if err := c.Close(); err != nil {
		return fmt.Errorf("closing the failed communicator: %w", err)
	}
	if !slices.Equal(s.Ranks(), []int{0, 1}) || s.Rank() != r.Rank {
		return fmt.Errorf("shrunk: rank %d of world ranks %v; want rank %d of [0 1]", s.Rank(), s.Ranks(), r.Rank)
	}
	for range 100 {
		if err := sumOfWorldRanks(ctx, s); err != nil {
			return err
		}
	}
	// A group of the shrunk communicator still meets through the store.
	g, err := s.Split(ctx, 0, -s.Rank())
	if err != nil {
		return fmt.Errorf("split after shrinking: %w", err)
	}
	defer g.Close()
	if !slices.Equal(g.Ranks(), []int{1, 0}) {
		return fmt.Errorf("split after shrinking: world ranks %v, want [1 0]", g.Ranks())
	}
	return sumOfWorldRanks(ctx, g)
}
