package shm

import (
	"context"
	"errors"
	"fmt"
	"testing"

	"github.com/gocoll/gocoll/core"
	"github.com/gocoll/gocoll/tests/conform"
)

// vectorOnly keeps the vector collectives' cases.
func vectorOnly(c conform.Case) bool { return c.Kind.Shape().Vector() }

// TestVectorConformance runs the vector collectives through the one
// reference at 1 to 8 ranks, with a small data buffer so that blocks take
// several rounds: every dtype and op, zero, uniform, ragged and one-rank
// counts, packed and displaced blocks, bit for bit.
func TestVectorConformance(t *testing.T) {
	for n := 1; n <= 8; n++ {
		t.Run(fmt.Sprintf("np%d", n), func(t *testing.T) {
			opts := []Option{WithBufferSize(confBuffer), WithSmallThreshold(1024), WithP2PBufferSize(4096)}
			mustOK(t, goRanks(t, n, opts, func(ctx context.Context, g *core.Guard) error {
				return conform.Run(ctx, g, conform.Options{
					Sizes:       []int{0, 1, 33, 301},
					Bytes:       []int{confBuffer * 7 / 2},
					RandomSizes: []int{1, 301},
					NoRandom:    n > 2,
					Filter:      vectorOnly,
				})
			}))
		})
	}
}

// TestVectorCountsMismatch: one rank's counts differ from the others'; every
// rank gets a *core.MismatchError on "counts" naming the same culprit, and
// the next call runs.
func TestVectorCountsMismatch(t *testing.T) {
	const n = 4
	type call func(ctx context.Context, g *core.Guard, bad bool) error
	f32 := core.DType(1)
	calls := map[string]call{
		"allgatherv": func(ctx context.Context, g *core.Guard, bad bool) error {
			counts := []int{1, 2, 3, 4}
			if bad {
				counts = []int{1, 2, 3, 4}
				counts[0] = 2 // rank 2's own count stays 3
			}
			me := g.Rank()
			return g.Do(ctx, &core.Request{Kind: core.KindAllgatherv, DType: f32, RecvCounts: counts,
				Send: make([]byte, 4*counts[me]), Recv: make([]byte, 4*sumInts(counts))})
		},
		"reduce_scatter_v": func(ctx context.Context, g *core.Guard, bad bool) error {
			counts := []int{1, 2, 3, 4}
			if bad {
				counts = []int{0, 3, 3, 4}
			}
			me := g.Rank()
			return g.Do(ctx, &core.Request{Kind: core.KindReduceScatterV, DType: f32, Op: 1, RecvCounts: counts,
				Send: make([]byte, 4*sumInts(counts)), Recv: make([]byte, 4*counts[me])})
		},
		"scatterv": func(ctx context.Context, g *core.Guard, bad bool) error {
			counts := []int{2, 2, 2, 2}
			if bad {
				counts = []int{2, 2, 2, 3}
			}
			me := g.Rank()
			req := &core.Request{Kind: core.KindScatterv, DType: f32, Root: 1, SendCounts: counts, Recv: make([]byte, 4*counts[me])}
			if me == 1 {
				req.Send = make([]byte, 4*sumInts(counts))
			}
			return g.Do(ctx, req)
		},
		"alltoallv": func(ctx context.Context, g *core.Guard, bad bool) error {
			me := g.Rank()
			send, recv := make([]int, n), make([]int, n)
			for j := range send {
				send[j], recv[j] = me+j, j+me
			}
			if bad {
				recv[3]++ // this rank expects one more element from rank 3 than it sends
			}
			return g.Do(ctx, &core.Request{Kind: core.KindAlltoallv, DType: f32, SendCounts: send, RecvCounts: recv,
				Send: make([]byte, 4*sumInts(send)), Recv: make([]byte, 4*sumInts(recv))})
		},
	}
	for name, c := range calls {
		t.Run(name, func(t *testing.T) {
			const culprit = 2
			peers := make([]int, n)
			errs := goRanks(t, n, nil, func(ctx context.Context, g *core.Guard) error {
				err := c(ctx, g, g.Rank() == culprit)
				var me *core.MismatchError
				if !errors.As(err, &me) || me.Field != "counts" {
					return fmt.Errorf("rank %d: %v, want a *core.MismatchError on counts", g.Rank(), err)
				}
				peers[g.Rank()] = me.Peer
				t.Logf("rank %d: %v", g.Rank(), err)
				// Still in step: the next call runs.
				if err := c(ctx, g, false); err != nil {
					return fmt.Errorf("rank %d: the call after the mismatch: %w", g.Rank(), err)
				}
				return nil
			})
			mustOK(t, errs)
			// Alltoallv's disagreement is a pair's: rank 2 expects more
			// than rank 3 sends it, and either may be named.
			other := culprit
			if name == "alltoallv" {
				other = 3
			}
			for r, p := range peers {
				if r != culprit && r != other && p != culprit && p != other {
					t.Errorf("rank %d names rank %d, want rank %d or %d", r, p, culprit, other)
				}
			}
		})
	}
}

func sumInts(v []int) int {
	s := 0
	for _, c := range v {
		s += c
	}
	return s
}
