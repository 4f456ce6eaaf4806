package netns

import (
	"context"
	"errors"
	"fmt"
	"os"
	"strconv"
	"testing"
	"time"

	"github.com/gocoll/gocoll/core"
	"github.com/gocoll/gocoll/dispatch"
	"github.com/gocoll/gocoll/generated/coll"
	"github.com/gocoll/gocoll/internal/proctest"
	"github.com/gocoll/gocoll/tests/conform"
)

// envWant names the backend a hier body expects dispatch to pick.
const envWant = "GOCOLL_NETNS_WANT_BACKEND"

func init() {
	proctest.Register("hierconformance", hierConformanceBody)
	proctest.Register("hierkill", hierKillBody)
}

// hierComm joins through dispatch as a user would, with the backend
// GOCOLL_BACKEND names (auto when unset), and checks that dispatch picked
// the backend the test expects.
func hierComm(ctx context.Context, r *proctest.Rank, timeout time.Duration) (*dispatch.Comm, error) {
	c, err := dispatch.Init(ctx, dispatch.WithRank(r.Rank), dispatch.WithSize(r.Size),
		dispatch.WithStore(r.Store), dispatch.WithSecret(r.Secret), dispatch.WithTimeout(timeout))
	if err != nil {
		return nil, fmt.Errorf("rank %d: dispatch.Init: %w", r.Rank, err)
	}
	if want := os.Getenv(envWant); c.Backend() != want {
		c.Close()
		return nil, fmt.Errorf("rank %d: dispatch picked %q, want %q", r.Rank, c.Backend(), want)
	}
	return c, nil
}

func hierConformanceBody(ctx context.Context, r *proctest.Rank) error {
	c, err := hierComm(ctx, r, time.Minute)
	if err != nil {
		return err
	}
	defer c.Close()
	if err := conform.Run(ctx, c, conform.Options{Sizes: []int{0, 1, 7, 300}, RandomSizes: []int{7}}); err != nil {
		return err
	}
	// Alltoall at 2000 elements per block: under 16 KiB per rank for
	// one-byte dtypes at 6 ranks, which hier stages, and over it for the
	// wider ones, which it runs on World.
	return conform.Run(ctx, c, conform.Options{Sizes: []int{2000},
		Filter: func(k conform.Case) bool { return k.Kind == coll.KindAlltoall }})
}

// TestHierConformanceNodes runs the conformance suite through dispatch
// with ranks on 2 and 3 nodes: with several ranks on a node it picks the
// hierarchical backend, whose collectives run in stages over shm and tcp;
// with one rank per node, or GOCOLL_BACKEND=tcp, flat tcp.
func TestHierConformanceNodes(t *testing.T) {
	for _, tc := range []struct {
		nodes, np int
		env       []string
		want      string
	}{
		{2, 6, nil, "shm+tcp"},
		{3, 6, nil, "shm+tcp"},
		{2, 2, nil, "tcp"},
		{2, 4, []string{"GOCOLL_BACKEND=tcp"}, "tcp"},
	} {
		t.Run(fmt.Sprintf("nodes=%d/np=%d/%s", tc.nodes, tc.np, tc.want), func(t *testing.T) {
			n := Setup(t, tc.nodes)
			n.Run(t, "hierconformance", tc.np, proctest.Timeout(2*time.Minute),
				proctest.Env(append([]string{envWant + "=" + tc.want}, tc.env...)...))
		})
	}
}

// envKillKind names the collective hierKillBody runs: "broadcast",
// "alltoall" (64 KiB per rank, which hier runs on World after the
// ranks agree) or "alltoall-staged" (4 KiB, which it runs in stages).
const envKillKind = "GOCOLL_NETNS_KILL_KIND"

// hierKillBody runs 64 KiB broadcasts from rank 0 (or alltoalls, see
// envKillKind) until one fails; the parent kills a rank once any rank has
// finished one.
func hierKillBody(ctx context.Context, r *proctest.Rank) error {
	c, err := hierComm(ctx, r, 30*time.Second)
	if err != nil {
		return err
	}
	defer c.Close()
	buf := make([]float32, 1<<14)
	send, recv := make([]float32, 1<<14), make([]float32, 1<<14)
	call := func() error { return coll.BroadcastFloat32(ctx, c, buf, 0) }
	switch os.Getenv(envKillKind) {
	case "alltoall":
		call = func() error { return coll.AlltoallFloat32(ctx, c, send, recv) }
	case "alltoall-staged":
		call = func() error { return coll.AlltoallFloat32(ctx, c, send[:1<<10], recv[:1<<10]) }
	}
	for i := 0; i < 1000000; i++ {
		if i == 1 {
			r.Mark("running")
		}
		err := call()
		if err == nil {
			continue
		}
		var pe *core.PeerError
		if !errors.As(err, &pe) || errors.Is(err, context.DeadlineExceeded) {
			return fmt.Errorf("want a PeerError, got %w", err)
		}
		return fmt.Errorf("peer error naming ranks %v: %w", pe.Ranks, err)
	}
	return errors.New("the victim was never killed")
}

// TestHierKillAcrossNodes: kill -9 of a rank, a leader or not, on either
// node, during staged broadcasts or alltoalls makes every other rank
// fail, naming it.
func TestHierKillAcrossNodes(t *testing.T) {
	const np = 4 // ranks 0, 1 on node 0 and 2, 3 on node 1; 0 and 2 lead
	for _, kind := range []string{"broadcast", "alltoall", "alltoall-staged"} {
		for _, victim := range []int{1, 2, 3} {
			t.Run(fmt.Sprintf("%s/victim%d", kind, victim), func(t *testing.T) {
				n := Setup(t, 2)
				var survivors []int
				for r := range np {
					if r != victim {
						survivors = append(survivors, r)
					}
				}
				res := n.Run(t, "hierkill", np, proctest.Timeout(time.Minute),
					proctest.Env(envWant+"=shm+tcp", envKillKind+"="+kind),
					proctest.KillOnMark(victim, "running"),
					proctest.ExpectError("peer error naming ranks ["+strconv.Itoa(victim)+"]", survivors...))
				for _, r := range res {
					if r.Rank != victim {
						t.Logf("rank %d (%v): %s", r.Rank, r.Duration.Round(time.Millisecond), r.Err)
					}
				}
			})
		}
	}
}
