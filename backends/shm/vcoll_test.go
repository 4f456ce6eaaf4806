package shm

import (
	"context"
	"errors"
	"fmt"
	"slices"
	"testing"
	"time"

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
	maxNP := 8
	if testing.Short() {
		maxNP = 4
	}
	for n := 1; n <= maxNP; n++ {
		t.Run(fmt.Sprintf("np%d", n), func(t *testing.T) {
			opts := []Option{WithBufferSize(confBuffer), WithSmallThreshold(1024), WithP2PBufferSize(4096)}
			sizes := []int{0, 1, 33, 301}
			if n > 4 {
				sizes = []int{0, 33} // more goroutine ranks than CPUs: slow
			}
			mustOK(t, goRanks(t, n, opts, func(ctx context.Context, g *core.Guard) error {
				return conform.Run(ctx, g, conform.Options{
					Sizes:       sizes,
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

// benchAlltoall times alltoall, or alltoallv with uniform counts, of count
// float32 per block at n goroutine ranks: the per-call cost the vector
// form adds (checks, offsets, the counts sum) shows as their difference.
func benchAlltoall(b *testing.B, n, count int, vector bool) {
	mustOK(b, goRanks(b, n, nil, func(ctx context.Context, g *core.Guard) error {
		send, recv := make([]byte, 4*count*n), make([]byte, 4*count*n)
		req := &core.Request{Kind: core.KindAlltoall, DType: 1, Count: count, Send: send, Recv: recv}
		if vector {
			counts := make([]int, n)
			for j := range counts {
				counts[j] = count
			}
			req = &core.Request{Kind: core.KindAlltoallv, DType: 1, SendCounts: counts, RecvCounts: counts, Send: send, Recv: recv}
		}
		if g.Rank() == 0 {
			b.ResetTimer()
		}
		for i := 0; i < b.N; i++ {
			if err := g.Do(ctx, req); err != nil {
				return err
			}
		}
		return nil
	}))
}

func BenchmarkAlltoall1Rank(b *testing.B)  { benchAlltoall(b, 1, 4, false) }
func BenchmarkAlltoallv1Rank(b *testing.B) { benchAlltoall(b, 1, 4, true) }
func BenchmarkAlltoall4(b *testing.B)      { benchAlltoall(b, 4, 4, false) }
func BenchmarkAlltoallv4(b *testing.B)     { benchAlltoall(b, 4, 4, true) }

// BenchmarkAlltoallvBar: alltoallv with uniform counts against alltoall at
// 4 goroutine ranks, sizes 16 B to 16 MiB per rank's buffer, the two calls
// alternating in one loop so that a shared machine's load falls on both
// alike. It reports rank 0's median time of each call and their ratio.
func BenchmarkAlltoallvBar(b *testing.B) {
	const n = 4
	for size := 16; size <= 16<<20; size *= 4 {
		b.Run(fmt.Sprint(size), func(b *testing.B) {
			count := size / 4 / n
			var fixed, vector []time.Duration
			mustOK(b, goRanks(b, n, nil, func(ctx context.Context, g *core.Guard) error {
				send, recv := make([]byte, 4*count*n), make([]byte, 4*count*n)
				counts := make([]int, n)
				for j := range counts {
					counts[j] = count
				}
				a := &core.Request{Kind: core.KindAlltoall, DType: 1, Count: count, Send: send, Recv: recv}
				v := &core.Request{Kind: core.KindAlltoallv, DType: 1, SendCounts: counts, RecvCounts: counts, Send: send, Recv: recv}
				for i := 0; i < b.N; i++ {
					for k, req := range []*core.Request{a, v} {
						t := time.Now()
						if err := g.Do(ctx, req); err != nil {
							return err
						}
						if g.Rank() == 0 {
							if k == 0 {
								fixed = append(fixed, time.Since(t))
							} else {
								vector = append(vector, time.Since(t))
							}
						}
					}
				}
				return nil
			}))
			mf, mv := median(fixed), median(vector)
			b.ReportMetric(float64(mf.Nanoseconds()), "alltoall-ns")
			b.ReportMetric(float64(mv.Nanoseconds()), "alltoallv-ns")
			b.ReportMetric(float64(mv)/float64(mf), "ratio")
		})
	}
}

func median(d []time.Duration) time.Duration {
	if len(d) == 0 {
		return 0
	}
	s := slices.Clone(d)
	slices.Sort(s)
	return s[len(s)/2]
}
