package tcp

import (
	"context"
	"errors"
	"fmt"
	"time"
	"unsafe"

	"github.com/gocoll/gocoll/core"
)

// Run implements core.Backend: it runs req, which passed core.Check with
// this backend's rank and size, so its buffers fit, its Type and Kernel
// are set and the fields its kind does not use are zero. The ranks'
// calls are compared as the package documentation describes; a
// disagreement is a *core.MismatchError on every rank, after which the
// ranks are still in step and the next call runs. Any other error (a rank
// that died, broke its connections, timed out or aborted) fails the
// backend: the streams between ranks are out of step, and every later
// call returns the error.
func (b *Backend) Run(ctx context.Context, req *core.Request) error {
	next := b.seq + 1
	// A failure recorded since the last call (a peer's abort that came on
	// the control connection, Abort, Close): the streams are out of step,
	// and the call must not put frames on them.
	if f := b.failure.Load(); f != nil && f.seq <= next {
		return b.failureError(f, fmt.Sprintf("%v #%d", req.Kind, next))
	}
	b.kern, b.es = req.Kernel, 0
	// On a crowded host a spinning rank holds a CPU that a peer's sender
	// or reducer needs: only calls small enough to be latency-bound spin.
	b.spinCall = !b.crowded || max(len(req.Send), len(req.Recv)) <= spinMaxPayload
	if req.Type != nil {
		b.es = req.Type.Size
	}
	// Check bounds Count x Size x ranks by MaxInt, so no byte count or
	// offset the algorithms derive from them can wrap.
	var algo Algorithm
	b.vc = vcall{}
	if sh := req.Kind.Shape(); sh != nil && sh.Vector() {
		// A vector collective: its count field carries its counts' digest.
		algo = algoCopy
		if b.size > 1 {
			algo = b.vchoose(req)
		}
		b.vc = vcall{shared: req.RecvCounts}
		switch req.Kind {
		case core.KindScatterv:
			b.vc.shared = req.SendCounts
		case core.KindAlltoallv:
			b.vc = vcall{send: req.SendCounts, recv: req.RecvCounts}
		}
	} else {
		algo = b.choose(req.Kind, req.Count, req.Count*b.es)
	}
	b.cur = header{typ: frameData, kind: req.Kind, dtype: req.DType, op: req.Op, algo: algo, count: uint64(req.Count) | req.Digest, root: int32(req.Root)}
	b.number(req, next)
	b.setDeadline(ctx)
	call := b.calls.Add(1)
	b.active.Store(call)
	defer b.active.Store(0)
	b.arm()
	if ctx.Done() != nil {
		defer b.watch(ctx, call)()
	}
	return b.end(b.run(req, algo))
}

// setDeadline sets the running call's deadline: the backend's timeout from
// now, or ctx's deadline if that is earlier.
func (b *Backend) setDeadline(ctx context.Context) {
	now := time.Now()
	b.dl = now.Add(b.timeout)
	if d, ok := ctx.Deadline(); ok && d.Before(b.dl) {
		b.dl = d
	}
	b.budget = b.dl.Sub(now)
}

// watch makes a cancellation of ctx (not its deadline: the connections'
// deadlines say whom this rank was waiting for) abandon call number call;
// peers are told. It returns the function that stops watching.
func (b *Backend) watch(ctx context.Context, call uint64) func() bool {
	kind, seq := b.cur.kind, b.cur.seq // not b.cur itself: the next call may be writing it
	return context.AfterFunc(ctx, func() {
		if b.active.Load() != call || errors.Is(ctx.Err(), context.DeadlineExceeded) {
			return
		}
		b.fail(&failure{seq: b.running.Load(), local: fmt.Errorf("tcp: %v #%d: %w", kind, seq, context.Cause(ctx))}, true)
	})
}

// end returns the error of a call that ended with err. A disagreement has
// been settled with the peers and leaves the backend in step; anything
// else leaves the streams out of step, so it fails the backend (a no-op
// when the error came from a recorded failure) and tells the peers.
func (b *Backend) end(err error) error {
	if err == nil {
		return nil
	}
	var me *core.MismatchError
	if errors.As(err, &me) {
		return err
	}
	f := b.fail(&failure{seq: b.running.Load(), local: err}, true)
	b.drain()
	return b.failureError(f, b.opName())
}

// number gives the call in b.cur its sequence number: a send or recv its
// peer's count in that direction (the frame's kind is send on both sides),
// any other call the communicator's next one.
func (b *Backend) number(req *core.Request, next uint64) {
	if req.Kind == core.KindSend || req.Kind == core.KindRecv {
		p := b.peers[req.Peer]
		b.cur.kind = core.KindSend
		if req.Kind == core.KindSend {
			p.sendSeq++
			b.cur.seq = p.sendSeq
		} else {
			p.recvSeq++
			b.cur.seq = p.recvSeq
		}
		return
	}
	b.seq = next
	b.cur.seq = next
	b.running.Store(next)
}

// Refuse implements core.Backend: req failed core.Check on this rank, and
// its fields may hold anything. This rank takes its part in the call with
// its header marked refused and moves no data, so that the peers return a
// *core.MismatchError naming it ("argument") at once, and the ranks stay in
// step. A send or recv with a peer in range tells that peer only (a recv
// discards what the peer sends); one whose peer is out of range has no
// partner to tell. A nil req is refused as a collective. Refuse returns
// nil, or the error that failed the backend when the peers could not be
// reached.
func (b *Backend) Refuse(ctx context.Context, req *core.Request) error {
	if b.size == 1 {
		return nil
	}
	if req == nil {
		req = &core.Request{}
	}
	b.spinCall = true // a refusal's frames are headers
	next := b.seq + 1
	if f := b.failure.Load(); f != nil && f.seq <= next {
		return b.failureError(f, fmt.Sprintf("refused %v #%d", req.Kind, next))
	}
	b.kern, b.es = nil, 0
	b.vc = vcall{}
	b.cur = header{typ: frameData, kind: req.Kind, dtype: req.DType, op: req.Op, count: uint64(req.Count), root: int32(req.Root), flags: flagRefused}
	p2p := req.Kind == core.KindSend || req.Kind == core.KindRecv
	var p *peer
	if p2p {
		if req.Peer < 0 || req.Peer >= b.size || req.Peer == b.rank {
			return nil
		}
		p = b.peers[req.Peer]
	}
	b.number(req, next)
	b.setDeadline(ctx)
	call := b.calls.Add(1)
	b.active.Store(call)
	defer b.active.Store(0)
	if ctx.Done() != nil {
		defer b.watch(ctx, call)()
	}
	var err error
	switch {
	case !p2p:
		err = b.settle("")
	case req.Kind == core.KindSend:
		h := b.cur
		h.typ = frameEnd
		err = b.send(p, &h, nil)
	default:
		err = b.skipMessage(p)
	}
	if err = b.end(err); err != nil {
		var me *core.MismatchError
		if errors.As(err, &me) {
			return nil // the verdict: this rank, or a lower one, refused
		}
		return err
	}
	return nil
}

// Abort implements core.Backend: it fails the call in flight on this rank
// and every later one with an error wrapping cause, and tells the peers on
// their control connections, so that their calls fail at once naming this
// rank. It may be called from any goroutine.
func (b *Backend) Abort(cause error) {
	b.fail(&failure{seq: b.running.Load(), local: fmt.Errorf("tcp: rank %d: the communicator was aborted: %w", b.rank, cause)}, true)
}

// drain waits, after a failed call, until no send job still reads the
// caller's buffers: interrupted writes fail at once and queued jobs are
// skipped, so this is quick.
func (b *Backend) drain() {
	b.interrupt()
	for _, p := range b.peers {
		if p == nil {
			continue
		}
		for p.done.Load() < p.posted {
			select {
			case <-p.notify:
			case <-b.quit:
				return
			}
		}
	}
}

// choose picks the algorithm: the option's if set, else by size. It depends
// only on arguments every rank shares, so every rank picks the same.
func (b *Backend) choose(kind core.Kind, count, bytes int) Algorithm {
	if b.size == 1 {
		return algoCopy
	}
	switch kind {
	case core.KindAllreduce:
		if b.cfg.allreduce != Auto {
			return b.cfg.allreduce
		}
		switch {
		case bytes <= b.cfg.smallSize:
			return RecursiveDoubling
		case bytes <= b.cfg.mediumSize || count < b.size:
			return Rabenseifner
		}
		return Ring
	case core.KindBroadcast:
		if b.cfg.broadcast != Auto {
			return b.cfg.broadcast
		}
		if bytes <= b.cfg.treeSize || b.size == 2 {
			return BinomialTree
		}
		return Chain
	case core.KindReduce:
		if b.cfg.reduce != Auto {
			return b.cfg.reduce
		}
		if bytes <= b.cfg.treeSize {
			return BinomialTree
		}
		return Chain
	case core.KindAllgather, core.KindReduceScatter:
		return Ring
	case core.KindGather, core.KindScatter:
		return Direct
	case core.KindAlltoall:
		return Pairwise
	case core.KindBarrier:
		return Dissemination
	}
	return PointToPoint
}

func (b *Backend) run(req *core.Request, algo Algorithm) error {
	if b.vc.shared != nil || b.vc.send != nil {
		return b.runVector(req, algo)
	}
	if algo == algoCopy {
		return b.local(req)
	}
	switch req.Kind {
	case core.KindAllreduce:
		switch algo {
		case RecursiveDoubling:
			return b.allreduceRD(req.Send, req.Recv)
		case Rabenseifner:
			return b.allreduceRabenseifner(req.Send, req.Recv, req.Count)
		}
		return b.allreduceRing(req.Send, req.Recv, req.Count)
	case core.KindReduce:
		if algo == Chain {
			if err := b.agree(); err != nil {
				return err
			}
			return b.reduceChain(req.Send, req.Recv, req.Count, req.Root)
		}
		return b.reduceTree(req.Send, req.Recv, req.Root) // agrees as it goes
	case core.KindBroadcast:
		if algo == Chain {
			if err := b.agree(); err != nil {
				return err
			}
			return b.broadcastChain(req.Recv, req.Root)
		}
		return b.broadcastTree(req.Recv, req.Root) // agrees as it goes
	case core.KindAllgather:
		return b.allgatherRing(req.Send, req.Recv, req.Count)
	case core.KindReduceScatter:
		return b.reduceScatterRing(req.Send, req.Recv, req.Count, nil)
	case core.KindGather:
		if err := b.agree(); err != nil {
			return err
		}
		return b.gather(req.Send, req.Recv, req.Root)
	case core.KindScatter:
		if err := b.agree(); err != nil {
			return err
		}
		return b.scatter(req.Send, req.Recv, req.Root)
	case core.KindAlltoall:
		return b.alltoall(req.Send, req.Recv)
	case core.KindBarrier:
		return b.barrier()
	case core.KindSend:
		p := b.peers[req.Peer]
		if err := b.send(p, &b.cur, req.Send); err != nil || len(req.Send) <= core.EagerSize {
			return err
		}
		return b.awaitAck(p, b.cur.seq)
	case core.KindRecv:
		return b.recv(b.peers[req.Peer], &b.cur, req.Recv)
	}
	// Unreachable for a checked request.
	return fmt.Errorf("tcp: %v: %w", req.Kind, core.ErrUnsupported)
}

// local runs a collective of one rank.
func (b *Backend) local(req *core.Request) error {
	switch req.Kind {
	case core.KindAllreduce, core.KindReduce, core.KindReduceScatter:
		copyIfDistinct(req.Recv, req.Send)
		b.kern.Finish(req.Recv, 1)
	case core.KindAllgather, core.KindGather, core.KindScatter, core.KindAlltoall:
		copyIfDistinct(req.Recv, req.Send)
	}
	return nil
}

// copyIfDistinct copies src to dst unless they are the same memory.
func copyIfDistinct(dst, src []byte) {
	if len(dst) > 0 && len(src) > 0 && unsafe.SliceData(dst) == unsafe.SliceData(src) {
		return
	}
	copy(dst, src)
}

func sameStart(a, b []byte) bool {
	return len(a) > 0 && len(b) > 0 && unsafe.SliceData(a) == unsafe.SliceData(b)
}

// reduce sets dst = x op y with the running call's kernel.
func (b *Backend) reduce(dst, x, y []byte) {
	b.srcs[0], b.srcs[1] = x, y
	b.kern.Reduce(&b.red, dst, b.srcs[:])
	b.srcs[0], b.srcs[1] = nil, nil
}

// finish applies the op's final step (avg's divide) to a final result.
func (b *Backend) finish(buf []byte) { b.kern.Finish(buf, b.size) }

// blockRange returns elements [lo, hi) of part i when count elements are
// cut into parts nearly equal parts (the first count%parts one larger).
func blockRange(count, parts, i int) (lo, hi int) {
	base, rem := count/parts, count%parts
	lo = i*base + min(i, rem)
	hi = lo + base
	if i < rem {
		hi++
	}
	return lo, hi
}

func mod(a, n int) int { return ((a % n) + n) % n }
