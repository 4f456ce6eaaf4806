// Package hier is the hierarchical backend for jobs that span several
// nodes with several ranks on some of them. It is composed of three
// backends: Local among the ranks of this rank's node, Leaders among the
// nodes' leaders (the lowest rank of each node), and World among all
// ranks. Some collectives run in stages, so that only one rank per node
// puts the data on the network:
//
//   - allreduce: a reduce to the leader within each node (Local), an
//     allreduce between the leaders (Leaders), a broadcast from the
//     leader within each node (Local);
//   - allgather: a gather to the leader within each node, an allgather of
//     the nodes' blocks between the leaders, a broadcast within each node;
//   - barrier: within each node, between the leaders, within each node.
//
// Every staged collective ends with a stage within every node after the
// last stage between the leaders, so that a failure among the leaders
// reaches every rank. Every other collective runs on World.
//
// # Failures
//
// A failure inside one stage reaches only the ranks of that stage, so hier
// passes it on: a leader whose node's stage failed refuses the next
// stage between the leaders, and a leader whose stage between the leaders
// failed refuses its node's next stage. Every rank
// thus fails at the same call, with a *core.MismatchError when the cause
// was a disagreement or a refused argument. Before passing a failure on, a
// rank records its cause in the Store, and a rank that learns of the
// failure from the refusal reads it there: the error names the rank that
// disagreed or passed the bad argument, not the leader that passed it on.
// A failure that leaves the stages out of step (a dead peer, a timeout)
// aborts all three backends, which tell their peers.
//
// A disagreement between a staged collective on some ranks and another
// kind of collective on others may not be seen by any one stage: those
// ranks may wait in different backends and fail at the timeout, naming
// each other; or a stage sees a disagreement of its own kinds.
package hier

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"slices"
	"strconv"
	"sync"
	"time"

	"github.com/gocoll/gocoll/core"
)

// noteWait bounds how long a rank that learned of a failure from a
// refusal waits for the cause the refusing rank recorded before refusing.
// The record is written before the refusal is sent, so it is there at
// once unless the store is gone.
const noteWait = 5 * time.Second

// Config is what a hierarchical backend is built from.
type Config struct {
	// Local runs among the ranks of this rank's node: its rank is this
	// rank's index in Nodes[node].
	Local core.Backend
	// Leaders runs among the nodes' leaders, node n's leader being
	// Nodes[n][0], with rank n; nil on every other rank.
	Leaders core.Backend
	// World runs among all ranks, with their job ranks.
	World core.Backend
	// Nodes lists the job ranks of each node, in increasing order.
	Nodes [][]int
	// Store is where a rank records why a call failed before it passes
	// the failure on to another stage, so that every rank's error names
	// the culprit. It is shared by all ranks and namespaced for this
	// backend. With a nil Store, a rank that learns of a failure from
	// another stage names the leader that passed it on.
	Store core.Store
}

// Backend is the hierarchical backend. It implements core.Backend.
type Backend struct {
	local, leaders, world core.Backend
	nodes                 [][]int
	node                  int // this rank's node
	rank, size            int
	store                 core.Store

	// The state of the calls, which the Guard runs one at a time.
	seq      uint64
	sub      core.Request // a stage's request
	partials sync.Map     // *core.Kernel -> its kernel without the finish step
}

var _ core.Backend = (*Backend)(nil)

// New builds a hierarchical backend from cfg's backends, which every rank
// has built in the same order. It checks that they fit Nodes.
func New(cfg Config) (*Backend, error) {
	if cfg.Local == nil || cfg.World == nil {
		return nil, errors.New("hier: the local and world backends are required")
	}
	h := &Backend{local: cfg.Local, leaders: cfg.Leaders, world: cfg.World, nodes: cfg.Nodes, store: cfg.Store,
		rank: cfg.World.Rank(), size: cfg.World.Size(), node: -1}
	total := 0
	for n, ranks := range cfg.Nodes {
		total += len(ranks)
		if i := slices.Index(ranks, h.rank); i >= 0 {
			h.node = n
			if i != cfg.Local.Rank() || len(ranks) != cfg.Local.Size() {
				return nil, fmt.Errorf("hier: rank %d is %d of %d on node %d, but its local backend is rank %d of %d",
					h.rank, i, len(ranks), n, cfg.Local.Rank(), cfg.Local.Size())
			}
		}
	}
	if h.node < 0 || total != h.size {
		return nil, fmt.Errorf("hier: the nodes %v do not place the %d ranks of the world backend, rank %d among them", cfg.Nodes, h.size, h.rank)
	}
	leader := cfg.Local.Rank() == 0
	if leader != (cfg.Leaders != nil) {
		return nil, fmt.Errorf("hier: rank %d (local rank %d) must have a leaders backend if and only if it leads its node", h.rank, cfg.Local.Rank())
	}
	if leader && (cfg.Leaders.Rank() != h.node || cfg.Leaders.Size() != len(cfg.Nodes)) {
		return nil, fmt.Errorf("hier: the leader of node %d of %d has leaders backend rank %d of %d",
			h.node, len(cfg.Nodes), cfg.Leaders.Rank(), cfg.Leaders.Size())
	}
	return h, nil
}

// Name implements core.Backend: the local and world backends' names,
// e.g. "shm+tcp".
func (h *Backend) Name() string { return h.local.Name() + "+" + h.world.Name() }

// Rank implements core.Backend.
func (h *Backend) Rank() int { return h.rank }

// Size implements core.Backend.
func (h *Backend) Size() int { return h.size }

// Local returns the backend among this rank's node, e.g. for memory it
// shares between them.
func (h *Backend) Local() core.Backend { return h.local }

// Close implements core.Backend: it closes the three backends.
func (h *Backend) Close() error {
	var errs []error
	for _, b := range h.backends() {
		errs = append(errs, b.Close())
	}
	return errors.Join(errs...)
}

// Abort implements core.Backend: it aborts the three backends, each of
// which tells its peers.
func (h *Backend) Abort(cause error) {
	for _, b := range h.backends() {
		b.Abort(cause)
	}
}

func (h *Backend) backends() []core.Backend {
	bs := []core.Backend{h.local, h.world}
	if h.leaders != nil {
		bs = append(bs, h.leaders)
	}
	return bs
}

// A stage is one step of a staged collective: a request run on Local by
// every rank of each node, or on Leaders by the nodes' leaders.
type stage struct {
	leaders bool
	name    string // what the stage does, for errors
	req     core.Request
	// scale is the stage's Count per element of the call's Count, so that
	// a count the stage's backend names reads as the call's.
	scale int
	// after runs on this rank when the stage succeeded.
	after func()
}

// staged reports whether hier runs kind in stages, and the kinds of its
// first local stage and its first leaders stage, which a refusing rank
// refuses.
func staged(kind core.Kind) (local, leaders core.Kind, ok bool) {
	switch kind {
	case core.KindAllreduce:
		return core.KindReduce, core.KindAllreduce, true
	case core.KindBarrier:
		return core.KindBarrier, core.KindBarrier, true
	case core.KindAllgather:
		return core.KindGather, core.KindAllgather, true
	}
	return 0, 0, false
}

// Run implements core.Backend. req passed core.Check for the world's rank
// and size, so the stages' requests, made from it, are valid for theirs.
func (h *Backend) Run(ctx context.Context, req *core.Request) error {
	h.seq++
	switch req.Kind {
	case core.KindAllreduce:
		return h.run(ctx, req, h.allreduce(req))
	case core.KindBarrier:
		return h.run(ctx, req, h.barrier())
	case core.KindAllgather:
		return h.run(ctx, req, h.allgather(req))
	}
	return h.world.Run(ctx, req)
}

func (h *Backend) leader() bool { return h.leaders != nil }

// allreduce: a reduce to the leader within each node, an allreduce
// between the leaders, a broadcast from the leader within each node.
func (h *Backend) allreduce(req *core.Request) []stage {
	// The stages combine partial results, so an op with a finishing step
	// (avg: divide by the ranks) reduces without it in every stage and
	// is finished once, over the whole job, at the end.
	k := h.partial(req.Kernel)
	var recv []byte
	if h.leader() {
		recv = req.Recv
	}
	return []stage{
		{name: "reduce within the node", scale: 1, req: core.Request{Kind: core.KindReduce, DType: req.DType, Op: req.Op,
			Count: req.Count, Send: req.Send, Recv: recv, Type: req.Type, Kernel: k}},
		{leaders: true, name: "allreduce between nodes", scale: 1, req: core.Request{Kind: core.KindAllreduce, DType: req.DType,
			Op: req.Op, Count: req.Count, Send: req.Recv, Recv: req.Recv, Type: req.Type, Kernel: k},
			after: func() { req.Kernel.Finish(req.Recv, h.size) }},
		{name: "broadcast within the node", scale: 1, req: core.Request{Kind: core.KindBroadcast, DType: req.DType,
			Count: req.Count, Send: req.Recv, Recv: req.Recv, Type: req.Type}},
	}
}

// barrier: within each node, between the leaders, within each node.
func (h *Backend) barrier() []stage {
	return []stage{
		{name: "barrier within the node", req: core.Request{Kind: core.KindBarrier}},
		{leaders: true, name: "barrier between nodes", req: core.Request{Kind: core.KindBarrier}},
		{name: "barrier within the node", req: core.Request{Kind: core.KindBarrier}},
	}
}

// allgather: a gather to the leader within each node; an allgather of
// the nodes' blocks between the leaders, each padded to the largest
// node's, which the leaders reorder into rank order (a node's ranks need
// not be contiguous); a broadcast of the result within each node.
func (h *Backend) allgather(req *core.Request) []stage {
	local := len(h.nodes[h.node])
	width := 0
	for _, ranks := range h.nodes {
		width = max(width, len(ranks))
	}
	blk := req.Count * req.Type.Size
	var gathered, mine, all []byte
	if h.leader() {
		// The node's blocks, padded to width, then every node's.
		mine = make([]byte, width*blk)
		all = make([]byte, len(h.nodes)*width*blk)
		gathered = mine[: local*blk : local*blk]
	}
	return []stage{
		{name: "gather within the node", scale: 1, req: core.Request{Kind: core.KindGather, DType: req.DType,
			Count: req.Count, Send: req.Send, Recv: gathered, Type: req.Type}},
		{leaders: true, name: "allgather between nodes", scale: width, req: core.Request{Kind: core.KindAllgather, DType: req.DType,
			Count: req.Count * width, Send: mine, Recv: all, Type: req.Type},
			after: func() {
				for n, ranks := range h.nodes {
					for i, r := range ranks {
						copy(req.Recv[r*blk:(r+1)*blk], all[(n*width+i)*blk:])
					}
				}
			}},
		{name: "broadcast within the node", scale: h.size, req: core.Request{Kind: core.KindBroadcast, DType: req.DType,
			Count: req.Count * h.size, Send: req.Recv, Recv: req.Recv, Type: req.Type}},
	}
}

// run runs stages for req. A rank that fails in a stage with a
// MismatchError passes the failure on, if it leads its node: it refuses
// each later stage whose ranks have not learned of it yet (the leaders'
// if it learned in its node, its node's if it learned among the
// leaders), so that every rank fails at this call.
func (h *Backend) run(ctx context.Context, req *core.Request, stages []stage) error {
	for i := range stages {
		s := &stages[i]
		if s.leaders && !h.leader() {
			continue
		}
		b, rename := h.local, h.localError
		if s.leaders {
			b, rename = h.leaders, h.leaderError
		}
		h.sub = s.req
		err := b.Run(ctx, &h.sub)
		if err == nil {
			if s.after != nil {
				s.after()
			}
			continue
		}
		err = rename(err, req.Kind.String()+" ("+s.name+")", s.scale)
		me := mismatch(err)
		if me == nil {
			return h.stageFailed(err)
		}
		me = h.cause(ctx, me, req)
		if !h.leader() {
			return me
		}
		nodeKnows, leadersKnow := !s.leaders, s.leaders
		for _, t := range stages[i+1:] {
			switch {
			case t.leaders && !leadersKnow:
				leadersKnow = true
				if err := h.passOn(ctx, me, h.leaders, t.req.Kind); err != me {
					return err
				}
			case !t.leaders && !nodeKnows:
				nodeKnows = true
				if err := h.passOn(ctx, me, h.local, t.req.Kind); err != me {
					return err
				}
			}
		}
		return me
	}
	return nil
}

// Refuse implements core.Backend: this rank records that it refused,
// then refuses in the backends its peers wait in: World for a kind run
// there; for a staged kind, the first stage of its node and, on a
// leader, the first leaders stage, whose leaders pass the refusal on to
// their nodes.
func (h *Backend) Refuse(ctx context.Context, req *core.Request) error {
	h.seq++
	h.note(ctx, &core.MismatchError{Seq: h.seq, Field: "argument", Rank: h.rank, Peer: h.rank, Theirs: describe(req)})
	local, leaders, ok := staged(req.Kind)
	if !ok {
		return h.world.Refuse(ctx, req)
	}
	err := h.local.Refuse(ctx, &core.Request{Kind: local})
	if err == nil && h.leaders != nil {
		err = h.leaders.Refuse(ctx, &core.Request{Kind: leaders})
	}
	if err != nil && mismatch(err) == nil {
		h.Abort(err)
		return fmt.Errorf("hier: refusing %v #%d: %w", req.Kind, h.seq, err)
	}
	return nil
}

// passOn records me, the reason this rank's call failed, and refuses the
// stage of kind that the ranks of next wait in, so that they fail too.
func (h *Backend) passOn(ctx context.Context, me *core.MismatchError, next core.Backend, kind core.Kind) error {
	h.note(ctx, me)
	if err := next.Refuse(ctx, &core.Request{Kind: kind}); err != nil && mismatch(err) == nil {
		// The ranks waiting there may not have been told: the stages
		// are out of step, and the communicator with them.
		h.Abort(err)
		return fmt.Errorf("hier: call #%d failed (%v), and passing that on failed: %w", h.seq, me, err)
	}
	return me
}

// stageFailed aborts every backend after a failure that leaves the stages
// out of step, so that ranks waiting in another stage learn of it.
func (h *Backend) stageFailed(err error) error {
	h.Abort(err)
	return err
}

func mismatch(err error) *core.MismatchError {
	var me *core.MismatchError
	if errors.As(err, &me) {
		return me
	}
	return nil
}

// describe says what call req stands for, for a peer's error.
func describe(req *core.Request) string {
	return core.Describe(req.Kind, req.DType, req.Op, int64(req.Count), int64(req.Root))
}

func (h *Backend) noteKey(rank int) string {
	return "fail/" + strconv.FormatUint(h.seq, 10) + "/" + strconv.Itoa(rank)
}

// note records me, seen by this rank, for the ranks it passes the failure
// on to. Best effort: without it they name this rank instead.
func (h *Backend) note(ctx context.Context, me *core.MismatchError) {
	if h.store == nil {
		return
	}
	v, err := json.Marshal(me)
	if err != nil {
		return
	}
	ctx, cancel := context.WithTimeout(context.WithoutCancel(ctx), noteWait)
	defer cancel()
	h.store.Set(ctx, h.noteKey(h.rank), v)
}

// cause turns me, a failure this rank learned of in a stage, into the
// error it returns. A refusal by a rank that recorded why (a leader that
// passed a failure on, or the culprit itself) becomes the failure
// recorded, as this rank sees it; anything else is me.
func (h *Backend) cause(ctx context.Context, me *core.MismatchError, req *core.Request) *core.MismatchError {
	if me.Field != "argument" || h.store == nil {
		return me
	}
	ctx, cancel := context.WithTimeout(context.WithoutCancel(ctx), noteWait)
	defer cancel()
	v, err := h.store.Get(ctx, h.noteKey(me.Peer))
	if err != nil {
		return me
	}
	var seen core.MismatchError
	if json.Unmarshal(v, &seen) != nil {
		return me
	}
	out := &core.MismatchError{Seq: h.seq, Field: seen.Field, Rank: h.rank, Peer: seen.Peer, Theirs: seen.Theirs}
	if seen.Field == "argument" {
		out.Mine = describe(req)
		return out
	}
	// seen is a disagreement between the rank that recorded it (Rank,
	// Mine) and Peer (Theirs). This rank disagrees with Peer, unless it
	// passed what Peer did; then it disagrees with the recorder.
	mine, ok := valueOf(req, seen.Field)
	if !ok {
		mine = seen.Mine
	}
	out.Mine = mine
	if ok && mine == seen.Theirs {
		out.Peer, out.Theirs = seen.Rank, seen.Mine
	}
	return out
}

// valueOf formats req's field as the backends do in a MismatchError.
func valueOf(req *core.Request, field string) (string, bool) {
	switch field {
	case "dtype":
		return req.DType.String(), true
	case "op":
		return req.Op.String(), true
	case "count":
		return strconv.Itoa(req.Count), true
	}
	return "", false
}

// partial returns k without its finish step (k itself when it has none):
// the kernel every stage reduces with, under k's op id, which the ranks
// still compare.
func (h *Backend) partial(k *core.Kernel) *core.Kernel {
	if k.Op.Finish == core.FinishNone {
		return k
	}
	if p, ok := h.partials.Load(k); ok {
		return p.(*core.Kernel)
	}
	op := *k.Op
	op.Finish = core.FinishNone
	p := &core.Kernel{Type: k.Type, Op: &op, Impl: k.Impl}
	h.partials.Store(k, p)
	return p
}

// localError renames the node-local ranks an error names to job ranks.
func (h *Backend) localError(err error, op string, scale int) error {
	return h.rename(err, op, scale, func(r int) int { return h.nodes[h.node][r] })
}

// leaderError renames the leader indices (node numbers) an error names
// to the leaders' job ranks.
func (h *Backend) leaderError(err error, op string, scale int) error {
	return h.rename(err, op, scale, func(n int) int { return h.nodes[n][0] })
}

// rename makes err, from a stage, read as the call's: job ranks, and a
// count mismatch in the call's counts (the stage's over scale).
func (h *Backend) rename(err error, op string, scale int, rank func(int) int) error {
	if me := mismatch(err); me != nil {
		out := *me
		out.Seq, out.Rank, out.Peer = h.seq, h.rank, rank(me.Peer)
		if out.Field == "count" && scale > 1 {
			out.Mine, out.Theirs = unscale(out.Mine, scale), unscale(out.Theirs, scale)
		}
		return &out
	}
	var pe *core.PeerError
	if errors.As(err, &pe) {
		ranks := make([]int, len(pe.Ranks))
		for i, r := range pe.Ranks {
			ranks[i] = rank(r)
		}
		return &core.PeerError{Op: op, Ranks: ranks, Err: pe.Err}
	}
	return err
}

// unscale turns a stage's count into the call's, or says it is the
// stage's when it is no multiple of scale.
func unscale(count string, scale int) string {
	n, err := strconv.Atoi(count)
	if err != nil || n%scale != 0 {
		return count + " (" + strconv.Itoa(scale) + " ranks' blocks)"
	}
	return strconv.Itoa(n / scale)
}
