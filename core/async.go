package core

import (
	"context"
	"errors"
	"fmt"
	"slices"
	"sync"
	"sync/atomic"
	"time"
	"unsafe"
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
	// Start issues req (see Guard.Start).
	Start(ctx context.Context, req Request) (Handle, error)
	// StartBatch issues the sends and recvs of reqs as one call (see
	// Guard.StartBatch); it must not keep reqs.
	StartBatch(ctx context.Context, reqs []*Request) (Handle, error)
}

// Handle is a call issued by Start or StartBatch. Calls complete in the
// order they were issued; Wait returns a call's error and Done is closed
// when it completes. Handles are values, and cheap to copy.
//
// The call's buffers belong to it until it completes: the caller must not
// write a send buffer, nor read or write a recv buffer, before Wait
// returns (or Done is closed). In builds with the race detector a send
// buffer written while its call is in flight makes the call's Wait return
// an error wrapping ErrInvalid.
//
// Wait releases the handle, as MPI_Wait does a request: a later Wait on it
// returns nil at once and Done a closed channel, whatever the call
// returned, and Wait and Done must not be called from two goroutines at
// once. A handle that is never waited for costs nothing more than garbage.
// The zero Handle is a call that completed with nil.
type Handle struct {
	c   *call
	gen uint64
}

// call is the state of a started call. Released calls are reused (see
// Handle), so that a started call allocates nothing; gen tells a handle
// to a released call from one to its reuse.
type call struct {
	g      *Guard
	ctx    context.Context
	req    Request
	batch  []Request // a batch of sends and recvs, in the order they run
	multi  bool      // batch holds the call, not req
	own    bool      // the Guard's own call (asyncState.own)
	refuse bool      // the call failed Check: take this rank's part as a refusal
	sum    uint64    // checksum of the send buffers at Start (race builds)

	next *call // the next queued call

	gen   atomic.Uint64
	state atomic.Uint32 // callDone, callChan
	done  chan struct{} // made by the first Done or blocking Wait (under the queue's mu)
	err   error
}

// Call states: the call completed (err is set); someone made done.
const (
	callDone = 1 << iota
	callChan
)

// calls recycles released calls.
var calls = sync.Pool{New: func() any { return new(call) }}

// newCall takes a call for g from the pool.
func newCall(g *Guard, ctx context.Context) *call {
	c := calls.Get().(*call)
	c.g, c.ctx = g, ctx
	return c
}

// release makes c reusable: every handle to it is stale from now on. Only
// the one who saw it complete may release it. It keeps c.req's scalars,
// which the next Start overwrites; execCall has already dropped the
// references to the caller's memory (see drop).
func (c *call) release() {
	c.gen.Add(1)
	if c.own {
		c.ctx, c.sum, c.done, c.err = nil, 0, nil, nil
		if c.state.Load() != 0 {
			c.state.Store(0)
		}
		a := &c.g.async
		a.ownSt.Store(ownIdle) // last: the next Start may take it now
		return
	}
	if c.multi {
		clear(c.batch)
		c.batch, c.multi = c.batch[:0], false
	}
	c.g, c.ctx, c.refuse, c.sum = nil, nil, false, 0
	c.next, c.done, c.err = nil, nil, nil
	if c.state.Load() != 0 {
		c.state.Store(0)
	}
	calls.Put(c)
}

// discard releases a call that was never queued: unlike a run one, it
// still refers to the caller's buffers.
func (c *call) discard() {
	c.drop()
	c.release()
}

// drop clears c's references to the caller's memory, so that a released
// call, or a stale Handle, keeps none of it alive.
func (c *call) drop() {
	dropReq(&c.req)
	for i := range c.batch {
		dropReq(&c.batch[i])
	}
}

func dropReq(r *Request) {
	r.Send, r.Recv = nil, nil
	if r.SendCounts != nil || r.SendDispls != nil || r.RecvCounts != nil || r.RecvDispls != nil {
		r.SendCounts, r.SendDispls, r.RecvCounts, r.RecvDispls = nil, nil, nil, nil
	}
}

// closed is the Done channel of a handle that completed and was released.
var closed = func() chan struct{} { c := make(chan struct{}); close(c); return c }()

// live reports whether h still refers to its call.
func (h Handle) live() bool { return h.c != nil && h.c.gen.Load() == h.gen }

// Done returns a channel closed when the call completes. Asking for it
// also makes sure the progress goroutine runs the call now, however small.
func (h Handle) Done() <-chan struct{} {
	if !h.live() {
		return closed
	}
	d := h.c.doneChan()
	if !h.c.finished() {
		h.c.g.async.wake()
	}
	return d
}

func (c *call) finished() bool { return c.state.Load()&callDone != 0 }

// doneChan makes c's channel if no one has, closed if c completed. Of it
// and complete, whichever marks the state second closes the channel.
func (c *call) doneChan() chan struct{} {
	a := &c.g.async
	a.mu.Lock()
	defer a.mu.Unlock()
	if c.done == nil {
		c.done = make(chan struct{})
		if c.state.Or(callChan)&callDone != 0 {
			close(c.done)
		}
	}
	return c.done
}

// complete records err as c's result and wakes its waiters, if any: a call
// waited for inline never makes a channel. The runner must not touch c
// afterwards: its waiter may release it.
func (c *call) complete(err error) {
	c.err = err
	a := &c.g.async
	if c.state.Or(callDone)&callChan != 0 {
		a.mu.Lock()
		close(c.done)
		a.mu.Unlock()
	}
}

// Wait returns once the call has completed, with its error: nil, or what
// the blocking form of the call would have returned; then it releases the
// handle (see Handle). A call that has not started yet is run by the
// caller, after every call issued before it, so that waiting right after
// starting costs about what the blocking call does (unless ctx can end
// the wait early, when the progress goroutine runs it). When ctx ends
// first Wait returns an error wrapping ctx's and keeps the handle: the
// call is still in flight and still owns its buffers (cancel the context
// given to Start, or Abort the communicator, to end it).
func (h Handle) Wait(ctx context.Context) error {
	if !h.live() {
		return nil
	}
	c := h.c
	a := &c.g.async
	if c.own && (sameCtx(ctx, c.ctx) || inlineOK(ctx, c.ctx)) && a.ownSt.CompareAndSwap(ownIssued, ownWaiter) {
		err := c.g.execCall(c)
		c.release()
		a.handOn()
		return err
	}
	for {
		st := c.state.Load()
		if st&callDone != 0 {
			if st&callChan != 0 {
				<-c.done // the runner may still be closing it
			}
			err := c.err
			c.release()
			return err
		}
		// Run it here unless ctx could end the wait early: a call run
		// inline ends only when it does.
		if (sameCtx(ctx, c.ctx) || inlineOK(ctx, c.ctx)) && a.run.TryLock() {
			ran, err := a.drainTo(c)
			a.run.Unlock()
			a.handOn()
			if ran {
				c.release()
				return err
			}
			continue
		}
		done := c.doneChan()
		a.wake()
		select {
		case <-done:
		case <-ctx.Done():
			return fmt.Errorf("gocoll: waiting for %s: the call is still in flight and owns its buffers: %w", c.describe(), ctx.Err())
		}
	}
}

// sameCtx reports whether a and b are one interface value, word for word:
// the common Wait(ctx) after Start(ctx) then skips two Done calls. Unlike
// ==, it cannot panic on a context type that is not comparable.
func sameCtx(a, b context.Context) bool {
	x, y := (*[2]unsafe.Pointer)(unsafe.Pointer(&a)), (*[2]unsafe.Pointer)(unsafe.Pointer(&b))
	return x[0] == y[0] && x[1] == y[1]
}

// inlineOK reports whether a Wait with ctx may run a call started with
// start itself: only if ctx cannot end the wait before the call ends.
func inlineOK(ctx, start context.Context) bool {
	d := ctx.Done()
	return d == nil || d == start.Done()
}

func (c *call) describe() string {
	if c.multi {
		return fmt.Sprintf("a batch of %d sends and recvs", len(c.batch))
	}
	return c.req.Kind.String()
}

// asyncState is a Guard's queue of started calls. Calls run one at a
// time, in the order they were issued, by whoever holds run: the caller
// in Wait, the caller of a blocking call issued behind them, or the
// progress goroutine, which the first Start starts and Close ends. The
// one exception is the own call, issued only when nothing else is in
// flight: its Wait runs it without run, and holders of run leave the
// queue alone meanwhile (pop).
type asyncState struct {
	// pending counts calls issued and not completed. A blocking call
	// that finds it 0 goes straight to the backend: nothing can be
	// ahead of it. First, so that it shares a cache line with the
	// Guard's own state.
	pending atomic.Int64
	// own is the call a small Start uses when nothing else is in
	// flight, and ownSt its phase (own*). Being first in line, it may
	// be run by its Wait without the run lock, the queue's lock or the
	// pool: a call started and soon waited for, the common case, then
	// costs only a few atomic operations more than its blocking form.
	own        call
	ownSt      atomic.Uint32
	mu         sync.Mutex
	head, tail *call
	// issuing is held while a call is being issued, to catch two
	// goroutines issuing at once.
	issuing atomic.Bool
	run     sync.Mutex
	kick    chan struct{}
	quit    chan struct{}
	once    sync.Once
	wg      sync.WaitGroup
	// timer wakes the progress goroutine lazyKick after a small call
	// started, unless a timer is armed already.
	timer *time.Timer
	armed atomic.Bool
	// delay is the lazy wake-up's next delay, lazyKick to maxLazyKick
	// (0: lazyKick).
	delay atomic.Int64
	// wanted: a wake-up found a Wait running calls; the calls queued
	// behind its own are for the progress goroutine once it is done.
	wanted atomic.Bool
}

// Start issues req and returns at once: the call runs after every call
// issued before it on this communicator, without the caller, and its
// Handle completes when it does. Several calls may be in flight; they
// complete in order. req is checked (Check) here, on the caller's
// goroutine: a request that fails returns its error at once, no Handle,
// and the peers learn of it, in order, as from a blocking call. The
// buffers req names belong to the call until the Handle completes. A
// communicator that is closed or failed returns the error a blocking call
// would.
//
// A blocking call (Do) issued while started calls are in flight runs after
// them. Calls must be issued from one goroutine at a time, in the same
// order on every rank: two goroutines issuing at once fail with
// ErrConcurrentUse, as two blocking calls would.
func (g *Guard) Start(ctx context.Context, req Request) (Handle, error) {
	a := &g.async
	if a.pending.Load() == 0 && a.ownSt.Load() == ownIdle && reqBytes(&req) < kickBytes {
		if h, ok := g.startOwn(ctx, &req); ok {
			return h, nil
		}
	}
	c := newCall(g, ctx)
	c.req = req
	return g.issue(c, false)
}

// startOwn issues req as the own call, when nothing else is in flight
// (the caller checked): it is then first in line, so its Wait may run it
// at once, without the run lock or the queue (see pop). It returns false,
// having issued nothing, when req must take issue's path: a refusal, or
// the communicator closed or failed, or another goroutine issuing.
func (g *Guard) startOwn(ctx context.Context, req *Request) (Handle, bool) {
	a := &g.async
	if !a.issuing.CompareAndSwap(false, true) {
		return Handle{}, false
	}
	if g.closed.Load() || g.failed.Load() != nil || Check(req, g.rank, g.size) != nil {
		a.issuing.Store(false)
		return Handle{}, false
	}
	c := &a.own
	c.ctx, c.req = ctx, *req
	if raceEnabled {
		c.sum = c.sendSum()
	}
	h := Handle{c: c, gen: c.gen.Load()}
	a.pending.Add(1)
	a.ownSt.Store(ownIssued)
	a.later()
	a.issuing.Store(false)
	return h, true
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
func (g *Guard) StartBatch(ctx context.Context, reqs []*Request) (Handle, error) {
	c := newCall(g, ctx)
	c.multi = true
	for _, r := range reqs {
		if r == nil {
			c.batch = append(c.batch, Request{})
			continue
		}
		c.batch = append(c.batch, *r)
	}
	return g.issue(c, false)
}

// issue checks c and queues it (a refusal when the check fails), and
// returns its handle.
func (g *Guard) issue(c *call, nilReq bool) (Handle, error) {
	a := &g.async
	if !a.issuing.CompareAndSwap(false, true) {
		c.discard()
		g.Abort(ErrConcurrentUse)
		return Handle{}, ErrConcurrentUse
	}
	// Not deferred: the store is on the path of every started call.
	if g.closed.Load() {
		c.discard()
		a.issuing.Store(false)
		return Handle{}, ErrClosed
	}
	if f := g.failed.Load(); f != nil {
		c.discard()
		a.issuing.Store(false)
		return Handle{}, fmt.Errorf("gocoll: the communicator failed earlier and its ranks are out of step; build a new one: %w", *f)
	}
	var err error
	switch {
	case nilReq:
		err = Check(nil, g.rank, g.size)
	case c.multi:
		err = g.checkBatch(c)
	default:
		err = Check(&c.req, g.rank, g.size)
	}
	if err != nil {
		// The peers learn of it in order, as from a blocking call; a
		// batch's through each of its sends and recvs, refused one by
		// one in the order the batch would have run them. Nobody waits
		// for the refusal: it releases itself.
		c.refuse = true
		a.push(c)
		a.later()
		a.issuing.Store(false)
		return Handle{}, err
	}
	if raceEnabled {
		c.sum = c.sendSum()
	}
	h := Handle{c: c, gen: c.gen.Load()}
	big := c.bytes() >= kickBytes
	a.push(c) // from here on the runner owns c
	if big {
		a.wake()
	} else {
		a.later()
	}
	a.issuing.Store(false)
	return h, nil
}

// A started call of kickBytes or more wakes the progress goroutine at
// once; a smaller one only lazyKick later, if no Wait has run it by then.
// Waking a parked goroutine costs the caller a few microseconds (the
// runtime wakes a thread for it), more than a small shm collective takes,
// while a Wait right after Start runs the call itself; a large call is
// worth waking for, so that it overlaps the caller's work from the start.
// The timer fires at most once per lazyKick, however many calls start.
// A wake-up that finds nothing to run (the callers waited for their
// calls in time) doubles the next one's delay, up to maxLazyKick: each
// costs the process a thread woken up, which on a node whose CPUs are all
// busy spinning ranks takes a CPU from a rank for far longer than the
// calls it watches over; one that runs calls sets it back to lazyKick.
const (
	kickBytes   = 32 << 10
	lazyKick    = 200 * time.Microsecond
	maxLazyKick = 8 * lazyKick
)

// bytes is the size of c's buffers.
func (c *call) bytes() int {
	if !c.multi {
		return reqBytes(&c.req)
	}
	n := 0
	for i := range c.batch {
		n += reqBytes(&c.batch[i])
	}
	return n
}

// reqBytes is the size of r's buffers, which decides how soon a started
// call wakes the progress goroutine (kickBytes).
func reqBytes(r *Request) int { return len(r.Send) + len(r.Recv) }

// checkBatch checks every request of c's batch and puts them in the order
// they run (see StartBatch).
func (g *Guard) checkBatch(c *call) error {
	var first error
	for i := range c.batch {
		r := &c.batch[i]
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
	slices.SortStableFunc(c.batch, func(x, y Request) int {
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

// push queues c behind every call issued before it.
func (a *asyncState) push(c *call) {
	a.pending.Add(1)
	a.mu.Lock()
	if a.tail == nil {
		a.head = c
	} else {
		a.tail.next = c
	}
	a.tail = c
	a.mu.Unlock()
}

// pop takes the oldest call not run yet, or nil. The caller holds run.
// The own call, when issued, is older than every queued one (startOwn):
// pop takes it first; while its Wait runs it, pop takes nothing, and the
// Wait hands the queue on (handOn) when it is done.
func (a *asyncState) pop() *call {
	for !a.ownAside() {
		switch a.ownSt.Load() {
		case ownIssued:
			if a.ownSt.CompareAndSwap(ownIssued, ownRunner) {
				return &a.own
			}
		case ownWaiter:
			a.wanted.Store(true)
			if a.ownSt.Load() == ownWaiter {
				// Its Wait sees wanted once done: it stores the
				// phase after this load.
				return nil
			}
		}
	}
	a.mu.Lock()
	c := a.head
	if c != nil && !a.ownAside() {
		// The own call was issued before c, after the check above
		// (only an empty queue lets it be): go round again.
		a.mu.Unlock()
		return a.pop()
	}
	if c != nil {
		a.head = c.next
		if a.head == nil {
			a.tail = nil
		}
		c.next = nil
	}
	a.mu.Unlock()
	return c
}

// Phases of the own call. ownRunner: someone holding run took it, and it
// completes as a queued call does, through complete.
const (
	ownIdle uint32 = iota
	ownIssued
	ownWaiter // its Wait runs it, without the run lock
	ownRunner
)

// ownAside reports whether the own call is out of the queue's way: not
// issued, or taken already by a holder of run.
func (a *asyncState) ownAside() bool {
	st := a.ownSt.Load()
	return st == ownIdle || st == ownRunner
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
	a.timer = time.AfterFunc(time.Hour, a.fire)
	a.timer.Stop()
	a.wg.Add(1)
	go a.progress()
}

// later wakes the progress goroutine lazyKick from now, if there is still
// work then.
func (a *asyncState) later() {
	a.once.Do(a.startProgress)
	if !a.armed.Load() && a.armed.CompareAndSwap(false, true) {
		d := time.Duration(a.delay.Load())
		if d == 0 {
			d = lazyKick
		}
		a.timer.Reset(d)
	}
}

// fire runs on the timer's goroutine: it runs what is queued itself, or,
// if someone else is running calls, leaves the calls behind theirs to the
// progress goroutine once they are done (see handOn). Waking the progress
// goroutine now instead would make it block on run and take the lock over
// from a caller about to run its next call itself, which hands the calls
// back and forth between goroutines and their threads.
func (a *asyncState) fire() {
	a.armed.Store(false)
	if a.pending.Load() == 0 {
		a.backOff()
		return
	}
	if !a.run.TryLock() {
		a.wanted.Store(true)
		if !a.run.TryLock() {
			// The holder sees wanted once it unlocks: it stored
			// before this TryLock failed.
			a.backOff()
			return
		}
		a.wanted.Store(false)
	}
	if a.drain() {
		a.delay.Store(int64(lazyKick))
	} else {
		a.backOff()
	}
	a.run.Unlock()
}

// backOff doubles the next lazy wake-up's delay, up to maxLazyKick.
func (a *asyncState) backOff() {
	d := time.Duration(a.delay.Load())
	if d == 0 {
		d = lazyKick
	}
	a.delay.Store(int64(min(2*d, maxLazyKick)))
}

// handOn runs after a Wait unlocks run: if a wake-up found it running
// calls meanwhile, the calls still queued go to the progress goroutine.
func (a *asyncState) handOn() {
	if a.wanted.Load() && a.wanted.CompareAndSwap(true, false) && a.pending.Load() != 0 {
		a.wake()
	}
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
		a.drain()
		a.run.Unlock()
	}
}

// drain runs queued calls in order until none is left, and reports
// whether it ran any. The caller holds run.
func (a *asyncState) drain() (ran bool) {
	for c := a.pop(); c != nil; c = a.pop() {
		c.g.runCall(c)
		ran = true
	}
	return ran
}

// drainTo runs queued calls in order up to c, for c's Wait. It runs c
// itself without marking it complete, when nobody has made its channel
// (only its waiter could have), and then returns its error and true: no
// other goroutine looks at c. The caller holds run.
func (a *asyncState) drainTo(c *call) (ran bool, err error) {
	for !c.finished() {
		p := a.pop()
		if p == nil {
			break
		}
		if p == c && c.state.Load() == 0 {
			return true, c.g.execCall(c)
		}
		p.g.runCall(p)
	}
	return false, nil
}

// runCall runs a queued call on the backend and completes it.
func (g *Guard) runCall(c *call) {
	err := g.execCall(c)
	if c.refuse {
		c.release() // nobody holds a handle to it
		return
	}
	c.complete(err)
}

// execCall runs a queued call on the backend and returns its error,
// without completing it.
func (g *Guard) execCall(c *call) error {
	var err error
	if c.multi {
		for i := range c.batch {
			r := &c.batch[i]
			if c.refuse && r.Kind != KindSend && r.Kind != KindRecv {
				continue // no peer expects anything of it
			}
			e := g.exec(c.ctx, r, c.refuse)
			if err == nil && !c.refuse {
				err = e
			}
		}
	} else {
		err = g.exec(c.ctx, &c.req, c.refuse)
	}
	if raceEnabled && err == nil && !c.refuse && c.sum != c.sendSum() {
		err = fmt.Errorf("gocoll: %s: a send buffer changed while the call was in flight; it belongs to the call until Wait returns: %w", c.describe(), ErrInvalid)
	}
	c.drop()
	g.async.pending.Add(-1)
	return err
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
	c := newCall(g, ctx)
	c.req = Request{} // refused as an unknown call, for a nil req
	if req != nil {
		c.req = *req
	}
	h, err := g.issue(c, req == nil)
	if err != nil {
		return err
	}
	return h.Wait(context.Background())
}

// closeAsync fails the calls still queued (the Guard is closed, so each
// returns ErrClosed at once) and ends the progress goroutine.
func (a *asyncState) closeAsync() {
	a.run.Lock()
	a.drain()
	a.run.Unlock()
	a.once.Do(func() {}) // no progress goroutine after Close
	if a.quit != nil {
		a.timer.Stop()
		close(a.quit)
		a.wg.Wait()
	}
}

// sendSum is a checksum of the send buffers of c (FNV-1a, 64 bits).
func (c *call) sendSum() uint64 {
	s := uint64(14695981039346656037)
	add := func(b []byte) {
		for _, x := range b {
			s ^= uint64(x)
			s *= 1099511628211
		}
	}
	if c.multi {
		for i := range c.batch {
			add(c.batch[i].Send)
		}
		return s
	}
	if !same(c.req.Send, c.req.Recv) { // in place, the call writes it
		add(c.req.Send)
	}
	return s
}

// EagerSize is the largest send that every backend completes without
// waiting for its recv (with the sends before it to that peer received):
// so Send then Recv on both ranks of a pair works up to it. A larger send
// waits until the receiver has begun the matching recv, on every backend
// alike; exchange large messages with SendRecv or a batch.
const EagerSize = 64 << 10
