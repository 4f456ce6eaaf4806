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
// consumed ones. The sender may run two chunks ahead of the acks.
//
// A message of at most core.EagerSize bytes (two chunks at most: the
// buffers are at least half that) is eager: the sender publishes it and
// returns without waiting for the receiver, so that Send then Recv on both
// ranks of a pair works. Only a send behind two chunks not yet taken
// waits, for the receiver to take the older ones. A larger message's
// sender returns once the receiver has taken its last chunk (tcp's waits
// for the receiver to begin the recv: both wait for the recv).
//
// The receiver compares the header of a message's first chunk with its own
// call before it copies a byte. When they differ (or either side refused
// its call) it fails its call with the mismatch, and the channel must
// stay in step:
//   - an eager message (its header says so, and how many chunks it has) is
//     all published already: the receiver takes its chunks without copying
//     them, and the sender, long returned, never hears of it (as on tcp);
//   - a larger one is broken: the receiver records its own header and a
//     resume count B beyond anything the sender can have published, and
//     acks B. The sender, which is waiting for an ack of that message, sees
//     B, reports the mismatch from the receiver's header, and moves its own
//     count to B; the receiver waits for that before it returns. Both then
//     go on counting from B, so the next message pairs as if the broken one
//     had gone through.

const (
	// p2pInvalid marks the header of a refused call (in its dtype word).
	p2pInvalid = 1 << 32
	// p2pEager marks the header of an eager message (in its dtype word),
	// whose chunk count is in the two bits from p2pChunksShift.
	p2pEager       = 1 << 33
	p2pChunksShift = 34
	p2pFlags       = p2pEager | 3<<p2pChunksShift
)

// eagerChunks is the number of chunks of the eager message whose header
// is h, or 0 if it is not eager.
func eagerChunks(h [3]uint64) uint64 {
	if h[1]&p2pEager == 0 {
		return 0
	}
	return h[1] >> p2pChunksShift & 3
}

// plain is h without the eager marks, as the receiver compares it.
func plain(h [3]uint64) [3]uint64 {
	h[1] &^= p2pFlags
	return h
}

// p2pHeader is what a side of a channel says about its call: message
// number, dtype (and p2pInvalid for a refused call), count.
func p2pHeader(msg uint64, req *core.Request, refused bool) [3]uint64 {
	dt := uint64(req.DType)
	if refused {
		dt |= p2pInvalid
	}
	return [3]uint64{msg, dt, uint64(req.Count)}
}

// p2pMismatch is the error of a message whose two sides disagree. Both
// sides compare the same two headers in the same order, so they name the
// same field.
func p2pMismatch(me, peer int, myKind, theirKind core.Kind, mine, theirs [3]uint64) error {
	mine, theirs = plain(mine), plain(theirs)
	e := &core.MismatchError{Seq: mine[0], Rank: me, Peer: peer}
	switch {
	case mine[1]&p2pInvalid != 0:
		e.Field, e.Mine, e.Peer, e.Theirs = "argument", "invalid", me, describeP2P(myKind, mine)
	case theirs[1]&p2pInvalid != 0:
		e.Field, e.Mine, e.Theirs = "argument", "valid", describeP2P(theirKind, theirs)
	case mine[0] != theirs[0]:
		e.Field, e.Mine, e.Theirs = "seq", "message #"+strconv.FormatUint(mine[0], 10), "message #"+strconv.FormatUint(theirs[0], 10)
	case mine[1] != theirs[1]:
		e.Field, e.Mine, e.Theirs = "dtype", core.DType(mine[1]).String(), core.DType(theirs[1]).String()
	default:
		e.Field, e.Mine, e.Theirs = "count", strconv.FormatInt(int64(mine[2]), 10), strconv.FormatInt(int64(theirs[2]), 10)
	}
	return e
}

// describeP2P says what a refused send or recv asked for; its fields may
// be anything.
func describeP2P(k core.Kind, h [3]uint64) string {
	return fmt.Sprintf("%v of %d %v (message #%d)", k, int64(h[2]), core.DType(uint8(h[1])), h[0])
}

// send sends req.Send to req.Peer, or, refused, tells the peer that this
// rank's send failed its check.
func (b *Backend) send(ctx context.Context, req *core.Request, refused bool) error {
	me, peer := b.rank, req.Peer
	o := op{ctx: ctx, kind: core.KindSend, p2p: peer}
	mine, theirs := b.chanS(me, peer), b.chanR(me, peer)
	b.msgs[peer]++
	hdr := p2pHeader(b.msgs[peer], req, refused)
	buf := req.Send
	if refused {
		buf = nil // a header alone
	}
	P := b.lay.p2pSize
	n := chunks(len(buf), P)
	eager := n <= 2 && len(buf) <= core.EagerSize
	if eager {
		hdr[1] |= p2pEager | uint64(n)<<p2pChunksShift
	}
	for i := 0; i < n; i++ {
		c := b.sent[peer] + 1
		if c > 2 {
			if err := b.waitFor(&o, peer, &theirs.seq, &theirs.sleepers, c-2); err != nil {
				return err
			}
		}
		if err := b.broken(peer, mine, theirs, hdr, false); err != nil {
			return err
		}
		h := int(c & 1)
		lo := i * P
		hi := min(lo+P, len(buf))
		copy(b.p2pBuf(me, peer, h), buf[lo:hi])
		mine.hdr[h] = hdr
		publish(&mine.seq, &mine.sleepers, c)
		b.sent[peer] = c
	}
	if eager {
		return nil // the receiver takes it when it comes
	}
	if err := b.waitFor(&o, peer, &theirs.seq, &theirs.sleepers, b.sent[peer]); err != nil {
		return err
	}
	return b.broken(peer, mine, theirs, hdr, true)
}

// broken takes up a break the receiver published since the last one this
// rank took up (see the top of this file): it resumes the channel's count
// from it and returns the mismatch. Without one it returns nil.
//
// After the message's last chunk (final), a break may already be the next
// message's: the receiver took every chunk and refused what follows. A
// break of this message resumes from at most the chunk it refused + 2,
// one of the next from the last chunk + 3; the next send takes it up.
func (b *Backend) broken(peer int, mine, theirs *chanLine, hdr [3]uint64, final bool) error {
	brk := atomic.LoadUint64(&theirs.brk)
	if brk == b.brkSeen[peer] || final && brk >= b.sent[peer]+3 {
		return nil
	}
	b.brkSeen[peer] = brk
	err := p2pMismatch(b.rank, peer, core.KindSend, core.KindRecv, hdr, theirs.hdr[0])
	b.sent[peer] = brk
	publish(&mine.seq, &mine.sleepers, brk)
	return err
}

// recv receives req.Recv from req.Peer, or, refused, breaks the message the
// peer sends (or will send) so that its send fails at once.
func (b *Backend) recv(ctx context.Context, req *core.Request, refused bool) error {
	me, peer := b.rank, req.Peer
	o := op{ctx: ctx, kind: core.KindRecv, p2p: peer}
	theirs, mine := b.chanS(peer, me), b.chanR(peer, me)
	b.rmsgs[peer]++
	want := p2pHeader(b.rmsgs[peer], req, refused)
	if refused {
		// An eager message is taken whole, a larger one broken: see
		// which the sender's first chunk says it is.
		c := b.recvd[peer] + 1
		if err := b.waitFor(&o, peer, &theirs.seq, &theirs.sleepers, c); err != nil {
			return err
		}
		if n := eagerChunks(theirs.hdr[c&1]); n > 0 {
			return b.takeEager(&o, peer, mine, theirs, n, nil)
		}
		return b.breakMessage(&o, peer, mine, theirs, want, nil)
	}
	buf := req.Recv
	P := b.lay.p2pSize
	for i := 0; i < chunks(len(buf), P); i++ {
		c := b.recvd[peer] + 1
		if err := b.waitFor(&o, peer, &theirs.seq, &theirs.sleepers, c); err != nil {
			return err
		}
		h := int(c & 1)
		if got := theirs.hdr[h]; plain(got) != want {
			mm := p2pMismatch(me, peer, core.KindRecv, core.KindSend, want, got)
			if n := eagerChunks(got); n > 0 && i == 0 {
				return b.takeEager(&o, peer, mine, theirs, n, mm)
			}
			return b.breakMessage(&o, peer, mine, theirs, want, mm)
		}
		lo := i * P
		hi := min(lo+P, len(buf))
		copy(buf[lo:hi], b.p2pBuf(peer, me, h)[:hi-lo])
		publish(&mine.seq, &mine.sleepers, c)
		b.recvd[peer] = c
	}
	return nil
}

// breakMessage refuses the message the peer is sending: it publishes this
// rank's header and a resume count beyond the sender's reach (the sender
// runs at most two chunks ahead of the acks), waits until the sender has
// taken it up, and returns mismatch.
func (b *Backend) breakMessage(o *op, peer int, mine, theirs *chanLine, want [3]uint64, mismatch error) error {
	brk := b.recvd[peer] + 3
	mine.hdr[0] = want
	atomic.StoreUint64(&mine.brk, brk)
	publish(&mine.seq, &mine.sleepers, brk)
	if err := b.waitFor(o, peer, &theirs.seq, &theirs.sleepers, brk); err != nil {
		return err
	}
	b.recvd[peer] = brk
	return mismatch
}

// takeEager takes the n chunks of an eager message this rank does not
// receive (see the top of this file): all are published or about to be,
// without the sender waiting for an ack. It acks them and returns mismatch.
func (b *Backend) takeEager(o *op, peer int, mine, theirs *chanLine, n uint64, mismatch error) error {
	last := b.recvd[peer] + n
	if err := b.waitFor(o, peer, &theirs.seq, &theirs.sleepers, last); err != nil {
		return err
	}
	publish(&mine.seq, &mine.sleepers, last)
	b.recvd[peer] = last
	return mismatch
}
