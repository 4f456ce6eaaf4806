package shm

import (
	"context"
	"testing"

	"github.com/gocoll/gocoll/core"
	"github.com/gocoll/gocoll/generated/coll"
)

// BenchmarkAllreduce8BGoroutines: the small-message path between two
// goroutine ranks of one process (each with its own mapping), for profiling
// the per-call overhead without process start-up in the picture.
func BenchmarkAllreduce8BGoroutines(b *testing.B) {
	mustOK(b, goRanks(b, 2, nil, func(ctx context.Context, be *core.Guard) error {
		send, recv := make([]byte, 8), make([]byte, 8)
		req := &core.Request{Kind: core.KindAllreduce, DType: coll.DTypeFloat32, Op: coll.OpSum, Count: 2, Send: send, Recv: recv}
		if be.Rank() == 0 {
			b.ResetTimer()
		}
		for i := 0; i < b.N; i++ {
			if err := be.Do(ctx, req); err != nil {
				return err
			}
		}
		return nil
	}))
}

// BenchmarkOverhead8B: an 8-byte allreduce on one rank: the per-call cost
// of the Guard's check, descriptor, round bookkeeping and the kernel call,
// without any waiting.
func BenchmarkOverhead8B(b *testing.B) {
	mustOK(b, goRanks(b, 1, nil, func(ctx context.Context, be *core.Guard) error {
		send, recv := make([]byte, 8), make([]byte, 8)
		req := &core.Request{Kind: core.KindAllreduce, DType: coll.DTypeFloat32, Op: coll.OpSum, Count: 2, Send: send, Recv: recv}
		b.ResetTimer()
		for i := 0; i < b.N; i++ {
			if err := be.Do(ctx, req); err != nil {
				return err
			}
		}
		return nil
	}))
}
