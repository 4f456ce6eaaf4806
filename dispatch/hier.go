package dispatch

import (
	"context"
	"errors"
	"fmt"
	"sync"

	"github.com/gocoll/gocoll/core"
	"github.com/gocoll/gocoll/generated/coll"
)

// hier is the backend auto picks when the job spans several nodes and
// some node has more than one rank: allreduce runs in three stages (shared
// memory reduce to each node's leader, TCP allreduce between the leaders,
// shared memory broadcast from the leader), so only one rank per node
// puts the data on the network; every other collective runs on TCP
// between all ranks.
//
// A failure in one stage does not reach the ranks of other nodes by
// itself, so any error is treated as fatal and closes the sub-backends:
// the peers waiting on them see the closed connections and fail instead
// of waiting for the timeout.
type hier struct {
	rank, size int
	local      core.Backend // shm among this node's ranks
	leaders    core.Backend // tcp among the nodes' leaders; nil off the leaders
	world      core.Backend // tcp among all ranks
	nodes      [][]int      // global ranks of each node
	nodeRank   int

	mu     sync.Mutex
	failed error
	closed bool
}

var _ core.Backend = (*hier)(nil)

func (h *hier) Name() string { return "shm+tcp" }
func (h *hier) Rank() int    { return h.rank }
func (h *hier) Size() int    { return h.size }

// Close closes the sub-backends.
func (h *hier) Close() error {
	h.mu.Lock()
	defer h.mu.Unlock()
	if h.closed {
		return nil
	}
	h.closed = true
	var errs []error
	for _, b := range []core.Backend{h.local, h.leaders, h.world} {
		if b != nil {
			errs = append(errs, b.Close())
		}
	}
	return errors.Join(errs...)
}

// Do implements core.Comm.
func (h *hier) Do(ctx context.Context, req *core.Request) error {
	h.mu.Lock()
	defer h.mu.Unlock()
	if h.closed {
		return core.ErrClosed
	}
	if h.failed != nil {
		return fmt.Errorf("gocoll: an earlier collective failed: %w", h.failed)
	}
	if req.Kind != coll.KindAllreduce {
		return h.world.Run(ctx, req)
	}
	err := h.allreduce(ctx, req)
	if err != nil {
		h.failed = err
		for _, b := range []core.Backend{h.local, h.leaders, h.world} {
			if b != nil {
				b.Close()
			}
		}
		h.closed = true
	}
	return err
}

func (h *hier) allreduce(ctx context.Context, req *core.Request) error {
	// The stages combine partial results, so an op with a finishing
	// step (avg: divide by the ranks) reduces as a sum and is finished
	// once, over the whole job, at the end.
	op := req.Op
	if op == coll.OpAvg {
		op = coll.OpSum
	}
	leader := h.leaders != nil
	var recv []byte
	if leader {
		recv = req.Recv
	}
	err := h.local.Run(ctx, &core.Request{Kind: coll.KindReduce, DType: req.DType, Op: op, Count: req.Count,
		Root: 0, Send: req.Send, Recv: recv})
	if err != nil {
		return h.localError(err, "allreduce (reduce within the node)")
	}
	if leader {
		err = h.leaders.Run(ctx, &core.Request{Kind: coll.KindAllreduce, DType: req.DType, Op: op, Count: req.Count,
			Send: req.Recv, Recv: req.Recv})
		if err != nil {
			return h.leaderError(err)
		}
	}
	err = h.local.Run(ctx, &core.Request{Kind: coll.KindBroadcast, DType: req.DType, Count: req.Count,
		Root: 0, Send: req.Recv, Recv: req.Recv})
	if err != nil {
		return h.localError(err, "allreduce (broadcast within the node)")
	}
	t := core.LookupType(req.DType)
	if t == nil || t.Kernel(req.Op) == nil {
		return fmt.Errorf("gocoll: allreduce: %w: no kernel for %v %v", core.ErrUnsupported, req.DType, req.Op)
	}
	t.Kernel(req.Op).Finish(req.Recv, h.size)
	return nil
}

// localError renames the node-local ranks a PeerError names to global
// ranks.
func (h *hier) localError(err error, op string) error {
	var pe *core.PeerError
	if !errors.As(err, &pe) {
		return err
	}
	ranks := make([]int, len(pe.Ranks))
	for i, r := range pe.Ranks {
		ranks[i] = h.nodes[h.nodeRank][r]
	}
	return &core.PeerError{Op: op, Ranks: ranks, Err: err}
}

// leaderError renames the leader indices (node ranks) a PeerError names
// to the leaders' global ranks.
func (h *hier) leaderError(err error) error {
	var pe *core.PeerError
	if !errors.As(err, &pe) {
		return err
	}
	ranks := make([]int, len(pe.Ranks))
	for i, n := range pe.Ranks {
		ranks[i] = h.nodes[n][0]
	}
	return &core.PeerError{Op: "allreduce (between nodes)", Ranks: ranks, Err: err}
}

// Run, Refuse and Abort adapt hier to core.Backend while it still checks
// requests itself in Do; they go once it trusts core.Check.

// Run implements core.Backend.
func (h *hier) Run(ctx context.Context, req *core.Request) error { return h.Do(ctx, req) }

// Refuse implements core.Backend.
func (h *hier) Refuse(ctx context.Context, req *core.Request) error { return h.Do(ctx, req) }

// Abort implements core.Backend.
func (h *hier) Abort(cause error) {}
