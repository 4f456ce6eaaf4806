// Command shrink shows a job that survives a lost rank: the ranks run
// checked allreduces, one of them kills itself with SIGKILL midway, and
// the others catch the *core.PeerError that names it, Shrink onto a
// communicator of the survivors, agree on the last step they all
// finished, and carry on from there. Each survivor prints a summary.
//
// gocollrun stops the whole job when a rank fails unless it is told to
// leave the others running:
//
//	go build -o shrink ./examples/shrink
//	go run ./cmd/gocollrun -np 4 -on-failure=continue ./shrink -kill-rank 0 -kill-at 500
//
// gocollrun exits 137 (128+SIGKILL, the killed rank's code) and names the
// dead rank; the survivors exit 0. Under gocollrun the launcher serves
// the store, so any rank may die, rank 0 included. Under a launcher where
// rank 0 serves the store (torchrun's variables, mpirun, srun), Shrink
// fails when rank 0 dies, and that launcher must also be told to keep the
// survivors (MPICH: mpiexec -disable-auto-cleanup).
//
// Flags: -steps N allreduces in all (default 2000); -kill-rank R, the
// world rank that kills itself (default 1; -1: none); -kill-at K, the
// step before which it does (default 500); -count N, the elements of
// each allreduce (default 1024).
package main

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"os"
	"strings"
	"syscall"
	"time"

	"github.com/gocoll/gocoll/core"
	"github.com/gocoll/gocoll/dispatch"
	"github.com/gocoll/gocoll/generated/coll"
)

func main() {
	steps := flag.Int("steps", 2000, "allreduces to run in all")
	killRank := flag.Int("kill-rank", 1, "world rank that kills itself with SIGKILL (-1: none)")
	killAt := flag.Int("kill-at", 500, "the step before which -kill-rank kills itself")
	count := flag.Int("count", 1024, "elements of each allreduce")
	flag.Parse()
	if *steps < 0 || *killAt < 0 || *count < 1 {
		fmt.Fprintln(os.Stderr, "shrink: -steps and -kill-at must not be negative, -count must be positive")
		os.Exit(2)
	}
	if err := run(*steps, *killRank, *killAt, *count); err != nil {
		fmt.Fprintln(os.Stderr, "shrink:", err)
		os.Exit(1)
	}
}

func run(steps, killRank, killAt, count int) error {
	ctx := context.Background()
	c, err := dispatch.Init(ctx)
	if err != nil {
		return err
	}
	// c changes with each Shrink; the last one is closed here.
	defer func() { c.Close() }()
	world := c.Size()

	var (
		checked  = []string{""} // per communicator: "N on M ranks"
		n        int            // allreduces checked on c
		redone   int            // steps run again after a Shrink
		shrunkIn time.Duration  // time spent in Shrink
	)
	tally := func() { checked[len(checked)-1] = fmt.Sprintf("%d on %d ranks", n, c.Size()) }
	step := 0 // the next step; steps before it are done
	for step < steps {
		if c.WorldRank() == killRank && step == killAt {
			fmt.Printf("rank %d: killing myself with SIGKILL before step %d\n", c.WorldRank(), step)
			syscall.Kill(os.Getpid(), syscall.SIGKILL)
			select {} // the signal is on its way
		}
		err := checkedAllreduce(ctx, c, step, count)
		if err == nil {
			n++
			step++
			continue
		}
		var pe *core.PeerError
		if !errors.As(err, &pe) {
			return fmt.Errorf("step %d: %w", step, err)
		}
		// A rank died: every survivor sees a PeerError, though not
		// necessarily at the same step (one may have finished a step its
		// neighbour did not). Shrink, then restart from the first step
		// that some survivor has not finished.
		fmt.Printf("rank %d: step %d failed: %v; shrinking\n", c.WorldRank(), step, pe)
		start := time.Now()
		s, err := c.Shrink(ctx)
		if err != nil {
			return fmt.Errorf("shrink after step %d failed: %w", step, err)
		}
		shrunkIn += time.Since(start)
		tally()
		c.Close() // failed for good; s has taken over the store connection
		c, n = s, 0
		checked = append(checked, "")
		resume, err := agree(ctx, c, step)
		if err != nil {
			return fmt.Errorf("agreeing on the step to resume from: %w", err)
		}
		redone += step - resume
		fmt.Printf("rank %d: now rank %d of %d (world ranks %v) on %s; resuming at step %d\n",
			c.WorldRank(), c.Rank(), c.Size(), c.Ranks(), c.Backend(), resume)
		step = resume
	}
	tally()
	fmt.Printf("rank %d: done: %d steps; allreduces checked: %s; %d step(s) run again; %d shrink(s) took %v; %d of %d ranks left: world ranks %v\n",
		c.WorldRank(), steps, strings.Join(checked, ", then "), redone, len(checked)-1, shrunkIn.Round(time.Millisecond), c.Size(), world, c.Ranks())
	return nil
}

// agree returns the lowest next step of all the ranks of c: the first
// step that not every rank has finished.
func agree(ctx context.Context, c *dispatch.Comm, next int) (int, error) {
	recv := make([]int64, 1)
	if err := coll.AllreduceInt64(ctx, c, []int64{int64(next)}, recv, coll.OpMin); err != nil {
		return 0, err
	}
	return int(recv[0]), nil
}

// checkedAllreduce runs step's allreduce on c and checks the sum: each
// rank contributes its world rank + step + the element's index, so that a
// rank that is a step ahead or behind, or a stale buffer, cannot pass.
func checkedAllreduce(ctx context.Context, c *dispatch.Comm, step, count int) error {
	send, recv := make([]int64, count), make([]int64, count)
	for j := range send {
		send[j] = int64(c.WorldRank() + step + j)
	}
	if err := coll.AllreduceInt64(ctx, c, send, recv, coll.OpSum); err != nil {
		return err
	}
	var base int64
	for _, w := range c.Ranks() {
		base += int64(w + step)
	}
	for j, v := range recv {
		if want := base + int64(c.Size()*j); v != want {
			return fmt.Errorf("step %d: element %d = %d, want %d (a wrong result, not a lost rank)", step, j, v, want)
		}
	}
	return nil
}
