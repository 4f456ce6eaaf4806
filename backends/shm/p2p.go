package shm

import (
	"context"
	"fmt"
	"strconv"
	"sync/atomic"

	"github.com/gocoll/gocoll/core"
)

// Send and recv go through a channel per ordered pair of ranks: two
// buffers, a sender line that counts published chunks (with a header per
// buffer: message number, dtype, count) and a receiver line that counts
// consumed ones. The sender may run two chunks ahead; it returns once the
// receiver has taken the last chunk, so that a receiver's mismatch error
// reaches the sender too. A mismatch breaks the channel for good (both
// sides stop using it) because the two sides no longer agree on what
// follows.

// brokenAck is what a receiver publishes as its consumed count when it
// refuses a message: more than any chunk the sender can be waiting for.
const brokenAck = 1 << 62

func (b *Backend) p2pCheck(req *core.Request, buf []byte, name string) (int, error) {
	if req.Peer < 0 || req.Peer >= b.size || req.Peer == b.rank {
		return 0, fmt.Errorf("shm: %v: peer %d is not another rank of this group of %d", req.Kind, req.Peer, b.size)
	}
	es := b.dtSize(req.DType)
	if es == 0 {
		return 0, fmt.Errorf("shm: %v: dtype %v is not registered (import generated/coll): %w", req.Kind, req.DType, core.ErrUnsupported)
	}
	if req.Count < 0 || len(buf) < req.Count*es {
		return 0, fmt.Errorf("shm: %v: %s buffer holds %d bytes, count %d of %v needs %d", req.Kind, name, len(buf), req.Count, req.DType, req.Count*es)
	}
	if err := b.bad[req.Peer]; err != nil {
		return 0, fmt.Errorf("shm: the channel with rank %d broke earlier: %w", req.Peer, err)
	}
	return es, nil
}

func p2pMismatch(me, peer int, msg, dt, count uint64, theirMsg, theirDT, theirCount uint64) error {
	e := &core.MismatchError{Seq: msg, Rank: me, Peer: peer}
	switch {
	case dt != theirDT:
		e.Field, e.Mine, e.Theirs = "dtype", core.DType(dt).String(), core.DType(theirDT).String()
	case count != theirCount:
		e.Field, e.Mine, e.Theirs = "count", strconv.FormatUint(count, 10), strconv.FormatUint(theirCount, 10)
	default:
		e.Field, e.Mine, e.Theirs = "message", "#"+strconv.FormatUint(msg, 10), "#"+strconv.FormatUint(theirMsg, 10)
	}
	return e
}

func (b *Backend) send(ctx context.Context, req *core.Request) error {
	es, err := b.p2pCheck(req, req.Send, "send")
	if err != nil {
		return err
	}
	me, peer := b.rank, req.Peer
	o := &op{ctx: ctx, kind: req.Kind, p2p: peer}
	mine, theirs := b.chanS(me, peer), b.chanR(me, peer)
	b.msgs[peer]++
	msg := b.msgs[peer]
	buf := req.Send[:req.Count*es]
	P := b.lay.p2pSize
	refused := func() error {
		if atomic.LoadUint32(&theirs.flag) == 0 {
			return nil
		}
		h := theirs.hdr[0]
		err := p2pMismatch(me, peer, msg, uint64(req.DType), uint64(req.Count), h[0], h[1], h[2])
		b.bad[peer] = err
		return err
	}
	for i := 0; i < chunks(len(buf), P); i++ {
		c := b.sent[peer] + 1
		if c > 2 {
			if err := b.waitFor(o, peer, &theirs.seq, &theirs.sleepers, c-2); err != nil {
				return err
			}
		}
		if err := refused(); err != nil {
			return err
		}
		h := int(c & 1)
		lo := i * P
		hi := min(lo+P, len(buf))
		copy(b.p2pBuf(me, peer, h), buf[lo:hi])
		mine.hdr[h] = [3]uint64{msg, uint64(req.DType), uint64(req.Count)}
		publish(&mine.seq, &mine.sleepers, c)
		b.sent[peer] = c
	}
	if err := b.waitFor(o, peer, &theirs.seq, &theirs.sleepers, b.sent[peer]); err != nil {
		return err
	}
	return refused()
}

func (b *Backend) recv(ctx context.Context, req *core.Request) error {
	es, err := b.p2pCheck(req, req.Recv, "recv")
	if err != nil {
		return err
	}
	me, peer := b.rank, req.Peer
	o := &op{ctx: ctx, kind: req.Kind, p2p: peer}
	theirs, mine := b.chanS(peer, me), b.chanR(peer, me)
	b.rmsgs[peer]++
	msg := b.rmsgs[peer]
	want := [3]uint64{msg, uint64(req.DType), uint64(req.Count)}
	buf := req.Recv[:req.Count*es]
	P := b.lay.p2pSize
	for i := 0; i < chunks(len(buf), P); i++ {
		c := b.recvd[peer] + 1
		if err := b.waitFor(o, peer, &theirs.seq, &theirs.sleepers, c); err != nil {
			return err
		}
		h := int(c & 1)
		if got := theirs.hdr[h]; got != want {
			err := p2pMismatch(me, peer, msg, want[1], want[2], got[0], got[1], got[2])
			mine.hdr[0] = want
			atomic.StoreUint32(&mine.flag, 1)
			publish(&mine.seq, &mine.sleepers, brokenAck)
			b.bad[peer] = err
			return err
		}
		lo := i * P
		hi := min(lo+P, len(buf))
		copy(buf[lo:hi], b.p2pBuf(peer, me, h)[:hi-lo])
		publish(&mine.seq, &mine.sleepers, c)
		b.recvd[peer] = c
	}
	return nil
}
