package core

import (
	"context"
	"errors"
	"fmt"
	"runtime"
	"slices"
	"sync"
	"testing"
	"time"
)

// logBackend records the calls it runs, by Count (a call's id in these
// tests), and blocks in Run while gate is held.
type logBackend struct {
	rank, size int
	mu         sync.Mutex
	log        []string
	gate       sync.RWMutex // Run holds it for reading
	aborted    chan struct{}
	abortOnce  sync.Once
}

func newLog(rank, size int) *logBackend {
	return &logBackend{rank: rank, size: size, aborted: make(chan struct{})}
}

func (l *logBackend) Rank() int    { return l.rank }
func (l *logBackend) Size() int    { return l.size }
func (l *logBackend) Name() string { return "log" }
func (l *logBackend) record(s string) {
	l.mu.Lock()
	l.log = append(l.log, s)
	l.mu.Unlock()
}
func (l *logBackend) entries() []string {
	l.mu.Lock()
	defer l.mu.Unlock()
	return slices.Clone(l.log)
}

// expect fails t unless l ran exactly want, in that order.
func (l *logBackend) expect(t *testing.T, want []string) {
	t.Helper()
	if got := l.entries(); !slices.Equal(got, want) {
		t.Fatalf("ran out of order:\n got %v\nwant %v", got, want)
	}
}

func (l *logBackend) Run(ctx context.Context, req *Request) error {
	l.gate.RLock()
	defer l.gate.RUnlock()
	select {
	case <-l.aborted:
		return fmt.Errorf("log: %w", ErrAborted)
	default:
	}
	if req.Kind == KindSend || req.Kind == KindRecv {
		l.record(fmt.Sprintf("%v%d#%d", req.Kind, req.Peer, req.Count))
	} else {
		l.record(fmt.Sprintf("run#%d", req.Count))
	}
	if req.Kind == KindAllreduce {
		copy(req.Recv, req.Send)
	}
	return nil
}
func (l *logBackend) Refuse(ctx context.Context, req *Request) error {
	l.record(fmt.Sprintf("refuse#%d", req.Count))
	return nil
}
func (l *logBackend) Abort(cause error) { l.abortOnce.Do(func() { close(l.aborted) }) }
func (l *logBackend) Close() error      { return nil }

func idReq(id int) *Request {
	return allreduce(make([]byte, 4*id), make([]byte, 4*id))
}

// TestStartInOrder: started calls, blocking calls behind them and a
// refused call run in the order issued, without the caller.
func TestStartInOrder(t *testing.T) {
	l := newLog(0, 2)
	g := NewGuard(l)
	defer g.Close()
	ctx := context.Background()
	l.gate.Lock() // nothing runs until every call is issued
	var hs []Handle
	for id := 1; id <= 5; id++ {
		h, err := g.Start(ctx, *idReq(id))
		if err != nil {
			t.Fatal(err)
		}
		hs = append(hs, h)
	}
	bad := idReq(6)
	bad.Recv = bad.Recv[:4]
	if _, err := g.Start(ctx, *bad); !errors.Is(err, ErrBufferLength) {
		t.Fatalf("a bad call started: %v", err)
	}
	h7, err := g.Start(ctx, *idReq(7))
	if err != nil {
		t.Fatal(err)
	}
	l.gate.Unlock()
	// Completes without Wait: the progress goroutine runs it.
	select {
	case <-h7.Done():
	case <-time.After(10 * time.Second):
		t.Fatal("started calls made no progress without Wait")
	}
	if err := g.Do(ctx, idReq(8)); err != nil {
		t.Fatal(err)
	}
	for _, h := range append(hs, h7) {
		if err := h.Wait(ctx); err != nil {
			t.Fatal(err)
		}
	}
	want := []string{"run#1", "run#2", "run#3", "run#4", "run#5", "refuse#6", "run#7", "run#8"}
	l.expect(t, want)
}

// TestBlockingBehindStarted: a blocking call issued while started ones are
// in flight waits for them.
func TestBlockingBehindStarted(t *testing.T) {
	l := newLog(0, 2)
	g := NewGuard(l)
	defer g.Close()
	ctx := context.Background()
	l.gate.Lock()
	h, err := g.Start(ctx, *idReq(1))
	if err != nil {
		t.Fatal(err)
	}
	done := make(chan error, 1)
	go func() { done <- g.Do(ctx, idReq(2)) }()
	time.Sleep(20 * time.Millisecond)
	l.gate.Unlock()
	if err := <-done; err != nil {
		t.Fatal(err)
	}
	select {
	case <-h.Done():
	default:
		t.Fatal("the blocking call returned before the started one ahead of it completed")
	}
	if got, want := l.entries(), []string{"run#1", "run#2"}; !slices.Equal(got, want) {
		t.Fatalf("ran %v, want %v", got, want)
	}
}

// TestAbortStarted: Abort fails every call in flight or queued, at once,
// and every later one.
func TestAbortStarted(t *testing.T) {
	l := newLog(0, 2)
	g := NewGuard(l)
	defer g.Close()
	ctx := context.Background()
	l.gate.Lock()
	var hs []Handle
	for id := 1; id <= 8; id++ {
		h, err := g.Start(ctx, *idReq(id))
		if err != nil {
			t.Fatal(err)
		}
		hs = append(hs, h)
	}
	g.Abort(nil)
	l.gate.Unlock()
	for i, h := range hs {
		wctx, cancel := context.WithTimeout(ctx, 5*time.Second)
		err := h.Wait(wctx)
		cancel()
		if !errors.Is(err, ErrAborted) {
			t.Fatalf("call %d: Wait = %v, want ErrAborted", i+1, err)
		}
	}
	if _, err := g.Start(ctx, *idReq(9)); !errors.Is(err, ErrAborted) {
		t.Fatalf("Start after Abort = %v, want ErrAborted", err)
	}
}

// TestCloseStarted: Close fails the queued calls and ends the progress
// goroutine.
func TestCloseStarted(t *testing.T) {
	before := runtime.NumGoroutine()
	l := newLog(0, 2)
	g := NewGuard(l)
	ctx := context.Background()
	l.gate.Lock()
	var hs []Handle
	for id := 1; id <= 4; id++ {
		h, err := g.Start(ctx, *idReq(id))
		if err != nil {
			t.Fatal(err)
		}
		hs = append(hs, h)
	}
	closed := make(chan error, 1)
	go func() { closed <- g.Close() }()
	time.Sleep(10 * time.Millisecond)
	l.gate.Unlock()
	if err := <-closed; err != nil {
		t.Fatal(err)
	}
	for _, h := range hs[1:3] {
		if err := h.Wait(ctx); err != nil && !errors.Is(err, ErrClosed) {
			t.Fatalf("Wait after Close = %v, want nil or ErrClosed", err)
		}
	}
	if err := hs[3].Wait(ctx); !errors.Is(err, ErrClosed) {
		t.Fatalf("the last queued call: %v, want ErrClosed", err)
	}
	if err := hs[3].Wait(ctx); err != nil {
		t.Fatalf("a second Wait on a released handle: %v, want nil", err)
	}
	select {
	case <-hs[3].Done():
	default:
		t.Fatal("a released handle's Done is not closed")
	}
	for i := 0; runtime.NumGoroutine() > before && i < 100; i++ {
		time.Sleep(10 * time.Millisecond)
	}
	if n := runtime.NumGoroutine(); n > before {
		t.Fatalf("%d goroutines after Close, %d before", n, before)
	}
}

// TestWaitContext: a Wait whose context ends returns, leaving the call in
// flight; a later Wait gets its result.
func TestWaitContext(t *testing.T) {
	l := newLog(0, 2)
	g := NewGuard(l)
	defer g.Close()
	l.gate.Lock()
	h, err := g.Start(context.Background(), *idReq(1))
	if err != nil {
		t.Fatal(err)
	}
	wctx, cancel := context.WithTimeout(context.Background(), 20*time.Millisecond)
	defer cancel()
	if err := h.Wait(wctx); !errors.Is(err, context.DeadlineExceeded) {
		t.Fatalf("Wait = %v, want DeadlineExceeded", err)
	}
	l.gate.Unlock()
	if err := h.Wait(context.Background()); err != nil {
		t.Fatal(err)
	}
}

// TestBatchOrder: a batch runs peer by peer in rank order, the lower rank
// of each pair sending first.
func TestBatchOrder(t *testing.T) {
	l := newLog(1, 3)
	g := NewGuard(l)
	defer g.Close()
	b := func(k Kind, peer, count int) *Request {
		r := &Request{Kind: k, DType: tInt32, Count: count, Peer: peer}
		if k == KindSend {
			r.Send = make([]byte, 4*count)
		} else {
			r.Recv = make([]byte, 4*count)
		}
		return r
	}
	h, err := g.StartBatch(context.Background(), []*Request{
		b(KindSend, 2, 1), b(KindRecv, 2, 2), b(KindSend, 0, 3), b(KindSend, 0, 4), b(KindRecv, 0, 5),
	})
	if err != nil {
		t.Fatal(err)
	}
	if err := h.Wait(context.Background()); err != nil {
		t.Fatal(err)
	}
	// Rank 1 is the higher of (0, 1): recvs first; the lower of (1, 2).
	want := []string{"recv0#5", "send0#3", "send0#4", "send2#1", "recv2#2"}
	l.expect(t, want)
	bad := b(KindRecv, 0, 6)
	bad.Recv = nil
	if _, err := g.StartBatch(context.Background(), []*Request{b(KindSend, 0, 7), bad}); !errors.Is(err, ErrBufferLength) {
		t.Fatalf("a bad batch started: %v", err)
	}
	if err := g.Do(context.Background(), &Request{Kind: KindBarrier}); err != nil {
		t.Fatal(err)
	}
	want = append(want, "refuse#6", "refuse#7", "run#0")
	l.expect(t, want)
}

// TestConcurrentStart: two goroutines issuing at once fail.
func TestConcurrentStart(t *testing.T) {
	l := newLog(0, 2)
	g := NewGuard(l)
	defer g.Close()
	var wg sync.WaitGroup
	var mu sync.Mutex
	var errs []error
	for range 4 {
		wg.Go(func() {
			for range 2000 {
				h, err := g.Start(context.Background(), *idReq(1))
				if err == nil {
					err = h.Wait(context.Background())
				}
				if err != nil {
					mu.Lock()
					errs = append(errs, err)
					mu.Unlock()
					return
				}
			}
		})
	}
	wg.Wait()
	if len(errs) == 0 {
		t.Skip("the goroutines never overlapped")
	}
	for _, err := range errs {
		if !errors.Is(err, ErrConcurrentUse) && !errors.Is(err, ErrAborted) {
			t.Fatalf("got %v, want ErrConcurrentUse", err)
		}
	}
}

// TestProgressBehindWait: a small call queued behind one that a Wait runs
// makes progress without its own Wait once that Wait is done, though the
// lazy wake-up found the Wait running.
func TestProgressBehindWait(t *testing.T) {
	l := newLog(0, 2)
	g := NewGuard(l)
	defer g.Close()
	ctx := context.Background()
	l.gate.Lock() // call 1 blocks in Run, on its Wait's goroutine
	h1, err := g.Start(ctx, *idReq(1))
	if err != nil {
		t.Fatal(err)
	}
	waited := make(chan error, 1)
	go func() { waited <- h1.Wait(ctx) }()
	time.Sleep(5 * time.Millisecond) // the wake-up comes and goes
	h2, err := g.Start(ctx, *idReq(2))
	if err != nil {
		t.Fatal(err)
	}
	time.Sleep(5 * time.Millisecond)
	l.gate.Unlock()
	if err := <-waited; err != nil {
		t.Fatal(err)
	}
	deadline := time.Now().Add(10 * time.Second)
	for !slices.Contains(l.entries(), "run#2") {
		if time.Now().After(deadline) {
			t.Fatal("the call behind the Wait made no progress without its own Wait")
		}
		time.Sleep(time.Millisecond)
	}
	if err := h2.Wait(ctx); err != nil {
		t.Fatal(err)
	}
}

// TestOwnCall: the call a Start issues with nothing in flight (the
// Guard's own call, run by its Wait without the queue) keeps its place in
// line: a later call waited for first runs it first; it is reused once
// released, and a stale handle to it neither runs nor waits for the call
// that reuses it.
func TestOwnCall(t *testing.T) {
	l := newLog(0, 2)
	g := NewGuard(l)
	defer g.Close()
	ctx := context.Background()
	start := func(id int) Handle {
		t.Helper()
		h, err := g.Start(ctx, *idReq(id))
		if err != nil {
			t.Fatal(err)
		}
		return h
	}
	h1, h2, h3 := start(1), start(2), start(3)
	if !h1.c.own || h2.c.own || h3.c.own {
		t.Fatalf("own call: %v %v %v, want only the first", h1.c.own, h2.c.own, h3.c.own)
	}
	if err := h3.Wait(ctx); err != nil {
		t.Fatal(err)
	}
	for _, h := range []Handle{h1, h2} {
		if err := h.Wait(ctx); err != nil {
			t.Fatal(err)
		}
	}
	h4 := start(4)
	if h4.c != h1.c {
		t.Fatal("the own call was not reused after its release")
	}
	if err := h1.Wait(ctx); err != nil { // stale: returns at once
		t.Fatal(err)
	}
	select {
	case <-h1.Done():
	default:
		t.Fatal("a stale handle's Done is not closed")
	}
	// A Wait whose context can end early leaves the call to the
	// progress goroutine.
	wctx, cancel := context.WithCancel(ctx)
	defer cancel()
	if err := h4.Wait(wctx); err != nil {
		t.Fatal(err)
	}
	if err := start(5).Wait(ctx); err != nil {
		t.Fatal(err)
	}
	want := []string{"run#1", "run#2", "run#3", "run#4", "run#5"}
	l.expect(t, want)
}

// TestOwnCallMixed: started calls waited for in every order, some left to
// the lazy wake-up, others to Done or to a blocking call behind them, run
// in the order issued, the own call included, whoever runs each.
func TestOwnCallMixed(t *testing.T) {
	l := newLog(0, 2)
	g := NewGuard(l)
	defer g.Close()
	ctx := context.Background()
	id := 0
	var want []string
	for round := range 300 {
		var hs []Handle
		for range 1 + round%3 {
			id++
			h, err := g.Start(ctx, *idReq(id))
			if err != nil {
				t.Fatal(err)
			}
			want = append(want, fmt.Sprintf("run#%d", id))
			hs = append(hs, h)
		}
		switch round % 5 {
		case 1:
			time.Sleep(500 * time.Microsecond) // the lazy wake-up may run them
		case 2:
			<-hs[len(hs)-1].Done()
		case 3:
			id++
			if err := g.Do(ctx, idReq(id)); err != nil {
				t.Fatal(err)
			}
			want = append(want, fmt.Sprintf("run#%d", id))
		}
		if round%2 == 0 {
			slices.Reverse(hs)
		}
		for _, h := range hs {
			if err := h.Wait(ctx); err != nil {
				t.Fatal(err)
			}
		}
	}
	l.expect(t, want)
}
