package shm

import (
	"bytes"
	"context"
	"encoding/binary"
	"errors"
	"fmt"
	"sync"
	"testing"
	"time"

	"github.com/gocoll/gocoll/core"
	"github.com/gocoll/gocoll/generated/coll"
	"github.com/gocoll/gocoll/internal/memstore"
	"github.com/gocoll/gocoll/internal/proctest"
)

var errTestAbort = errors.New("test: aborted on purpose")

// wantPeerError checks that err is a *core.PeerError naming exactly rank r
// that did not come from a timeout: the peers learn of a failure from the
// failed rank's control line, not by waiting.
func wantPeerError(err error, r int) error {
	var pe *core.PeerError
	if !errors.As(err, &pe) || len(pe.Ranks) != 1 || pe.Ranks[0] != r {
		return fmt.Errorf("want a *core.PeerError naming rank %d, got %v", r, err)
	}
	if errors.Is(err, context.DeadlineExceeded) {
		return fmt.Errorf("the peers waited out the timeout instead of learning of rank %d's failure: %v", r, err)
	}
	return nil
}

// checkAbortIdle: rank 1 aborts while its peers wait for it in a
// collective; their calls fail naming it, its own later calls fail with
// the cause, and so do theirs.
func checkAbortIdle(ctx context.Context, g *core.Guard) error {
	if g.Rank() == culprit {
		time.Sleep(200 * time.Millisecond) // let the peers block on it
		g.Abort(errTestAbort)
		if err := allreduceI32(ctx, g, i32s(1), make([]byte, 4)); !errors.Is(err, errTestAbort) {
			return fmt.Errorf("a call after Abort returned %v, want one wrapping the cause", err)
		}
		if err := backend(g).Run(ctx, &core.Request{Kind: core.KindBarrier}); !errors.Is(err, errTestAbort) {
			return fmt.Errorf("the backend ran a call after Abort: %v", err)
		}
		return nil
	}
	if err := wantAborted(allreduceI32(ctx, g, i32s(1), make([]byte, 4))); err != nil {
		return fmt.Errorf("the call in flight: %w", err)
	}
	if err := allreduceI32(ctx, g, i32s(1), make([]byte, 4)); err == nil {
		return errors.New("a call after the abort succeeded")
	}
	return nil
}

// checkAbortInFlight: rank 1 is in a collective, waiting for rank 2, when
// another goroutine aborts it; rank 2 arrives only once that is done (st
// carries the word). Rank 1's call returns the cause; rank 0, in the same
// collective, and rank 2 either complete it (rank 1 had published its
// part) with the right result or fail naming rank 1, and their next calls
// fail naming rank 1.
func checkAbortInFlight(ctx context.Context, g *core.Guard, st core.Store) error {
	me, n := g.Rank(), g.Size()
	if me == 2 {
		if _, err := st.Get(ctx, "aborted"); err != nil {
			return err
		}
	}
	told := make(chan error, 1)
	if me == culprit {
		go func() {
			// Once the call sleeps waiting for rank 2.
			for backend(g).sleepWord.Load() == nil {
				time.Sleep(time.Millisecond)
			}
			g.Abort(errTestAbort)
			told <- st.Set(ctx, "aborted", nil)
		}()
	}
	out := make([]byte, 4)
	err := allreduceI32(ctx, g, i32s(int32(me)), out)
	if me == culprit {
		// The abort ends the call before rank 2 is told to come: return
		// (and end this rank's process) only once it has been.
		if serr := <-told; serr != nil {
			return fmt.Errorf("telling rank 2 of the abort: %w", serr)
		}
		if !errors.Is(err, errTestAbort) {
			return fmt.Errorf("the aborted call returned %v, want one wrapping the cause", err)
		}
		return nil
	}
	if err == nil {
		if got := int32(binary.LittleEndian.Uint32(out)); got != int32(n*(n-1)/2) {
			return fmt.Errorf("the collective completed with %d, want %d", got, n*(n-1)/2)
		}
		err = allreduceI32(ctx, g, i32s(int32(me)), out)
	}
	return wantAborted(err)
}

// wantAborted checks that err names the culprit and says it aborted.
func wantAborted(err error) error {
	if err := wantPeerError(err, culprit); err != nil {
		return err
	}
	if !errors.Is(err, errPeerAborted) {
		return fmt.Errorf("the error does not say that rank %d aborted: %v", culprit, err)
	}
	return nil
}

func TestAbortGoroutines(t *testing.T) {
	t.Run("idle", func(t *testing.T) { mustOK(t, goRanks(t, 3, nil, checkAbortIdle)) })
	t.Run("in-flight", func(t *testing.T) {
		st := memstore.New()
		mustOK(t, goRanks(t, 3, nil, func(ctx context.Context, g *core.Guard) error {
			return checkAbortInFlight(ctx, g, st)
		}))
	})
}

func abortBody(ctx context.Context, r *proctest.Rank) error {
	g, err := newProcComm(ctx, r, "shm-idle/")
	if err != nil {
		return err
	}
	err = checkAbortIdle(ctx, g)
	g.Close()
	if err != nil {
		return fmt.Errorf("idle: %w", err)
	}
	if g, err = newProcComm(ctx, r, "shm-in-flight/"); err != nil {
		return err
	}
	err = checkAbortInFlight(ctx, g, core.WithPrefix(r.Store, "abort/"))
	g.Close()
	if err != nil {
		return fmt.Errorf("in-flight: %w", err)
	}
	return nil
}

func TestAbortProcesses(t *testing.T) {
	procRanks(t, "abort", 3)
}

// TestConcurrentUse: each rank's Guard is shared by 4 goroutines. Every
// call either returns the right result or fails; none returns wrong data
// with a nil error, and none waits out the timeout. Goroutine k calls
// with count k+1, so that calls of different goroutines paired across
// ranks disagree rather than mix their data; calls with equal arguments
// are indistinguishable by design (core.ErrConcurrentUse says why).
func TestConcurrentUse(t *testing.T) {
	const goroutines, iters = 4, 200
	var mu sync.Mutex
	outcomes := map[string]int{}
	errs := goRanks(t, 2, nil, func(ctx context.Context, g *core.Guard) error {
		me, n := g.Rank(), g.Size()
		var wg sync.WaitGroup
		fails := make([]error, goroutines)
		for k := range goroutines {
			wg.Go(func() {
				count := k + 1
				send := make([]byte, 4*count)
				for e := range count {
					binary.LittleEndian.PutUint32(send[4*e:], uint32((me+1)*100+k*10+e))
				}
				for range iters {
					recv := bytes.Repeat([]byte{poison}, 4*count)
					err := g.Do(ctx, &core.Request{Kind: core.KindAllreduce, DType: coll.DTypeInt32, Op: coll.OpSum, Count: count, Send: send, Recv: recv})
					outcome := "ok"
					var mm *core.MismatchError
					switch {
					case err == nil:
						for e := range count {
							want := uint32(100*n*(n+1)/2 + n*(k*10+e))
							if got := binary.LittleEndian.Uint32(recv[4*e:]); got != want {
								fails[k] = fmt.Errorf("goroutine %d: element %d = %d, want %d, with a nil error", k, e, got, want)
								return
							}
						}
					case errors.Is(err, context.DeadlineExceeded):
						fails[k] = fmt.Errorf("goroutine %d waited out the timeout: %v", k, err)
						return
					case errors.Is(err, core.ErrConcurrentUse):
						outcome = "concurrent use"
					case errors.As(err, &mm):
						outcome = "mismatch"
					default:
						outcome = "failed"
					}
					mu.Lock()
					outcomes[outcome]++
					mu.Unlock()
				}
			})
		}
		wg.Wait()
		return errors.Join(fails...)
	})
	mustOK(t, errs)
	t.Logf("outcomes of %d calls: %v", 2*goroutines*iters, outcomes)
}

// TestZeroAllocs: a call through Guard.Do and Run allocates nothing, on
// any path a small collective takes. AllocsPerRun counts the whole
// process, so all ranks together.
func TestZeroAllocs(t *testing.T) {
	for _, n := range []int{1, 2, 3} {
		t.Run(fmt.Sprint("np", n), func(t *testing.T) {
			mustOK(t, goRanks(t, n, nil, func(ctx context.Context, g *core.Guard) error {
				me := g.Rank()
				reqs := []*core.Request{
					{Kind: core.KindAllreduce, DType: coll.DTypeFloat32, Op: coll.OpSum, Count: 2},
					{Kind: core.KindAllreduce, DType: coll.DTypeFloat32, Op: coll.OpAvg, Count: 1000},
					{Kind: core.KindBroadcast, DType: coll.DTypeInt32, Count: 64},
					{Kind: core.KindReduceScatter, DType: coll.DTypeInt32, Op: coll.OpMax, Count: 16},
					{Kind: core.KindBarrier},
				}
				for _, r := range reqs {
					withBuffers(r, me, n)
				}
				if n > 1 && me < 2 {
					peer := 1 - me
					kind := core.KindSend
					if me == 1 {
						kind = core.KindRecv
					}
					reqs = append(reqs, withBuffers(&core.Request{Kind: kind, DType: coll.DTypeInt32, Count: 8, Peer: peer}, me, n))
				}
				// Ranks 2 and up have no send/recv: they run one call less.
				run := func() error {
					for _, r := range reqs {
						if err := g.Do(ctx, r); err != nil {
							return err
						}
					}
					return nil
				}
				if err := run(); err != nil { // warm up
					return err
				}
				if me != 0 {
					for range 31 {
						if err := run(); err != nil {
							return err
						}
					}
					return nil
				}
				var err error
				allocs := testing.AllocsPerRun(30, func() {
					if err == nil {
						err = run()
					}
				})
				if err != nil {
					return err
				}
				if allocs != 0 {
					return fmt.Errorf("%v allocations per round of %d calls (all ranks together), want 0", allocs, len(reqs))
				}
				return nil
			}))
		})
	}
}

// TestRecvTimeout: a receive from a rank that never sends ends with a
// PeerError naming it; the failure is the communicator's, so the other
// rank's next call fails at once naming the rank that gave up.
func TestRecvTimeout(t *testing.T) {
	mustOK(t, goRanks(t, 2, nil, func(ctx context.Context, g *core.Guard) error {
		if g.Rank() == 0 {
			tctx, cancel := context.WithTimeout(ctx, 200*time.Millisecond)
			defer cancel()
			err := g.Do(tctx, &core.Request{Kind: core.KindRecv, DType: coll.DTypeInt32, Count: 1, Peer: 1, Recv: make([]byte, 4)})
			var pe *core.PeerError
			if !errors.As(err, &pe) || pe.Ranks[0] != 1 || !errors.Is(err, context.DeadlineExceeded) {
				return fmt.Errorf("want a deadline PeerError naming rank 1, got %v", err)
			}
			if err := allreduceI32(ctx, g, i32s(2), make([]byte, 4)); err == nil {
				return errors.New("a call after the failed receive succeeded")
			}
			return nil
		}
		time.Sleep(400 * time.Millisecond)
		// The error carries rank 0's cause, its deadline.
		err := allreduceI32(ctx, g, i32s(2), make([]byte, 4))
		var pe *core.PeerError
		if !errors.As(err, &pe) || len(pe.Ranks) != 1 || pe.Ranks[0] != 0 {
			return fmt.Errorf("want a PeerError naming rank 0, got %v", err)
		}
		return nil
	}))
}
