package tcp

import (
	"context"
	"fmt"
	"strings"
	"testing"
	"time"

	"github.com/gocoll/gocoll/core"
	"github.com/gocoll/gocoll/generated/coll"
	"github.com/gocoll/gocoll/internal/proctest"
)

func init() {
	proctest.Register("blockedcpu", blockedCPUBody)
}

// blockedCPUBody: after a few thousand small allreduces (which leave the
// spin budget at its largest), rank 1 sleeps a second before the next one
// while rank 0 waits for it; rank 0 reports the CPU time its process used
// meanwhile and fails if the waiter spun instead of parking.
func blockedCPUBody(ctx context.Context, r *proctest.Rank) error {
	b, err := procGroup(ctx, r, time.Minute)
	if err != nil {
		return err
	}
	defer b.Close()
	c := core.NewGuard(b)
	buf := make([]float32, 2)
	for range 2000 {
		if err := coll.AllreduceFloat32(ctx, c, buf, buf, coll.OpSum); err != nil {
			return err
		}
	}
	if r.Rank == 1 {
		time.Sleep(time.Second)
		return coll.AllreduceFloat32(ctx, c, buf, buf, coll.OpSum)
	}
	c0, t0 := cpuTime(), time.Now()
	if err := coll.AllreduceFloat32(ctx, c, buf, buf, coll.OpSum); err != nil {
		return err
	}
	cpu, wall := cpuTime()-c0, time.Since(t0)
	fmt.Printf("blocked %v in an allreduce, using %v of CPU (%.2f%% of a core)\n", wall, cpu, 100*cpu.Seconds()/wall.Seconds())
	// A resource bound, not a speed one: the waiter spins a fraction of a
	// millisecond, then parks, and wakes every wakeEvery to look for
	// disagreement; spinning through the second would use 100%.
	if wall < 500*time.Millisecond {
		return fmt.Errorf("blocked only %v: rank 1 did not hold rank 0 up, the test measured nothing", wall)
	}
	if cpu > wall/20 {
		return fmt.Errorf("blocked %v but used %v of CPU (over 5%% of a core): the waiter does not park", wall, cpu)
	}
	return nil
}

// TestBlockedRankParks: a rank whose peer is a second late uses less than
// 5% of a core while it waits, although small reads spin before parking.
func TestBlockedRankParks(t *testing.T) {
	res := proctest.Run(t, "blockedcpu", 2, proctest.Timeout(time.Minute))
	for _, r := range res {
		if r.Rank == 0 {
			t.Log(strings.TrimSpace(r.Output))
		}
	}
}
