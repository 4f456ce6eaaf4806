package tcp

import (
	"context"
	"testing"
	"time"

	"github.com/gocoll/gocoll/generated/coll"
)

// TestSpinBudgetAdapts: a parked wait longer than longWait drops the peer's
// spin to the floor; a shorter one, or a spin that pays, restores it.
func TestSpinBudgetAdapts(t *testing.T) {
	rs := group(t, 2, WithSpin(80*time.Microsecond))
	b := rs[0].Backend
	p := b.peers[1]
	if p.spin.fn == nil || p.spin.budget != 80*time.Microsecond {
		t.Fatalf("spin not armed: budget %v", p.spin.budget)
	}
	p.spin.since = since() - 5*longWait
	b.waited(p)
	if p.spin.budget != spinFloor {
		t.Errorf("after a %v wait: budget %v, want the floor %v", 5*longWait, p.spin.budget, spinFloor)
	}
	p.spin.since = since()
	b.waited(p)
	if p.spin.budget != 80*time.Microsecond {
		t.Errorf("after a short wait: budget %v, want the full 80us", p.spin.budget)
	}
	// A peer a few milliseconds late in a real call: the budget falls to
	// the floor. (The way back is timing: a sleeping peer on a loaded
	// machine is easily a millisecond late; waited's unit test above
	// covers it.)
	late := func(delay time.Duration) {
		t.Helper()
		noErrors(t, each(rs, func(r rank) error {
			if r.Rank() == 1 {
				time.Sleep(delay)
			}
			buf := make([]float32, 2)
			return coll.AllreduceFloat32(context.Background(), r.c, buf, buf, coll.OpSum)
		}))
	}
	late(0)
	p.spin.budget = 80 * time.Microsecond
	late(5 * longWait)
	if p.spin.budget != spinFloor {
		t.Errorf("after a peer %v late: budget %v, want the floor", 5*longWait, p.spin.budget)
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
