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
//   - barrier: within each node, between the leaders, within each node;
//   - broadcast, reduce, gather and scatter (rooted): first the ranks
//     exchange what they passed (kind, dtype, op, count, root) within
//     each node and then between the leaders, and compare it, because
//     their data stages name only the root's node and its index there;
//     then broadcast: from the root within its node, between the leaders,
//     from the leader within the other nodes; reduce: to the leader within
//     each node, between the leaders to the root's node, leader to root;
//     gather: to the leader within each node, the nodes' blocks between
//     the leaders to the root's node, leader to root; scatter: root to
//     leader, the nodes' blocks between the leaders, from the leader
//     within each node;
//   - reduce_scatter: a reduce of the whole buffer to the leader within
//     each node, a reduce_scatter of the nodes' blocks between the
//     leaders, a scatter from the leader within each node;
//   - alltoall of up to 16 KiB per rank: within each node the ranks
//     first compare what they passed, as for a rooted call; then a gather
//     of every rank's whole buffer to the leader within each node, an
//     alltoall between the leaders of the blocks each pair of nodes sends
//     each other, a scatter of every rank's result from the leader within
//     each node. A larger alltoall runs on World once the ranks have
//     compared what they passed within each node and between the leaders,
//     as for a rooted call, and passed a barrier within each node: every
//     block crosses between nodes either way, and relaying large ones
//     through the leaders costs more than it saves.
//
// Every staged collective has a stage within every node (all its ranks)
// after the last stage between the leaders at which ranks can disagree,
// so that a failure among the leaders reaches every rank. Send and recv
// run on World, and so do the vector collectives (allgatherv, gatherv,
// scatterv, alltoallv, reduce_scatter_v): staging them would need every
// node's counts at its leader first, and World's backend compares the
// counts across all ranks itself.
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
// aborts all three backends, which tell their peers. The rank records in
// the Store the ranks it blames first, and a rank that learns of the
// failure from its abort names those ranks instead: every rank names the
// rank that died, not the leader that passed the news on.
//
// A disagreement between two staged collectives is seen by a stage's
// backend, as a mismatch of that stage's kinds or counts. One between a
// staged collective on some ranks and send or recv, which run on World,
// on others cannot be seen by any one stage: those ranks wait in
// different backends and fail at the timeout, naming each other.
package hier

import (
	"context"
	"encoding/binary"
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
	c := abortCause{msg: "hier: aborted"}
	if cause != nil {
		c.msg = cause.Error()
	}
	for _, b := range h.backends() {
		b.Abort(c)
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
	// world: run on World by every rank, as the last stage, which no
	// failure needs passing on to.
	world bool
	// p2p: a send or receive within the node, between the leader and
	// the root, which the rest of the node skips. A leader that passes a
	// failure on still runs one its node has not learned of, so that the
	// root, which waits in it, goes on to the stage that tells it.
	p2p  bool
	name string // what the stage does, for errors
	req  core.Request
	// scale is the stage's Count per element of the call's Count, and
	// offset what the stage adds to that product, so that a count the
	// stage's backend names reads as the call's.
	scale, offset int
	// after runs on this rank when the stage succeeded.
	after func()
	// check, when set, runs after the stage succeeded and returns the
	// disagreement it found in what the stage gathered, the same on
	// every rank of the stage.
	check func() *core.MismatchError
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
	case core.KindReduceScatter:
		return core.KindReduce, core.KindReduceScatter, true
	case core.KindBroadcast, core.KindReduce, core.KindGather, core.KindScatter, core.KindAlltoall:
		return core.KindAlltoall, core.KindAlltoall, true
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
	case core.KindReduceScatter:
		return h.run(ctx, req, h.reduceScatter(req))
	case core.KindBroadcast, core.KindReduce, core.KindGather, core.KindScatter:
		return h.run(ctx, req, h.rooted(req))
	case core.KindAlltoall:
		return h.run(ctx, req, h.alltoall(req))
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

// alltoallStagedMax is the largest buffer (one rank's whole send buffer,
// in bytes) whose alltoall runs in stages through the leaders; larger
// ones run on World. Every block crosses between nodes either way: the
// stages save messages and link round trips (one message per pair of
// nodes instead of per pair of ranks), and cost a gather and a scatter of
// every buffer through the leader and the regrouping copies. Over a
// 1 Gbit/s link with 1 ms of delay, the stages won at 2 nodes x 4 ranks
// up to 16 KiB and lost from 32 KiB, and at 2 x 2 they lost by about a
// fifth from 4 KiB up (bench/results/hier-alltoall).
const alltoallStagedMax = 16 << 10

// alltoall returns the stages of an alltoall. Up to alltoallStagedMax:
// first, as for a rooted call, the ranks of each node exchange and
// compare what they passed (the kind above all: the gather that follows
// would otherwise meet an allgather's first stage as a mere count
// mismatch); then a gather of every rank's whole send buffer to the
// leader within each node; an alltoall between the leaders in which each
// pair of nodes exchanges the blocks one node's ranks send to the
// other's, in a width x width grid (width: the largest node's ranks) so
// that every pair moves the same count, followed by the header, which
// the leaders compare (so that the exchange cannot pass for a rooted
// call's agreement between the leaders); a scatter of each rank's whole
// receive buffer from the leader within each node. The leaders regroup
// the blocks by destination node after the gather, and into rank order
// after the exchange (a node's ranks need not be contiguous). Only the
// blocks whose ranks are on different nodes cross between nodes, once
// each, in one message per pair of nodes, where flat tcp sends one per
// pair of ranks.
//
// Larger: the agreement within each node and between the leaders of a
// rooted call, a barrier within each node (which a leader refuses when
// the leaders disagreed), then the alltoall on World. The agreement
// comes first so that ranks that disagree on the count, and so on the
// path, fail together instead of waiting in different backends.
func (h *Backend) alltoall(req *core.Request) []stage {
	hdr := header(req)
	if len(req.Send) > alltoallStagedMax {
		stages := []stage{h.agreeLocal(req, hdr)}
		if h.leader() {
			stages = append(stages, h.agreeLeaders(req, hdr))
		}
		return append(stages,
			stage{name: "barrier within the node", req: core.Request{Kind: core.KindBarrier}},
			stage{world: true, name: "alltoall", scale: 1, req: *req})
	}
	local := h.nodes[h.node]
	width := 0
	for _, ranks := range h.nodes {
		width = max(width, len(ranks))
	}
	blk := req.Count * req.Type.Size
	row := h.size * blk // one rank's whole buffer
	hn := len(hdr) / req.Type.Size
	// A leader's packed and exchanged buffers hold one part per node: its
	// grid of blocks, then the header.
	part := width*width*blk + len(hdr)
	var gathered, packed, exchanged, out []byte
	if h.leader() {
		gathered = make([]byte, len(local)*row)
		packed = make([]byte, len(h.nodes)*part)
		exchanged = make([]byte, len(packed))
		out = make([]byte, len(local)*row)
	}
	// cell is where node n's i-th rank's block for the other node's j-th
	// rank sits in a leader's packed or exchanged buffer.
	cell := func(buf []byte, n, i, j int) []byte {
		off := n*part + (i*width+j)*blk
		return buf[off : off+blk]
	}
	return []stage{
		h.agreeLocal(req, hdr),
		{name: "gather within the node", scale: h.size, req: core.Request{Kind: core.KindGather, DType: req.DType,
			Count: req.Count * h.size, Send: req.Send, Recv: gathered, Type: req.Type},
			after: func() {
				if !h.leader() {
					return
				}
				for n, ranks := range h.nodes {
					for i := range local {
						for j, r := range ranks {
							copy(cell(packed, n, i, j), gathered[i*row+r*blk:])
						}
					}
					copy(packed[(n+1)*part-len(hdr):], hdr)
				}
			}},
		{leaders: true, name: "alltoall between nodes", scale: width * width, offset: hn, req: core.Request{Kind: core.KindAlltoall,
			DType: req.DType, Count: req.Count*width*width + hn, Send: packed, Recv: exchanged, Type: req.Type},
			check: func() *core.MismatchError {
				hdrs := make([]byte, 0, len(h.nodes)*len(hdr))
				for n := range h.nodes {
					hdrs = append(hdrs, exchanged[(n+1)*part-len(hdr):(n+1)*part]...)
				}
				if me := h.disagree(hdr, hdrs, h.leaderRanks()); me != nil {
					return me
				}
				for n, ranks := range h.nodes {
					for i, r := range ranks {
						for j := range local {
							copy(out[j*row+r*blk:j*row+(r+1)*blk], cell(exchanged, n, i, j))
						}
					}
				}
				return nil
			}},
		{name: "scatter within the node", scale: h.size, req: core.Request{Kind: core.KindScatter, DType: req.DType,
			Count: req.Count * h.size, Send: out, Recv: req.Recv, Type: req.Type}},
	}
}

// The fields of a rooted call that every rank must pass alike, in the
// order the backends compare them.
var agreeFields = [...]string{"kind", "dtype", "op", "count", "root"}

// header encodes what every rank must agree on in a rooted call, padded
// to whole elements of req's type, which carries it.
func header(req *core.Request) []byte {
	n := len(agreeFields) * 8
	b := make([]byte, (n+req.Type.Size-1)/req.Type.Size*req.Type.Size)
	for i, v := range []int64{int64(req.Kind), int64(req.DType), int64(req.Op), int64(req.Count), int64(req.Root)} {
		binary.LittleEndian.PutUint64(b[8*i:], uint64(v))
	}
	return b
}

// repeat returns n copies of b, one after another.
func repeat(b []byte, n int) []byte {
	out := make([]byte, 0, len(b)*n)
	for range n {
		out = append(out, b...)
	}
	return out
}

// disagree compares the headers in all, of the ranks ranks, with mine
// and returns a MismatchError naming the first rank whose header differs,
// or nil.
func (h *Backend) disagree(mine, all []byte, ranks []int) *core.MismatchError {
	n := len(mine)
	for j, r := range ranks {
		theirs := all[j*n : (j+1)*n]
		for i, field := range agreeFields {
			a, b := int64(binary.LittleEndian.Uint64(mine[8*i:])), int64(binary.LittleEndian.Uint64(theirs[8*i:]))
			if a != b {
				return &core.MismatchError{Seq: h.seq, Field: field, Rank: h.rank, Peer: r,
					Mine: headerValue(field, a), Theirs: headerValue(field, b)}
			}
		}
	}
	return nil
}

// headerValue formats a header's field as valueOf does.
func headerValue(field string, v int64) string {
	switch field {
	case "kind":
		return core.Kind(v).String()
	case "dtype":
		return core.DType(v).String()
	case "op":
		return core.Op(v).String()
	}
	return strconv.FormatInt(v, 10)
}

// agreeLocal is the stage in which the ranks of a node exchange hdr,
// req's header, and compare it: the first stage of a rooted call and of
// an alltoall.
func (h *Backend) agreeLocal(req *core.Request, hdr []byte) stage {
	local := h.nodes[h.node]
	nodeHdrs := make([]byte, len(hdr)*len(local))
	return stage{name: "agreement within the node",
		req: core.Request{Kind: core.KindAlltoall, DType: req.DType, Count: len(hdr) / req.Type.Size,
			Send: repeat(hdr, len(local)), Recv: nodeHdrs, Type: req.Type},
		check: func() *core.MismatchError { return h.disagree(hdr, nodeHdrs, local) }}
}

// agreeLeaders is the stage in which the leaders exchange hdr, req's
// header, and compare it; the leaders run it alone.
func (h *Backend) agreeLeaders(req *core.Request, hdr []byte) stage {
	leaderHdrs := make([]byte, len(hdr)*len(h.nodes))
	return stage{leaders: true, name: "agreement between nodes",
		req: core.Request{Kind: core.KindAlltoall, DType: req.DType, Count: len(hdr) / req.Type.Size,
			Send: repeat(hdr, len(h.nodes)), Recv: leaderHdrs, Type: req.Type},
		check: func() *core.MismatchError { return h.disagree(hdr, leaderHdrs, h.leaderRanks()) }}
}

// leaderRanks lists the nodes' leaders' job ranks, by node.
func (h *Backend) leaderRanks() []int {
	firsts := make([]int, len(h.nodes))
	for n, ranks := range h.nodes {
		firsts[n] = ranks[0]
	}
	return firsts
}

// rooted returns the stages of a broadcast, reduce, gather or scatter.
// Their stages within a node and between the leaders use the root's
// node and its index there, so a disagreement on the root could go
// unseen by the backends; so the ranks first exchange what they passed
// (within each node, then between the leaders) and compare it, which
// every rank of a stage does alike. The exchange is an alltoall, a kind
// no other first stage runs (alltoall's begins with the same exchange,
// whose headers then differ in kind), so that the backends see a
// disagreement between a rooted and another staged collective in the
// first stage. After
// those, every node has a stage within it, which a leader refuses when
// the leaders found a disagreement; the stages that follow depend on
// where the root is, which the ranks then agree on.
func (h *Backend) rooted(req *core.Request) []stage {
	hdr := header(req)
	local := h.nodes[h.node]
	stages := []stage{h.agreeLocal(req, hdr)}
	if h.leader() {
		stages = append(stages, h.agreeLeaders(req, hdr))
	}
	rootNode, rootLocal := -1, -1
	for n, ranks := range h.nodes {
		if i := slices.Index(ranks, req.Root); i >= 0 {
			rootNode, rootLocal = n, i
		}
	}
	onRootNode := h.node == rootNode
	isRoot := h.rank == req.Root
	width := 0
	for _, ranks := range h.nodes {
		width = max(width, len(ranks))
	}
	blk := req.Count * req.Type.Size
	whole := req.Count * h.size // the elements of a gather's or scatter's whole buffer
	// moveToRoot and moveFromRoot move buf, count elements, between the
	// root's node's leader and the root, when the root is not the leader.
	moveToRoot := func(buf []byte, count int) {
		if !onRootNode || rootLocal == 0 {
			return
		}
		switch {
		case h.leader():
			stages = append(stages, stage{p2p: true, name: "to the root", req: core.Request{Kind: core.KindSend, DType: req.DType,
				Count: count, Peer: rootLocal, Send: buf, Type: req.Type}})
		case isRoot:
			stages = append(stages, stage{p2p: true, name: "to the root", req: core.Request{Kind: core.KindRecv, DType: req.DType,
				Count: count, Peer: 0, Recv: req.Recv, Type: req.Type}})
		}
	}
	leaders := func(s stage) {
		s.leaders = true
		stages = append(stages, s)
	}
	switch req.Kind {
	case core.KindBroadcast:
		bcast := func(root int) stage {
			return stage{name: "broadcast within the node", scale: 1, req: core.Request{Kind: core.KindBroadcast,
				DType: req.DType, Count: req.Count, Root: root, Send: req.Recv, Recv: req.Recv, Type: req.Type}}
		}
		if onRootNode && rootLocal != 0 {
			stages = append(stages, bcast(rootLocal))
		}
		leaders(stage{name: "broadcast between nodes", scale: 1, req: core.Request{Kind: core.KindBroadcast,
			DType: req.DType, Count: req.Count, Root: rootNode, Send: req.Recv, Recv: req.Recv, Type: req.Type}})
		if !onRootNode || rootLocal == 0 {
			stages = append(stages, bcast(0))
		}
	case core.KindReduce:
		// As in allreduce, the stages reduce without the op's finish
		// step, which the root's node's leader takes once.
		k := h.partial(req.Kernel)
		var buf, top []byte
		if h.leader() {
			buf = make([]byte, blk)
			if isRoot {
				buf = req.Recv
			}
			if onRootNode {
				top = buf
			}
		}
		stages = append(stages, stage{name: "reduce within the node", scale: 1, req: core.Request{Kind: core.KindReduce,
			DType: req.DType, Op: req.Op, Count: req.Count, Send: req.Send, Recv: buf, Type: req.Type, Kernel: k}})
		leaders(stage{name: "reduce between nodes", scale: 1, req: core.Request{Kind: core.KindReduce, DType: req.DType,
			Op: req.Op, Count: req.Count, Root: rootNode, Send: buf, Recv: top, Type: req.Type, Kernel: k},
			after: func() {
				if onRootNode {
					req.Kernel.Finish(buf, h.size)
				}
			}})
		moveToRoot(buf, req.Count)
	case core.KindGather:
		// The leaders gather the nodes' blocks, each padded to the
		// largest node's, and the root's node's leader reorders them
		// into rank order (a node's ranks need not be contiguous).
		var mine, gathered, all, out []byte
		if h.leader() {
			mine = make([]byte, width*blk)
			gathered = mine[: len(local)*blk : len(local)*blk]
			if onRootNode {
				all = make([]byte, len(h.nodes)*width*blk)
				out = req.Recv
				if !isRoot {
					out = make([]byte, whole*req.Type.Size)
				}
			}
		}
		stages = append(stages, stage{name: "gather within the node", scale: 1, req: core.Request{Kind: core.KindGather,
			DType: req.DType, Count: req.Count, Send: req.Send, Recv: gathered, Type: req.Type}})
		leaders(stage{name: "gather between nodes", scale: width, req: core.Request{Kind: core.KindGather, DType: req.DType,
			Count: req.Count * width, Root: rootNode, Send: mine, Recv: all, Type: req.Type},
			after: func() {
				if onRootNode {
					h.unpad(out, all, blk, width)
				}
			}})
		moveToRoot(out, whole)
	case core.KindScatter:
		// The root's node's leader pads the root's blocks into one
		// block per node, as gather's leaders receive them.
		var src, packed, mine []byte
		if h.leader() {
			mine = make([]byte, width*blk)
			if onRootNode {
				src = req.Send
				if !isRoot {
					src = make([]byte, whole*req.Type.Size)
				}
				packed = make([]byte, len(h.nodes)*width*blk)
			}
		}
		pack := func() {
			for n, ranks := range h.nodes {
				for i, r := range ranks {
					copy(packed[(n*width+i)*blk:(n*width+i+1)*blk], src[r*blk:])
				}
			}
		}
		if onRootNode && rootLocal != 0 {
			switch {
			case h.leader():
				stages = append(stages, stage{p2p: true, name: "from the root", req: core.Request{Kind: core.KindRecv, DType: req.DType,
					Count: whole, Peer: rootLocal, Recv: src, Type: req.Type}, after: pack})
			case isRoot:
				stages = append(stages, stage{p2p: true, name: "from the root", req: core.Request{Kind: core.KindSend, DType: req.DType,
					Count: whole, Peer: 0, Send: req.Send, Type: req.Type}})
			}
		} else if onRootNode && h.leader() {
			pack()
		}
		leaders(stage{name: "scatter between nodes", scale: width, req: core.Request{Kind: core.KindScatter, DType: req.DType,
			Count: req.Count * width, Root: rootNode, Send: packed, Recv: mine, Type: req.Type}})
		var send []byte
		if h.leader() {
			send = mine[: len(local)*blk : len(local)*blk]
		}
		stages = append(stages, stage{name: "scatter within the node", scale: 1, req: core.Request{Kind: core.KindScatter,
			DType: req.DType, Count: req.Count, Send: send, Recv: req.Recv, Type: req.Type}})
	}
	return stages
}

// unpad copies the nodes' blocks in all, each node's padded to width
// blocks of blk bytes, into out in rank order.
func (h *Backend) unpad(out, all []byte, blk, width int) {
	for n, ranks := range h.nodes {
		for i, r := range ranks {
			copy(out[r*blk:(r+1)*blk], all[(n*width+i)*blk:])
		}
	}
}

// reduceScatter: a reduce of the whole buffer to the leader within each
// node; a reduce_scatter between the leaders of the nodes' blocks, each
// node's padded to the largest node's (a node's ranks need not be
// contiguous), which leaves each leader its node's blocks; a scatter of
// those from the leader within each node. As in allreduce, the stages
// reduce without the op's finish step, which each leader takes once.
func (h *Backend) reduceScatter(req *core.Request) []stage {
	k := h.partial(req.Kernel)
	local := h.nodes[h.node]
	width := 0
	for _, ranks := range h.nodes {
		width = max(width, len(ranks))
	}
	blk := req.Count * req.Type.Size
	var sum, packed, mine, send []byte
	if h.leader() {
		sum = make([]byte, len(req.Send))
		packed = make([]byte, len(h.nodes)*width*blk)
		mine = make([]byte, width*blk)
		send = mine[: len(local)*blk : len(local)*blk]
	}
	return []stage{
		{name: "reduce within the node", scale: h.size, req: core.Request{Kind: core.KindReduce, DType: req.DType, Op: req.Op,
			Count: req.Count * h.size, Send: req.Send, Recv: sum, Type: req.Type, Kernel: k},
			after: func() {
				if !h.leader() {
					return
				}
				for n, ranks := range h.nodes {
					for i, r := range ranks {
						copy(packed[(n*width+i)*blk:(n*width+i+1)*blk], sum[r*blk:])
					}
				}
			}},
		{leaders: true, name: "reduce_scatter between nodes", scale: width, req: core.Request{Kind: core.KindReduceScatter,
			DType: req.DType, Op: req.Op, Count: req.Count * width, Send: packed, Recv: mine, Type: req.Type, Kernel: k},
			after: func() { req.Kernel.Finish(send, h.size) }},
		{name: "scatter within the node", scale: 1, req: core.Request{Kind: core.KindScatter, DType: req.DType,
			Count: req.Count, Send: send, Recv: req.Recv, Type: req.Type}},
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
		switch {
		case s.leaders:
			b, rename = h.leaders, h.leaderError
		case s.world:
			b, rename = h.world, h.worldError
		}
		h.sub = s.req
		err := b.Run(ctx, &h.sub)
		var me *core.MismatchError
		if err == nil {
			if s.after != nil {
				s.after()
			}
			if s.check == nil {
				continue
			}
			if me = s.check(); me == nil {
				continue
			}
		} else {
			if s.offset == 0 {
				err = rename(err, req.Kind.String()+" ("+s.name+")", s.scale)
			} else if err = rename(err, req.Kind.String()+" ("+s.name+")", 1); mismatch(err) != nil && mismatch(err).Field == "count" {
				me := mismatch(err)
				me.Mine, me.Theirs = unoffset(me.Mine, s.scale, s.offset), unoffset(me.Theirs, s.scale, s.offset)
			}
			if me = mismatch(err); me == nil {
				return h.stageFailed(ctx, err)
			}
			me = h.cause(ctx, me, req)
		}
		if !h.leader() {
			return me
		}
		nodeKnows, leadersKnow := !s.leaders, s.leaders
		for _, t := range stages[i+1:] {
			switch {
			case t.p2p && !nodeKnows:
				h.sub = t.req
				if err := h.local.Run(ctx, &h.sub); err != nil {
					err = h.localError(err, req.Kind.String()+" ("+t.name+")", 1)
					h.Abort(err)
					return fmt.Errorf("hier: call #%d failed (%v), and passing that on failed: %w", h.seq, me, err)
				}
			case t.p2p, t.world:
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
// there; for a staged kind (or one the runtime does not know), the first
// stage of its node and, on a leader, the first leaders stage, whose
// leaders pass the refusal on to their nodes.
func (h *Backend) Refuse(ctx context.Context, req *core.Request) error {
	h.seq++
	h.note(ctx, &core.MismatchError{Seq: h.seq, Field: "argument", Rank: h.rank, Peer: h.rank, Theirs: describe(req)})
	kind := req.Kind
	if kind.Shape() == nil {
		// A kind the runtime does not run (a nil request) says nothing
		// of where the peers wait. Most collectives are staged, and each
		// stage reports a refusal before it compares kinds: refuse in
		// the first stages, as for an allreduce.
		kind = core.KindAllreduce
	}
	local, leaders, ok := staged(kind)
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
// The error names the ranks that failed: a rank that learned of the
// failure from a peer that aborted, and gave up because of another
// rank, names that rank instead (see blame).
func (h *Backend) stageFailed(ctx context.Context, err error) error {
	err = h.blame(ctx, err)
	var pe *core.PeerError
	if h.store != nil && errors.As(err, &pe) {
		if v, jerr := json.Marshal(pe.Ranks); jerr == nil {
			ctx, cancel := context.WithTimeout(context.WithoutCancel(ctx), noteWait)
			h.store.Set(ctx, blameKey(h.rank), v)
			cancel()
		}
	}
	h.Abort(err)
	return err
}

// blameWait bounds how long a rank looks for the ranks a peer blamed
// before it aborted. The peer records them before it aborts, so they are
// there by the time anyone learns of the abort; a peer that died records
// nothing, and the wait runs out.
const blameWait = 300 * time.Millisecond

func blameKey(rank int) string { return "blame/" + strconv.Itoa(rank) }

// blame turns err, a PeerError naming one rank, into one naming the
// ranks that rank blamed when it aborted, if it recorded any: so every
// rank names the rank that died, not the ranks that passed the news on.
// A communicator fails once, so the record needs no call number, and the
// ranks that learn of a failure need not be in the same call.
func (h *Backend) blame(ctx context.Context, err error) error {
	var pe *core.PeerError
	if h.store == nil || !errors.As(err, &pe) || len(pe.Ranks) != 1 || pe.Ranks[0] == h.rank {
		return err
	}
	ctx, cancel := context.WithTimeout(context.WithoutCancel(ctx), blameWait)
	defer cancel()
	v, gerr := h.store.Get(ctx, blameKey(pe.Ranks[0]))
	var ranks []int
	if gerr != nil || json.Unmarshal(v, &ranks) != nil || len(ranks) == 0 {
		return err
	}
	return &core.PeerError{Op: pe.Op, Ranks: ranks, Err: fmt.Errorf("rank %d gave up on them: %w", pe.Ranks[0], pe.Err)}
}

// abortCause is what hier tells its backends' peers when it aborts: the
// cause's text. The backends pass on the ranks a PeerError names, but in
// their own numbering, which differs between them; the cause's type is
// of no use to a peer, which learns the ranks blamed from blame.
type abortCause struct{ msg string }

func (c abortCause) Error() string { return c.msg }

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
	case "root":
		return strconv.Itoa(req.Root), true
	case "kind":
		return req.Kind.String(), true
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
	return h.rename(err, op, scale, func(r int) int { return at(h.nodes[h.node], r) })
}

// leaderError renames the leader indices (node numbers) an error names
// to the leaders' job ranks.
func (h *Backend) leaderError(err error, op string, scale int) error {
	return h.rename(err, op, scale, func(n int) int {
		if n < 0 || n >= len(h.nodes) {
			return n
		}
		return h.nodes[n][0]
	})
}

// worldError names the call in an error from a stage on World, whose
// ranks are the job's.
func (h *Backend) worldError(err error, op string, scale int) error {
	return h.rename(err, op, scale, func(r int) int { return r })
}

// at returns ranks[i], or i when a backend named no rank of its group.
func at(ranks []int, i int) int {
	if i < 0 || i >= len(ranks) {
		return i
	}
	return ranks[i]
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

// unoffset turns the count of a stage whose Count is the call's times
// scale plus offset into the call's.
func unoffset(count string, scale, offset int) string {
	n, err := strconv.Atoi(count)
	if err != nil || n < offset {
		return count
	}
	return unscale(strconv.Itoa(n-offset), scale)
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
