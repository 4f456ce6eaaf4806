// Command job is the rank program of the torchrun tests: it joins the job
// with dispatch.Init, timing it, and runs allreduces whose every element
// it checks against the exact answer. It prints one line per rank,
//
//	rank R of N: init 12.3ms, backend shm, store ADDR, allreduce checked
//
// and exits 1 with the reason on any error or wrong element.
package main

import (
	"context"
	"fmt"
	"os"
	"time"

	"github.com/gocoll/gocoll/dispatch"
	"github.com/gocoll/gocoll/generated/coll"
)

func main() {
	if err := run(); err != nil {
		fmt.Fprintln(os.Stderr, "job:", err)
		os.Exit(1)
	}
}

func run() error {
	ctx := context.Background()
	start := time.Now()
	c, err := dispatch.Init(ctx)
	took := time.Since(start)
	if err != nil {
		return err
	}
	defer c.Close()
	r, n := c.Rank(), c.Size()

	// float32 sums of small integers are exact: element i of rank r is
	// r+i mod 1000, so the sum is n*(i mod 1000) + n*(n-1)/2 (while i mod
	// 1000 + r stays below 1000, which it does for the ranks tested).
	for _, count := range []int{1, 1000, 1 << 18} {
		send := make([]float32, count)
		for i := range send {
			send[i] = float32(r + i%1000)
		}
		recv := make([]float32, count)
		if err := coll.AllreduceFloat32(ctx, c, send, recv, coll.OpSum); err != nil {
			return fmt.Errorf("allreduce float32 sum of %d: %w", count, err)
		}
		for i, v := range recv {
			if want := float32(n*(i%1000) + n*(n-1)/2); v != want {
				return fmt.Errorf("allreduce float32 sum of %d: element %d is %v, want %v", count, i, v, want)
			}
		}
	}
	// int64 max: element i of rank r is (r*7919+i)%n*1e12 + i, so the max
	// is (n-1)*1e12 + i.
	send := make([]int64, 4096)
	for i := range send {
		send[i] = int64((r*7919+i)%n)*1e12 + int64(i)
	}
	recv := make([]int64, len(send))
	if err := coll.AllreduceInt64(ctx, c, send, recv, coll.OpMax); err != nil {
		return fmt.Errorf("allreduce int64 max: %w", err)
	}
	for i, v := range recv {
		if want := int64(n-1)*1e12 + int64(i); v != want {
			return fmt.Errorf("allreduce int64 max: element %d is %d, want %d", i, v, want)
		}
	}
	fmt.Printf("rank %d of %d: init %v, backend %s, store %s, allreduce checked\n", r, n, took, c.Backend(), c.KVSAddr())
	return nil
}
