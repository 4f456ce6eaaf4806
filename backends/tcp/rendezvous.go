package tcp

import (
	"fmt"
	"io"
	"os"
	"time"

	"github.com/gocoll/gocoll/core"
)

// Point-to-point messages larger than core.EagerSize are rendezvous: the
// send returns only once the receiver has begun the matching recv, which
// tells it so with an ack frame on its control connection. Below that a
// send returns once the kernel has taken the bytes. shm waits the same
// way (its eager messages fit its channel, a larger one's send returns
// once the receiver has taken it): a program whose ranks both send a
// large message before they receive waits, and times out naming both, on
// every backend alike, instead of working over tcp and not over shm.

// large reports whether the message whose first frame header is h is a
// rendezvous one.
func large(h *header) bool {
	return h.length > core.EagerSize || h.flags&flagMore != 0
}

// ackIfLarge tells p that this rank began receiving its message whose
// first frame header is h, if that message is a rendezvous one. Like every
// control write it is best effort: a peer that is gone fails this rank's
// call through its data connection.
func (b *Backend) ackIfLarge(p *peer, h *header) {
	if h.kind != core.KindSend || h.typ != frameData || !large(h) {
		return
	}
	var buf [hdrSize]byte
	(&header{typ: frameAck, kind: core.KindSend, seq: h.seq}).put(buf[:])
	p.ctlMu.Lock()
	_ = p.ctl.SetWriteDeadline(time.Now().Add(time.Second))
	_, _ = p.ctl.Write(buf[:])
	p.ctlMu.Unlock()
}

// gotAck records an ack from p (see ctlLoop).
func (p *peer) gotAck(seq uint64) {
	for {
		old := p.acked.Load()
		if seq <= old || p.acked.CompareAndSwap(old, seq) {
			break
		}
	}
	select {
	case p.ackNote <- struct{}{}:
	default:
	}
}

// awaitAck waits until p has begun receiving message seq, within the
// call's deadline, ending early when the backend fails or closes or p's
// control connection breaks.
func (b *Backend) awaitAck(p *peer, seq uint64) error {
	if p.acked.Load() >= seq {
		return nil
	}
	deadline := time.NewTimer(time.Until(b.dl))
	defer deadline.Stop()
	poll := time.NewTicker(20 * time.Millisecond) // a failure recorded elsewhere
	defer poll.Stop()
	for p.acked.Load() < seq {
		select {
		case <-p.ackNote:
		case <-poll.C:
			if err := b.check(); err != nil {
				return err
			}
			if f := b.failure.Load(); f != nil {
				return b.failureError(f, b.opName())
			}
		case <-p.ctlDone:
			if p.acked.Load() >= seq {
				return nil
			}
			return b.ioError(p, fmt.Errorf("waiting for rank %d to receive message %d: %w", p.rank, seq, io.EOF))
		case <-deadline.C:
			return b.ioError(p, os.ErrDeadlineExceeded)
		case <-b.quit:
			return core.ErrClosed
		}
	}
	return nil
}
