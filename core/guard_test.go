package core

import (
	"context"
	"errors"
	"io"
	"sync"
	"sync/atomic"
	"testing"
	"time"
)

// fakeBackend records what the Guard hands it; Run blocks while hold is
// set, until Abort or release.
type fakeBackend struct {
	runs, refusals atomic.Int32
	runErr         error
	hold           chan struct{}
	entered        chan struct{}
	aborted        chan error
	closed         atomic.Bool
}

func newFake() *fakeBackend { return &fakeBackend{aborted: make(chan error, 4)} }

func (f *fakeBackend) Rank() int    { return 0 }
func (f *fakeBackend) Size() int    { return 2 }
func (f *fakeBackend) Name() string { return "fake" }
func (f *fakeBackend) Run(ctx context.Context, req *Request) error {
	f.runs.Add(1)
	if f.hold != nil {
		f.entered <- struct{}{}
		select {
		case <-f.hold:
		case err := <-f.aborted:
			return err
		}
	}
	return f.runErr
}
func (f *fakeBackend) Refuse(ctx context.Context, req *Request) error {
	f.refusals.Add(1)
	return nil
}
func (f *fakeBackend) Abort(cause error) { f.aborted <- cause }
func (f *fakeBackend) Close() error      { f.closed.Store(true); return nil }

func allreduce(send, recv []byte) *Request {
	return &Request{Kind: KindAllreduce, DType: tInt32, Op: oSum, Count: len(send) / 4, Send: send, Recv: recv}
}

func TestGuardRefusesLocallyInvalid(t *testing.T) {
	f := newFake()
	g := NewGuard(f)
	err := g.Do(context.Background(), allreduce(make([]byte, 8), make([]byte, 4)))
	if !errors.Is(err, ErrBufferLength) {
		t.Fatalf("Do = %v, want ErrBufferLength", err)
	}
	if f.refusals.Load() != 1 || f.runs.Load() != 0 {
		t.Fatalf("refusals %d runs %d, want 1 and 0: peers must hear of the bad call", f.refusals.Load(), f.runs.Load())
	}
	if err := g.Do(context.Background(), allreduce(make([]byte, 8), make([]byte, 8))); err != nil {
		t.Fatalf("a bad argument failed the communicator: %v", err)
	}
	if err := g.Do(context.Background(), nil); !errors.Is(err, ErrInvalid) || f.refusals.Load() != 2 {
		t.Fatalf("Do(nil) = %v with %d refusals; want ErrInvalid, and the peers told", err, f.refusals.Load())
	}
}

func TestGuardStickyFailure(t *testing.T) {
	f := newFake()
	g := NewGuard(f)
	f.runErr = &MismatchError{Field: "count"}
	if err := g.Do(context.Background(), allreduce(make([]byte, 8), make([]byte, 8))); err == nil {
		t.Fatal("mismatch not returned")
	}
	f.runErr = &PeerError{Op: "allreduce #2", Ranks: []int{1}, Err: io.EOF}
	if err := g.Do(context.Background(), allreduce(make([]byte, 8), make([]byte, 8))); err == nil {
		t.Fatal("peer error not returned")
	}
	f.runErr = nil
	err := g.Do(context.Background(), allreduce(make([]byte, 8), make([]byte, 8)))
	var pe *PeerError
	if !errors.As(err, &pe) || f.runs.Load() != 2 {
		t.Fatalf("after a dead peer: Do = %v with %d runs; want the first PeerError, without running", err, f.runs.Load())
	}
	if g.Close() != nil || !f.closed.Load() {
		t.Fatal("Close did not close the backend")
	}
	if err := g.Do(context.Background(), allreduce(make([]byte, 8), make([]byte, 8))); !errors.Is(err, ErrClosed) {
		t.Fatalf("after Close: %v", err)
	}
}

func TestGuardConcurrentUse(t *testing.T) {
	f := newFake()
	f.hold, f.entered = make(chan struct{}), make(chan struct{}, 1)
	g := NewGuard(f)
	var wg sync.WaitGroup
	var first error
	wg.Go(func() { first = g.Do(context.Background(), allreduce(make([]byte, 8), make([]byte, 8))) })
	<-f.entered
	second := g.Do(context.Background(), allreduce(make([]byte, 8), make([]byte, 8)))
	wg.Wait()
	if !errors.Is(second, ErrConcurrentUse) || !errors.Is(first, ErrConcurrentUse) {
		t.Fatalf("in flight: %v; second: %v; want both to fail with ErrConcurrentUse", first, second)
	}
	close(f.hold)
	if err := g.Do(context.Background(), allreduce(make([]byte, 8), make([]byte, 8))); !errors.Is(err, ErrConcurrentUse) {
		t.Fatalf("after concurrent use: %v, want the communicator failed", err)
	}
}

func TestGuardAllocations(t *testing.T) {
	g := NewGuard(newFake())
	req := allreduce(make([]byte, 8), make([]byte, 8))
	ctx := context.Background()
	if n := testing.AllocsPerRun(100, func() {
		if err := g.Do(ctx, req); err != nil {
			t.Fatal(err)
		}
	}); n != 0 {
		t.Errorf("Do allocates %v times per call", n)
	}
}

func TestTimeout(t *testing.T) {
	if Timeout(0) != DefaultTimeout || Timeout(-1) != DefaultTimeout || Timeout(time.Second) != time.Second {
		t.Fatal("Timeout: 0 (and below) must mean DefaultTimeout")
	}
	ctx, cancel := context.WithTimeout(context.Background(), time.Millisecond)
	defer cancel()
	if d := time.Until(Deadline(ctx, time.Hour)); d > time.Second {
		t.Fatalf("Deadline ignores ctx's earlier deadline: %v", d)
	}
}

// abortDeaf finishes its call when released whatever Abort said: the Guard
// must still not return nil for a call that overlapped another.
type abortDeaf struct {
	fakeBackend
}

func (f *abortDeaf) Abort(cause error) {}

func TestGuardConcurrentUseBackendFinishesAnyway(t *testing.T) {
	f := &abortDeaf{fakeBackend{aborted: make(chan error, 4), hold: make(chan struct{}), entered: make(chan struct{}, 1)}}
	g := NewGuard(f)
	var wg sync.WaitGroup
	var first error
	wg.Go(func() { first = g.Do(context.Background(), allreduce(make([]byte, 8), make([]byte, 8))) })
	<-f.entered
	if err := g.Do(context.Background(), allreduce(make([]byte, 8), make([]byte, 8))); !errors.Is(err, ErrConcurrentUse) {
		t.Fatalf("second call: %v", err)
	}
	close(f.hold)
	wg.Wait()
	if !errors.Is(first, ErrConcurrentUse) {
		t.Fatalf("the call in flight returned %v although another overlapped it", first)
	}
}
