package shm

import (
	"context"
	"fmt"
	"testing"

	"github.com/gocoll/gocoll/core"
	"github.com/gocoll/gocoll/generated/coll"
)

// BenchmarkFront8B compares an 8-byte float32 allreduce through the typed
// function (AllreduceFloat32) and through the generic one
// (Allreduce[float32]), on one rank (the per-call cost alone, where a
// difference in the front shows most) and between two goroutine ranks.
// Run with -count to interleave the two.
func BenchmarkFront8B(b *testing.B) {
	for _, np := range []int{1, 2} {
		for _, front := range []string{"typed", "generic"} {
			b.Run(fmt.Sprintf("np%d/%s", np, front), func(b *testing.B) {
				b.ReportAllocs()
				mustOK(b, goRanks(b, np, nil, func(ctx context.Context, g *core.Guard) error {
					send, recv := []float32{1, 2}, make([]float32, 2)
					if g.Rank() == 0 {
						b.ResetTimer()
					}
					if front == "typed" {
						for range b.N {
							if err := coll.AllreduceFloat32(ctx, g, send, recv, coll.OpSum); err != nil {
								return err
							}
						}
						return nil
					}
					for range b.N {
						if err := coll.Allreduce(ctx, g, send, recv, coll.OpSum); err != nil {
							return err
						}
					}
					return nil
				}))
			})
		}
	}
}
