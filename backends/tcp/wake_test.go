package tcp

import (
	"context"
	"runtime"
	"testing"
	"time"

	"github.com/gocoll/gocoll/core"
	"github.com/gocoll/gocoll/generated/coll"
)

// TestWakeAllocs: a call woken by the ticker (a wait longer than
// wakeEvery) allocates at most one object per wake, the error the net
// package makes for the interrupted read; looking ahead at the other
// connections (probe) allocates nothing. Allocations are counted per call
// as testing.AllocsPerRun counts them (TestNoAllocs), so that the
// runtime's refilling a pool once in a while is not blamed on the calls.
// Wakes come every 100µs here, so that every call is woken many times.
func TestWakeAllocs(t *testing.T) {
	if raceEnabled {
		t.Skip("the race detector allocates on its own")
	}
	defer func(d time.Duration) { wakeEvery = d }(wakeEvery)
	wakeEvery = 100 * time.Microsecond
	const n, runs = 3, 30
	for _, tc := range []struct {
		name  string
		kind  core.Kind
		dtype core.DType
		op    core.Op
		count int
	}{
		{"allreduce/ring", coll.KindAllreduce, coll.DTypeFloat32, coll.OpSum, 1 << 18},
		{"reduce/chain", coll.KindReduce, coll.DTypeInt32, coll.OpSum, 1 << 18},
		{"broadcast/chain", coll.KindBroadcast, coll.DTypeInt32, 0, 1 << 18},
	} {
		t.Run(tc.name, func(t *testing.T) {
			bs := group(t, n)
			ctx := context.Background()
			reqs := make([]*core.Request, n)
			for r := range n {
				reqs[r] = &core.Request{Kind: tc.kind, DType: tc.dtype, Op: tc.op, Count: tc.count, Root: 1,
					Send: make([]byte, 4*tc.count), Recv: make([]byte, 4*tc.count)}
				if tc.kind == coll.KindBroadcast {
					reqs[r].Send = reqs[r].Recv
				}
			}
			start := make([]chan struct{}, n)
			done := make(chan error, n)
			for r := 1; r < n; r++ {
				start[r] = make(chan struct{})
				go func() {
					for range start[r] {
						done <- bs[r].c.Do(ctx, reqs[r])
					}
				}()
			}
			defer func() {
				for r := 1; r < n; r++ {
					close(start[r])
				}
			}()
			call := func() {
				for r := 1; r < n; r++ {
					start[r] <- struct{}{}
				}
				if err := bs[0].c.Do(ctx, reqs[0]); err != nil {
					t.Fatal(err)
				}
				for r := 1; r < n; r++ {
					if err := <-done; err != nil {
						t.Fatal(err)
					}
				}
			}
			wakes := func() (w uint64) {
				for _, b := range bs {
					w += b.wakes.Load()
				}
				return w
			}
			// As testing.AllocsPerRun measures: one P, one warm-up call
			// (after a collection, which empties the runtime's pools), the
			// whole process's allocations, whole allocations per call.
			defer runtime.GOMAXPROCS(runtime.GOMAXPROCS(1))
			runtime.GC()
			call()
			var ms runtime.MemStats
			runtime.ReadMemStats(&ms)
			mallocs, w0 := ms.Mallocs, wakes()
			for range runs {
				call()
			}
			runtime.ReadMemStats(&ms)
			mallocs, woken := ms.Mallocs-mallocs, wakes()-w0
			t.Logf("%d calls: %d wakes, %d allocations", runs, woken, mallocs)
			if woken == 0 {
				t.Fatalf("no call was woken in %d calls: the test does not reach the wake", runs)
			}
			if mallocs > woken && (mallocs-woken)/runs > 0 {
				t.Errorf("%d allocations in %d calls woken %d times: %d per call besides one per wake, want 0", mallocs, runs, woken, (mallocs-woken)/runs)
			}
		})
	}
}
