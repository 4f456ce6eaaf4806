package dispatch

import (
	"context"
	"errors"
	"fmt"
	"os"
	"strconv"
	"testing"
	"time"

	"github.com/gocoll/gocoll/backends/kv"
	"github.com/gocoll/gocoll/core"
	"github.com/gocoll/gocoll/generated/coll"
	"github.com/gocoll/gocoll/internal/proctest"
)

// These tests run ranks as real processes (internal/proctest re-executes
// the test binary). Each rank calls Init the way a job does: from
// torchrun's variables, with rank 0 serving the store at MASTER_ADDR.

func TestMain(m *testing.M) {
	proctest.Register("barriers", barriersBody)
	proctest.Register("absent", absentBody)
	proctest.Register("layout", layoutBody)
	proctest.Register("killed", killedBody)
	proctest.Main(m)
}

// torchrunEnv gives each rank torchrun's variables and a store port.
func torchrunEnv(t *testing.T, np int, extra ...string) proctest.Option {
	port := freePort(t)
	return proctest.RankEnv(func(r int) []string {
		return append([]string{
			"RANK=" + strconv.Itoa(r), "WORLD_SIZE=" + strconv.Itoa(np),
			"LOCAL_RANK=" + strconv.Itoa(r), "LOCAL_WORLD_SIZE=" + strconv.Itoa(np),
			"MASTER_ADDR=127.0.0.1", "MASTER_PORT=" + strconv.Itoa(port),
			"GOCOLL_SECRET=proc-test-" + strconv.Itoa(port),
		}, extra...)
	})
}

func envInt(name string, def int) int {
	if v, err := strconv.Atoi(os.Getenv(name)); err == nil {
		return v
	}
	return def
}

// barriersBody runs GOCOLL_TEST_BARRIERS barriers in a row. Every tenth
// one it checks that a barrier really holds ranks back: each rank bumps a
// counter before it, and after it every rank must see all the bumps.
func barriersBody(ctx context.Context, r *proctest.Rank) error {
	c, err := Init(ctx)
	if err != nil {
		return err
	}
	defer c.Close()
	if c.Rank() != r.Rank || c.Size() != r.Size || c.LocalSize() != r.Size || c.NumNodes() != 1 {
		return fmt.Errorf("Init: rank %d of %d, local size %d, %d nodes; want rank %d of %d on one node",
			c.Rank(), c.Size(), c.LocalSize(), c.NumNodes(), r.Rank, r.Size)
	}
	if want := os.Getenv("GOCOLL_TEST_WANT_BACKEND"); c.Backend() != want {
		return fmt.Errorf("backend %q, want %q", c.Backend(), want)
	}
	n := envInt("GOCOLL_TEST_BARRIERS", 1000)
	s := c.Store()
	for i := 0; i < n; i++ {
		check := i%10 == 0
		key := "count/" + strconv.Itoa(i)
		if check {
			if _, err := s.Add(ctx, key, 1); err != nil {
				return err
			}
		}
		if err := c.Barrier(ctx); err != nil {
			return fmt.Errorf("barrier %d: %w", i, err)
		}
		if check {
			got, err := s.Add(ctx, key, 0)
			if err != nil {
				return err
			}
			if got != int64(c.Size()) {
				return fmt.Errorf("after barrier %d only %d of %d ranks had arrived", i, got, c.Size())
			}
		}
	}
	return nil
}

// absentBody: rank GOCOLL_TEST_ABSENT joins but never enters the barrier;
// every other rank must get a PeerError naming it after the timeout.
func absentBody(ctx context.Context, r *proctest.Rank) error {
	absent := envInt("GOCOLL_TEST_ABSENT", -1)
	c, err := Init(ctx)
	if err != nil {
		return err
	}
	defer c.Close()
	if err := c.Barrier(ctx); err != nil { // everyone is here so far
		return err
	}
	if r.Rank == absent {
		// Stay alive, out of the barrier, until the others have seen
		// their errors (r.Store is the test's own store, not the job's).
		for q := 0; q < r.Size; q++ {
			if q != absent {
				if _, err := r.Store.Get(ctx, "reported/"+strconv.Itoa(q)); err != nil {
					return err
				}
			}
		}
		return nil
	}
	err = c.Barrier(ctx)
	var pe *core.PeerError
	if !errors.As(err, &pe) || fmt.Sprint(pe.Ranks) != fmt.Sprint([]int{absent}) {
		return fmt.Errorf("barrier without rank %d: got %v; want a PeerError naming it", absent, err)
	}
	if err := c.Barrier(ctx); err == nil {
		return errors.New("a barrier after the failed one succeeded")
	}
	return r.Store.Set(ctx, "reported/"+strconv.Itoa(r.Rank), nil)
}

// 1000 barriers in a row at np = 1..8, on every backend.
func TestBarrierProcesses(t *testing.T) {
	if testing.Short() {
		t.Skip("runs 24 process groups")
	}
	for _, bk := range []struct{ name, want string }{{"auto", "shm"}, {"tcp", "tcp"}, {"kv", "kv"}} {
		for np := 1; np <= 8; np++ {
			t.Run(fmt.Sprintf("%s/np=%d", bk.name, np), func(t *testing.T) {
				proctest.Run(t, "barriers", np, proctest.Timeout(2*time.Minute),
					torchrunEnv(t, np, "GOCOLL_BACKEND="+bk.name, "GOCOLL_TEST_WANT_BACKEND="+bk.want, "GOCOLL_TEST_BARRIERS=1000"))
			})
		}
	}
}

func TestAbsentRankNamed(t *testing.T) {
	for _, backend := range []string{"kv", "auto", "tcp"} {
		t.Run(backend, func(t *testing.T) {
			const np, absent = 4, 2
			proctest.Run(t, "absent", np, proctest.Timeout(time.Minute),
				torchrunEnv(t, np, "GOCOLL_BACKEND="+backend, "GOCOLL_TIMEOUT=2s", "GOCOLL_TEST_ABSENT="+strconv.Itoa(absent)))
		})
	}
}

// layoutBody checks the node layout Init derives from GOCOLL_NODE_ID
// ("node<k>", ranks per node in GOCOLL_TEST_PER_NODE) and that the backend
// auto picks still computes an allreduce.
func layoutBody(ctx context.Context, r *proctest.Rank) error {
	per := envInt("GOCOLL_TEST_PER_NODE", 1)
	c, err := Init(ctx)
	if err != nil {
		return err
	}
	defer c.Close()
	nodes := (r.Size + per - 1) / per
	wantLocalSize := min(per, r.Size-(r.Rank/per)*per)
	if c.LocalRank() != r.Rank%per || c.LocalSize() != wantLocalSize || c.NodeRank() != r.Rank/per || c.NumNodes() != nodes {
		return fmt.Errorf("rank %d: local %d/%d node %d/%d; want local %d/%d node %d/%d", r.Rank,
			c.LocalRank(), c.LocalSize(), c.NodeRank(), c.NumNodes(), r.Rank%per, wantLocalSize, r.Rank/per, nodes)
	}
	if want := os.Getenv("GOCOLL_TEST_WANT_BACKEND"); c.Backend() != want {
		return fmt.Errorf("backend %q, want %q", c.Backend(), want)
	}
	send := []int64{int64(r.Rank + 1), -1}
	recv := make([]int64, 2)
	if err := coll.AllreduceInt64(ctx, c, send, recv, coll.OpSum); err != nil {
		return err
	}
	if n := int64(r.Size); recv[0] != n*(n+1)/2 || recv[1] != -n {
		return fmt.Errorf("allreduce = %v", recv)
	}
	return c.Barrier(ctx)
}

// Ranks that publish different node ids are placed on different nodes,
// and auto then picks tcp.
func TestNodeLayoutProcesses(t *testing.T) {
	for _, tc := range []struct{ np, per int }{{4, 2}, {5, 2}, {3, 1}, {6, 3}} {
		t.Run(fmt.Sprintf("np=%d/per=%d", tc.np, tc.per), func(t *testing.T) {
			port := freePort(t)
			proctest.Run(t, "layout", tc.np, proctest.Timeout(time.Minute), proctest.RankEnv(func(r int) []string {
				return []string{
					"RANK=" + strconv.Itoa(r), "WORLD_SIZE=" + strconv.Itoa(tc.np),
					"MASTER_ADDR=127.0.0.1", "MASTER_PORT=" + strconv.Itoa(port), "GOCOLL_SECRET=layout",
					"GOCOLL_NODE_ID=node" + strconv.Itoa(r/tc.per), "GOCOLL_TEST_PER_NODE=" + strconv.Itoa(tc.per),
					"GOCOLL_TEST_WANT_BACKEND=" + map[bool]string{true: "tcp", false: "shm+tcp"}[tc.per == 1],
				}
			}))
		})
	}
}

// killedBody: rank GOCOLL_TEST_ABSENT marks "ready" and is killed with
// SIGKILL; the others, waiting in a barrier on the kv backend, must get a
// PeerError naming it as gone (its store connection closed), not a
// timeout.
func killedBody(ctx context.Context, r *proctest.Rank) error {
	victim := envInt("GOCOLL_TEST_ABSENT", -1)
	c, err := Init(ctx)
	if err != nil {
		return err
	}
	defer c.Close()
	if err := c.Barrier(ctx); err != nil {
		return err
	}
	if r.Rank == victim {
		r.Mark("ready")
		select {} // killed here
	}
	err = c.Barrier(ctx)
	var pe *core.PeerError
	if !errors.As(err, &pe) || fmt.Sprint(pe.Ranks) != fmt.Sprint([]int{victim}) || !errors.Is(err, kv.ErrPeerGone) {
		return fmt.Errorf("barrier after rank %d died: got %v; want a PeerError naming it as gone", victim, err)
	}
	return nil
}

func TestKilledRankNamedKV(t *testing.T) {
	const np, victim = 4, 2
	proctest.Run(t, "killed", np, proctest.Timeout(time.Minute), proctest.KillOnMark(victim, "ready"),
		torchrunEnv(t, np, "GOCOLL_BACKEND=kv", "GOCOLL_TIMEOUT=50s", "GOCOLL_TEST_ABSENT="+strconv.Itoa(victim)))
}
