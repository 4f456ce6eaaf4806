package core

import (
	"context"
	"errors"
	"fmt"
	"slices"
	"sync"
	"sync/atomic"
)

// ErrAborted is the cause of the failure Guard.Abort records when it is
// given none: the communicator was aborted on this rank, and every call in
// flight or started later fails with an error wrapping it.
var ErrAborted = errors.New("gocoll: the communicator was aborted")

// Starter is a communicator that runs collectives without blocking the
// caller: Start issues a call and returns at once with a Handle that
// completes when the call does.
type Starter interface {
	Comm
	// Start issues req (see Guard.Start); it must not keep req.
	Start(ctx context.Context, req *Request) (*Handle, error)
	// StartBatch issues the sends and recvs of reqs as one call (see
	// Guard.StartBatch); it must not keep reqs.
	StartBatch(ctx context.Context, reqs []*Request) (*Handle, error)
}

// Handle is a call issued by Start or StartBatch. It completes, in the
// order the calls were issued, when the call does; Wait returns the
// call's error and Done is closed then.
//
// The call's buffers belong to it until it completes: the caller must not
// write a send buffer, nor read or write a recv buffer, before Wait
// returns nil (or Done is closed). In builds with the race detector a send
// buffer written while its call is in flight makes the call's Wait return
// an error wrapping ErrInvalid.
type Handle struct {
	g      *Guard
	ctx    context.Context
	req    Request
	batch  []Request // a batch of sends and recvs, in the order they run; req unused
	refuse bool      // req failed Check: take this rank's part as a refusal
	sum    uint64    // checksum of the send buffers at Start (race builds)

	next *Handle // the next queued call

	done chan struct{}
	err  error
}

// Done is closed when the call completes.
func (h *Handle) Done() <-chan struct{} {
	h.g.async.wake()
	return h.done
}

// Wait returns once the call has completed, with its error: nil, or what
// the blocking form of the call would have returned. A call that has not
// started yet is run by the caller, after every call issued before it, so
// that waiting right after starting costs about what the blocking call
// does (unless ctx can be cancelled, when the progress goroutine runs
// it). When ctx ends first Wait returns an error wrapping ctx's: the call
// is still in flight and still owns its buffers (cancel the context given
// to Start, or Abort the communicator, to end it).
func (h *Handle) Wait(ctx context.Context) error {
	a := &h.g.async
	for {
		select {
		case <-h.done:
			return h.err
		default:
		}
		// Run it here unless ctx could end the wait early: a call run
		// inline ends only when it does.
		if (ctx.Done() == nil || ctx == h.ctx) && a.run.TryLock() {
			a.drain(h)
			a.run.Unlock()
			continue
		}
		a.wake()
		select {
		case <-h.done:
			return h.err
		case <-ctx.Done():
			return fmt.Errorf("gocoll: waiting for %s: the call is still in flight and owns its buffers: %w", h.describe(), ctx.Err())
		}
	}
}

func (h *Handle) describe() string {
	if h.batch != nil {
		return fmt.Sprintf("a batch of %d sends and recvs", len(h.batch))
	}
	return h.req.Kind.String()
}

// asyncState is a Guard's queue of started calls. Calls run one at a
// time, in the order they were issued, by whoever holds run: the caller
// in Wait, the caller of a blocking call issued behind them, or the
// progress goroutine, which the first Start starts and Close ends.
type asyncState struct {
	mu         sync.Mutex
	head, tail *Handle
	// pending counts calls issued and not completed. A blocking call
	// that finds it 0 goes straight to the backend: nothing can be
	// ahead of it.
	pending atomic.Int64
	// issuing is held while a call is being issued, to catch two
	// goroutines issuing at once.
	issuing atomic.Bool
	run     sync.Mutex
	kick    chan struct{}
	quit    chan struct{}
	once    sync.Once
	wg      sync.WaitGroup
}

// Start issues req and returns at once: the call runs after every call
// issued before it on this communicator, without the caller, and its
// Handle completes when it does. Several calls may be in flight; they
// complete in order. req is checked (Check) here, on the caller's
// goroutine: a request that fails returns its error at once, no Handle,
// and the peers learn of it, in order, as from a blocking call. Start
// copies req; the buffers it names belong to the call until the Handle
// completes. A communicator that is closed or failed returns the error a
// blocking call would.
//
// A blocking call (Do) issued while started calls are in flight runs after
// them. Calls must be issued from one goroutine at a time, in the same
// order on every rank: two goroutines issuing at once fail with
// ErrConcurrentUse, as two blocking calls would.
func (g *Guard) Start(ctx context.Context, req *Request) (*Handle, error) {
	h := &Handle{g: g, ctx: ctx}
	if req != nil {
		h.req = *req
	}
	if err := g.issue(h, req == nil); err != nil {
		return nil, err
	}
	return h, nil
}

// StartBatch issues a batch of sends and recvs (every request's Kind is
// KindSend or KindRecv) as one call and returns its Handle. The batch
// completes when all of them have; its error is the first of theirs.
//
// A batch does not deadlock whatever it holds, provided every rank it
// names batches its side too (or runs it in the same order): the batch
// runs its requests peer by peer in increasing rank order, with each peer
// the lower rank's sends before its recvs and the higher rank's recvs
// before its sends, and in the order given within a direction. Every rank
// thus meets its peers in one order that all ranks agree on.
//
// Every request is checked at Start; one that fails makes StartBatch
// return its error and refuses the whole batch, so that the peers learn
// of it.
func (g *Guard) StartBatch(ctx context.Context, reqs []*Request) (*Handle, error) {
	h := &Handle{g: g, ctx: ctx, batch: make([]Request, 0, len(reqs))}
	for _, r := range reqs {
		if r == nil {
			h.batch = append(h.batch, Request{})
			continue
		}
		h.batch = append(h.batch, *r)
	}
	if err := g.issue(h, false); err != nil {
		return nil, err
	}
	return h, nil
}

// issue checks h's call and queues it (a refusal when the check fails).
func (g *Guard) issue(h *Handle, nilReq bool) error {
	a := &g.async
	if !a.issuing.CompareAndSwap(false, true) {
		g.Abort(ErrConcurrentUse)
		return ErrConcurrentUse
	}
	defer a.issuing.Store(false)
	if g.closed.Load() {
		return ErrClosed
	}
	if f := g.failed.Load(); f != nil {
		return fmt.Errorf("gocoll: the communicator failed earlier and its ranks are out of step; build a new one: %w", *f)
	}
	var err error
	switch {
	case nilReq:
		err = Check(nil, g.rank, g.size)
	case h.batch != nil:
		err = g.checkBatch(h)
	default:
		err = Check(&h.req, g.rank, g.size)
	}
	if err != nil {
		// The peers learn of it in order, as from a blocking call; a
		// batch's through each of its sends and recvs, refused one by
		// one in the order the batch would have run them.
		h.refuse = true
		h.done = make(chan struct{})
		a.push(h)
		a.wake()
		return err
	}
	if raceEnabled {
		h.sum = h.sendSum()
	}
	h.done = make(chan struct{})
	a.push(h)
	a.wake()
	return nil
}

// checkBatch checks every request of h's batch and puts them in the order
// they run (see StartBatch).
func (g *Guard) checkBatch(h *Handle) error {
	var first error
	for i := range h.batch {
		r := &h.batch[i]
		if r.Kind != KindSend && r.Kind != KindRecv {
			if first == nil {
				first = fmt.Errorf("gocoll: batch element %d is a %v: %w: a batch holds sends and recvs only", i, r.Kind, ErrInvalid)
			}
			continue
		}
		if err := Check(r, g.rank, g.size); err != nil && first == nil {
			first = fmt.Errorf("gocoll: batch element %d: %w", i, err)
		}
	}
	me := g.rank
	slices.SortStableFunc(h.batch, func(x, y Request) int {
		if x.Peer != y.Peer {
			return x.Peer - y.Peer
		}
		// With a higher peer this rank is the lower one: sends first.
		rx, ry := x.Kind == KindSend, y.Kind == KindSend
		if rx == ry {
			return 0
		}
		if rx == (x.Peer > me) {
			return -1
		}
		return 1
	})
	return first
}

// push queues h behind every call issued before it.
func (a *asyncState) push(h *Handle) {
	a.pending.Add(1)
	a.mu.Lock()
	if a.tail == nil {
		a.head = h
	} else {
		a.tail.next = h
	}
	a.tail = h
	a.mu.Unlock()
}

// pop takes the oldest queued call, or nil.
func (a *asyncState) pop() *Handle {
	a.mu.Lock()
	h := a.head
	if h != nil {
		a.head = h.next
		if a.head == nil {
			a.tail = nil
		}
		h.next = nil
	}
	a.mu.Unlock()
	return h
}

// wake makes the progress goroutine run the queued calls, starting it the
// first time.
func (a *asyncState) wake() {
	a.once.Do(a.startProgress)
	select {
	case a.kick <- struct{}{}:
	default:
	}
}

func (a *asyncState) startProgress() {
	a.kick = make(chan struct{}, 1)
	a.quit = make(chan struct{})
	a.wg.Add(1)
	go a.progress()
}

// progress runs queued calls whenever it is woken, until the Guard closes.
func (a *asyncState) progress() {
	defer a.wg.Done()
	for {
		select {
		case <-a.kick:
		case <-a.quit:
			return
		}
		a.run.Lock()
		a.drain(nil)
		a.run.Unlock()
	}
}

// drain runs queued calls in order until until has completed (nil: until
// none is left). The caller holds run.
func (a *asyncState) drain(until *Handle) {
	for {
		if until != nil {
			select {
			case <-until.done:
				return
			default:
			}
		}
		h := a.pop()
		if h == nil {
			return
		}
		h.g.runHandle(h)
	}
}

// runHandle runs a queued call on the backend and completes its Handle.
func (g *Guard) runHandle(h *Handle) {
	var err error
	if h.batch != nil {
		for i := range h.batch {
			r := &h.batch[i]
			if h.refuse && r.Kind != KindSend && r.Kind != KindRecv {
				continue // no peer expects anything of it
			}
			e := g.exec(h.ctx, r, h.refuse)
			if err == nil && !h.refuse {
				err = e
			}
		}
	} else {
		err = g.exec(h.ctx, &h.req, h.refuse)
	}
	if raceEnabled && err == nil && !h.refuse && h.sum != h.sendSum() {
		err = fmt.Errorf("gocoll: %s: a send buffer changed while the call was in flight; it belongs to the call until Wait returns: %w", h.describe(), ErrInvalid)
	}
	h.err = err
	// Keep no buffers alive from a Handle the caller holds on to.
	h.req.Send, h.req.Recv = nil, nil
	for i := range h.batch {
		h.batch[i].Send, h.batch[i].Recv = nil, nil
	}
	close(h.done)
	g.async.pending.Add(-1)
}

// exec runs one checked request on the backend, or refuses one that failed
// its check, with the same state rules as Do.
func (g *Guard) exec(ctx context.Context, req *Request, refuse bool) error {
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
	if refuse {
		if rerr := g.b.Refuse(ctx, req); rerr != nil && g.fatal(rerr) {
			g.fail(rerr)
		}
		return nil
	}
	err := g.b.Run(ctx, req)
	if err != nil && g.fatal(err) {
		g.fail(err)
	}
	return err
}

// doQueued runs a blocking call issued while started calls are in flight:
// behind them, as if started and waited for.
func (g *Guard) doQueued(ctx context.Context, req *Request) error {
	h := &Handle{g: g, ctx: ctx}
	if req != nil {
		h.req = *req
	}
	if err := g.issue(h, req == nil); err != nil {
		return err
	}
	return h.Wait(context.Background())
}

// closeAsync fails the calls still queued (the Guard is closed, so each
// returns ErrClosed at once) and ends the progress goroutine.
func (a *asyncState) closeAsync() {
	a.run.Lock()
	a.drain(nil)
	a.run.Unlock()
	a.once.Do(func() {}) // no progress goroutine after Close
	if a.quit != nil {
		close(a.quit)
		a.wg.Wait()
	}
}

// sendSum is a checksum of the send buffers of h's call (FNV-1a, 64 bits).
func (h *Handle) sendSum() uint64 {
	s := uint64(14695981039346656037)
	add := func(b []byte) {
		for _, c := range b {
			s ^= uint64(c)
			s *= 1099511628211
		}
	}
	if h.batch != nil {
		for i := range h.batch {
			add(h.batch[i].Send)
		}
		return s
	}
	if !same(h.req.Send, h.req.Recv) { // in place, the call writes it
		add(h.req.Send)
	}
	return s
}
