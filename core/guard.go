package core

import (
	"context"
	"errors"
	"fmt"
	"sync/atomic"
	"time"
)

// DefaultTimeout bounds every wait of a communicator whose timeout is 0.
const DefaultTimeout = 5 * time.Minute

// Timeout is the bound a communicator configured with d applies to each
// wait: d itself, or DefaultTimeout for 0. There is no unbounded wait: a
// rank that never arrives must end in an error naming it.
func Timeout(d time.Duration) time.Duration {
	if d <= 0 {
		return DefaultTimeout
	}
	return d
}

// Deadline is when a wait that starts now ends: after timeout (as Timeout
// reads it), or at ctx's deadline if that is earlier.
func Deadline(ctx context.Context, timeout time.Duration) time.Time {
	dl := time.Now().Add(Timeout(timeout))
	if d, ok := ctx.Deadline(); ok && d.Before(dl) {
		return d
	}
	return dl
}

// Guard is the communicator boundary every call to a Backend passes. It
// owns what is the same for every transport:
//   - Check, once per call; a request that fails it is Refused, so the
//     peers fail at once naming this rank rather than wait for it;
//   - one call at a time: a call that starts while another is in flight
//     fails with ErrConcurrentUse, and so does the one in flight, through
//     the backend's Abort and, should the backend finish it anyway, here
//     (see ErrConcurrentUse for why);
//   - calls started without blocking (Start, StartBatch: async.go), which
//     run one at a time in the order issued, blocking calls issued behind
//     them included;
//   - the closed and failed states: after an error that leaves the ranks
//     out of step (a dead peer, a timeout, a cancelled call), every later
//     call fails at once with an error wrapping the first.
//
// A rejected argument and a *MismatchError do not fail the Guard: every
// rank reports them at the same call, before any data moves, and the next
// call still lines up.
type Guard struct {
	b          Backend
	rank, size int

	busy   atomic.Bool
	closed atomic.Bool
	failed atomic.Pointer[error]

	async asyncState // calls issued by Start, not yet completed (async.go)
}

var _ Comm = (*Guard)(nil)

// NewGuard puts b behind the communicator boundary.
func NewGuard(b Backend) *Guard {
	g := &Guard{b: b, rank: b.Rank(), size: b.Size()}
	g.async.own.g, g.async.own.own = g, true
	return g
}

// Rank is this process's rank in [0, Size).
func (g *Guard) Rank() int { return g.rank }

// Size is the number of ranks.
func (g *Guard) Size() int { return g.size }

// Backend returns the backend g drives.
func (g *Guard) Backend() Backend { return g.b }

// Do checks req and runs it on the backend; see Guard.
func (g *Guard) Do(ctx context.Context, req *Request) error {
	if g.async.pending.Load() != 0 {
		return g.doQueued(ctx, req) // behind the started calls
	}
	if !g.busy.CompareAndSwap(false, true) {
		g.fail(ErrConcurrentUse)
		g.b.Abort(ErrConcurrentUse)
		return ErrConcurrentUse
	}
	defer g.busy.Store(false)
	if g.closed.Load() {
		return ErrClosed
	}
	if f := g.failed.Load(); f != nil {
		return fmt.Errorf("gocoll: the communicator failed earlier and its ranks are out of step; build a new one: %w", *f)
	}
	if err := Check(req, g.rank, g.size); err != nil {
		r := req
		if r == nil {
			r = &Request{} // refused as an unknown call, so the peers still hear of it
		}
		if rerr := g.b.Refuse(ctx, r); rerr != nil && g.fatal(rerr) {
			g.fail(rerr)
		}
		return err
	}
	err := g.b.Run(ctx, req)
	if err != nil && g.fatal(err) {
		g.fail(err)
	}
	if err == nil {
		// A call that overlapped another never returns nil, even when
		// the backend finished it before the abort reached it: the two
		// callers' calls may have been paired with other goroutines'
		// calls on the peers.
		if f := g.failed.Load(); f != nil && errors.Is(*f, ErrConcurrentUse) {
			return fmt.Errorf("gocoll: %v: %w", req.Kind, ErrConcurrentUse)
		}
	}
	return err
}

// fatal reports whether err leaves the ranks out of step: anything but a
// mismatch, which every rank reports at the same call before data moves.
func (g *Guard) fatal(err error) bool {
	var me *MismatchError
	return !errors.As(err, &me)
}

func (g *Guard) fail(err error) {
	// A copy: taking err's own address would move it to the heap, an
	// allocation on every call, failed or not.
	e := err
	g.failed.CompareAndSwap(nil, &e)
}

// Err returns the error that failed the communicator, or nil.
func (g *Guard) Err() error {
	if f := g.failed.Load(); f != nil {
		return *f
	}
	return nil
}

// Abort fails the calls in flight (started ones included) and every later
// one with an error wrapping cause (ErrAborted if nil), on this rank and,
// as far as the backend can tell them, on its peers. It may be called from
// any goroutine.
func (g *Guard) Abort(cause error) {
	if cause == nil {
		cause = ErrAborted
	}
	g.fail(cause)
	g.b.Abort(cause)
	if g.async.pending.Load() != 0 {
		g.async.wake() // fail the queued calls now, not when waited for
	}
}

// Close closes the backend; later calls return ErrClosed. It does not
// wait for peers and is idempotent.
func (g *Guard) Close() error {
	if !g.closed.CompareAndSwap(false, true) {
		return nil
	}
	err := g.b.Close()
	g.async.closeAsync()
	return err
}
