package tcp

import (
	"context"
	"errors"
	"fmt"
	"time"
	"unsafe"

	"github.com/gocoll/gocoll/core"
	"github.com/gocoll/gocoll/generated/coll"
)

// Do implements core.Comm: it runs one collective (or one send or recv)
// described by req. Every rank calls Do with matching Kind, DType, Op, Count
// and Root, in the same order; a disagreement is a *core.MismatchError on
// the ranks that see it, and every rank's call fails (a rank whose part of
// a rooted collective did not depend on the disagreeing rank learns of it
// at its next call). A rank that dies or breaks its connections makes the
// others fail with a *core.PeerError naming it. After either, the backend
// stays failed: close it and build a new one.
//
// Invalid arguments (wrong buffer sizes, an unsupported dtype and op, a root
// out of range) return an error on this rank only, without talking to any
// peer; the collective is not counted as started.
func (b *Backend) Do(ctx context.Context, req *core.Request) error {
	b.mu.Lock()
	defer b.mu.Unlock()
	if b.closed.Load() {
		return core.ErrClosed
	}
	p2p := req.Kind == coll.KindSend || req.Kind == coll.KindRecv
	next := b.seq + 1
	if f := b.failure.Load(); f != nil && f.seq <= next {
		return b.failureError(f, fmt.Sprintf("%v #%d", req.Kind, next))
	}
	if err := b.validate(req); err != nil {
		return err
	}
	algo := b.choose(req)

	b.cur = header{typ: frameData, kind: req.Kind, dtype: req.DType, op: req.Op, algo: algo, count: uint64(req.Count)}
	b.kern = req.Kernel
	switch req.Kind {
	case coll.KindReduce, coll.KindBroadcast, coll.KindGather, coll.KindScatter:
		b.cur.root = int32(req.Root)
	}
	if p2p {
		p := b.peers[req.Peer]
		b.cur.kind = coll.KindSend // the frame's kind on both sides
		if req.Kind == coll.KindSend {
			p.sendSeq++
			b.cur.seq = p.sendSeq
		} else {
			p.recvSeq++
			b.cur.seq = p.recvSeq
		}
	} else {
		b.seq = next
		b.cur.seq = next
		b.running.Store(next)
	}

	now := time.Now()
	b.dl = now.Add(b.timeout)
	if d, ok := ctx.Deadline(); ok && d.Before(b.dl) {
		b.dl = d
	}
	b.budget = b.dl.Sub(now)
	call := b.calls.Add(1)
	b.active.Store(call)
	defer b.active.Store(0)
	if ctx.Done() != nil {
		// Cancellation (not the deadline: the connections' deadlines say
		// whom this rank was waiting for) abandons the call; peers are told.
		kind, seq := b.cur.kind, b.cur.seq // not b.cur itself: the next call may be writing it
		stop := context.AfterFunc(ctx, func() {
			if b.active.Load() != call || errors.Is(ctx.Err(), context.DeadlineExceeded) {
				return
			}
			b.fail(&failure{seq: b.running.Load(), local: fmt.Errorf("tcp: %v #%d: %w", kind, seq, context.Cause(ctx))}, true)
		})
		defer stop()
	}

	if err := b.run(req, algo); err != nil {
		// Whatever went wrong, the streams are now out of step: fail the
		// backend (a no-op when the error came from a recorded failure).
		f := b.fail(&failure{seq: b.running.Load(), local: err}, true)
		b.drain()
		return b.failureError(f, b.opName())
	}
	return nil
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

// validate checks req on this rank alone.
func (b *Backend) validate(req *core.Request) error {
	n := b.size
	name := req.Kind.String()
	if req.Count < 0 {
		return fmt.Errorf("tcp: %s: count %d is negative", name, req.Count)
	}
	es := req.DType.Size()
	if es == 0 && req.Kind != coll.KindBarrier {
		return fmt.Errorf("tcp: %s: %w dtype %v (is its generated package imported?)", name, core.ErrUnsupported, req.DType)
	}
	blk := req.Count * es
	want := func(what string, buf []byte, size int) error {
		if len(buf) != size {
			return fmt.Errorf("tcp: %s: %s buffer holds %d bytes, want %d (count %d x %d-byte %v)", name, what, len(buf), size, size/max(es, 1), es, req.DType)
		}
		return nil
	}
	needOp := func() error {
		if !coll.Supports(req.DType, req.Op) {
			return fmt.Errorf("tcp: %s: %w: op %v on %v", name, core.ErrUnsupported, req.Op, req.DType)
		}
		return nil
	}
	needRoot := func() error {
		if req.Root < 0 || req.Root >= n {
			return fmt.Errorf("tcp: %s: root %d out of range [0, %d)", name, req.Root, n)
		}
		return nil
	}
	isRoot := req.Root == b.rank
	var err error
	switch req.Kind {
	case coll.KindAllreduce:
		err = errors.Join(needOp(), want("send", req.Send, blk), want("recv", req.Recv, blk))
	case coll.KindReduce:
		err = errors.Join(needOp(), needRoot(), want("send", req.Send, blk))
		if err == nil && isRoot {
			err = want("recv", req.Recv, blk)
		}
	case coll.KindBroadcast:
		err = needRoot()
		if err == nil {
			err = want("buf", bcastBuf(req), blk)
		}
	case coll.KindAllgather:
		err = errors.Join(want("send", req.Send, blk), want("recv", req.Recv, blk*n))
	case coll.KindReduceScatter:
		err = errors.Join(needOp(), want("send", req.Send, blk*n), want("recv", req.Recv, blk))
	case coll.KindGather:
		err = errors.Join(needRoot(), want("send", req.Send, blk))
		if err == nil && isRoot {
			err = want("recv", req.Recv, blk*n)
		}
	case coll.KindScatter:
		err = errors.Join(needRoot(), want("recv", req.Recv, blk))
		if err == nil && isRoot {
			err = want("send", req.Send, blk*n)
		}
	case coll.KindAlltoall:
		err = errors.Join(want("send", req.Send, blk*n), want("recv", req.Recv, blk*n))
	case coll.KindBarrier:
	case coll.KindSend, coll.KindRecv:
		if req.Peer < 0 || req.Peer >= n || req.Peer == b.rank {
			return fmt.Errorf("tcp: %s: peer %d must be another rank in [0, %d)", name, req.Peer, n)
		}
		if req.Kind == coll.KindSend {
			err = want("send", req.Send, blk)
		} else {
			err = want("recv", req.Recv, blk)
		}
	default:
		return fmt.Errorf("tcp: %w collective %v", core.ErrUnsupported, req.Kind)
	}
	return err
}

// bcastBuf is broadcast's one buffer (Send and Recv are the same slice; a
// caller may set only one).
func bcastBuf(req *core.Request) []byte {
	if req.Recv != nil {
		return req.Recv
	}
	return req.Send
}

// choose picks the algorithm: the option's if set, else by size. It depends
// only on arguments every rank shares, so every rank picks the same.
func (b *Backend) choose(req *core.Request) Algorithm {
	if b.size == 1 {
		return algoCopy
	}
	bytes := req.Count * req.DType.Size()
	switch req.Kind {
	case coll.KindAllreduce:
		if b.cfg.allreduce != Auto {
			return b.cfg.allreduce
		}
		switch {
		case bytes <= b.cfg.smallSize:
			return RecursiveDoubling
		case bytes <= b.cfg.mediumSize || req.Count < b.size:
			return Rabenseifner
		}
		return Ring
	case coll.KindBroadcast:
		if b.cfg.broadcast != Auto {
			return b.cfg.broadcast
		}
		if bytes <= b.cfg.treeSize || b.size == 2 {
			return BinomialTree
		}
		return Chain
	case coll.KindReduce:
		if b.cfg.reduce != Auto {
			return b.cfg.reduce
		}
		if bytes <= b.cfg.treeSize {
			return BinomialTree
		}
		return Chain
	case coll.KindAllgather, coll.KindReduceScatter:
		return Ring
	case coll.KindGather, coll.KindScatter:
		return Direct
	case coll.KindAlltoall:
		return Pairwise
	case coll.KindBarrier:
		return Dissemination
	}
	return PointToPoint
}

func (b *Backend) run(req *core.Request, algo Algorithm) error {
	if algo == algoCopy {
		return b.local(req)
	}
	switch req.Kind {
	case coll.KindAllreduce:
		switch algo {
		case RecursiveDoubling:
			return b.allreduceRD(req.Send, req.Recv)
		case Rabenseifner:
			return b.allreduceRabenseifner(req.Send, req.Recv, req.Count)
		}
		return b.allreduceRing(req.Send, req.Recv, req.Count)
	case coll.KindReduce:
		if algo == Chain {
			return b.reduceChain(req.Send, req.Recv, req.Count, req.Root)
		}
		return b.reduceTree(req.Send, req.Recv, req.Root)
	case coll.KindBroadcast:
		if algo == Chain {
			return b.broadcastChain(bcastBuf(req), req.Root)
		}
		return b.broadcastTree(bcastBuf(req), req.Root)
	case coll.KindAllgather:
		return b.allgatherRing(req.Send, req.Recv, req.Count)
	case coll.KindReduceScatter:
		return b.reduceScatterRing(req.Send, req.Recv, req.Count)
	case coll.KindGather:
		return b.gather(req.Send, req.Recv, req.Root)
	case coll.KindScatter:
		return b.scatter(req.Send, req.Recv, req.Root)
	case coll.KindAlltoall:
		return b.alltoall(req.Send, req.Recv)
	case coll.KindBarrier:
		return b.barrier()
	case coll.KindSend:
		return b.send(b.peers[req.Peer], &b.cur, req.Send)
	case coll.KindRecv:
		return b.recv(b.peers[req.Peer], &b.cur, req.Recv)
	}
	return fmt.Errorf("tcp: %w collective %v", core.ErrUnsupported, req.Kind)
}

// local runs a collective of one rank.
func (b *Backend) local(req *core.Request) error {
	switch req.Kind {
	case coll.KindAllreduce, coll.KindReduce, coll.KindReduceScatter:
		copyIfDistinct(req.Recv, req.Send)
		return b.finish(req.Recv)
	case coll.KindAllgather, coll.KindGather, coll.KindScatter, coll.KindAlltoall:
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

// reduce sets dst = x op y with the running call's dtype and op.
func (b *Backend) reduce(dst, x, y []byte) error {
	k, err := b.kernel()
	if err != nil {
		return fmt.Errorf("tcp: %s: reducing: %w", b.opName(), err)
	}
	b.srcs[0], b.srcs[1] = x, y
	k.Reduce(nil, dst, b.srcs[:])
	b.srcs[0], b.srcs[1] = nil, nil
	return nil
}

// finish applies the op's final step (avg's divide) to a final result.
func (b *Backend) finish(buf []byte) error {
	k, err := b.kernel()
	if err != nil {
		return fmt.Errorf("tcp: %s: finishing: %w", b.opName(), err)
	}
	k.Finish(buf, b.size)
	return nil
}

// kernel is the running call's dtype x op kernel: Check's (which a caller
// such as the hierarchical backend may have replaced), or by id for a
// request that did not pass Check.
func (b *Backend) kernel() (*core.Kernel, error) {
	if b.kern != nil {
		return b.kern, nil
	}
	t := core.LookupType(b.cur.dtype)
	if t == nil || t.Kernel(b.cur.op) == nil {
		return nil, fmt.Errorf("%w: no kernel for %v %v", core.ErrUnsupported, b.cur.dtype, b.cur.op)
	}
	return t.Kernel(b.cur.op), nil
}

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
