package tcp

import (
	"context"
	"testing"
	"time"

	"github.com/gocoll/gocoll/generated/coll"
)

// TestSpinBacksOff: spins that time out twice in a row make the next
// frames' reads park without spinning, more frames after each miss.
func TestSpinBacksOff(t *testing.T) {
	rs := group(t, 2, WithSpin(50*time.Microsecond))
	p := rs[0].peers[1]
	if p.spin.fn == nil || p.spin.budget != 50*time.Microsecond {
		t.Fatalf("spin not armed: budget %v", p.spin.budget)
	}
	// Rank 1 is late by far more than the spin in every call: rank 0's
	// one frame per call (recursive doubling at np 2) times out.
	late := func() {
		t.Helper()
		noErrors(t, each(rs, func(r rank) error {
			if r.Rank() == 1 {
				time.Sleep(5 * time.Millisecond)
			}
			buf := make([]float32, 2)
			return coll.AllreduceFloat32(context.Background(), r.c, buf, buf, coll.OpSum)
		}))
	}
	late()
	if p.spin.fails != 1 || p.spin.skip != 0 {
		t.Fatalf("after one timed-out spin: fails %d, skip %d; want 1, 0", p.spin.fails, p.spin.skip)
	}
	late()
	if p.spin.fails != 2 || p.spin.skip != 2 {
		t.Fatalf("after two: fails %d, skip %d; want 2, 2", p.spin.fails, p.spin.skip)
	}
	late()
	late()
	if p.spin.fails != 2 || p.spin.skip != 0 {
		t.Fatalf("after two parked frames: fails %d, skip %d; want 2, 0", p.spin.fails, p.spin.skip)
	}
	late()
	if p.spin.fails != 3 || p.spin.skip != 4 {
		t.Fatalf("after a third miss: fails %d, skip %d; want 3, 4", p.spin.fails, p.spin.skip)
	}
	for range 20 {
		p.spin.fails++
		p.spin.skip = 0
		late()
	}
	if max := 1 << maxSkipShift; p.spin.skip != max {
		t.Errorf("after many misses: skip %d, want the cap %d", p.spin.skip, max)
	}
}

// TestNoSpin: WithSpin(0) leaves every read on the blocking path.
func TestNoSpin(t *testing.T) {
	rs := group(t, 2, WithSpin(0))
	if rs[0].peers[1].spin.fn != nil {
		t.Fatal("WithSpin(0) armed the spinning reader")
	}
	noErrors(t, each(rs, func(r rank) error {
		buf := make([]float32, 2)
		return coll.AllreduceFloat32(context.Background(), r.c, buf, buf, coll.OpSum)
	}))
}
