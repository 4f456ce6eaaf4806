package tcp

import (
	"context"
	"errors"
	"fmt"
	"testing"

	"github.com/gocoll/gocoll/core"
	"github.com/gocoll/gocoll/generated/coll"
	"github.com/gocoll/gocoll/tests/conform"
)

// TestVectorConformance runs the vector collectives through the one
// reference at 1 to 8 ranks with smallAlgos (64-byte chunks, direct
// allgatherv up to 64 bytes, the ring above): every dtype and op; zero,
// uniform, ragged and one-rank counts; packed and displaced blocks; bit
// for bit.
func TestVectorConformance(t *testing.T) {
	for np := 1; np <= 8; np++ {
		t.Run(fmt.Sprintf("np=%d", np), func(t *testing.T) {
			bs := group(t, np, smallAlgos...)
			ctx := context.Background()
			noErrors(t, each(bs, func(b rank) error {
				return conform.Run(ctx, b.c, conform.Options{
					Sizes:       []int{0, 1, 7, 33, 300},
					RandomSizes: []int{7, 300},
					NoRandom:    np > 3,
					Filter:      func(c conform.Case) bool { return c.Kind.Shape().Vector() },
				})
			}))
		})
	}
}

// TestVectorCountsMismatch: one rank's counts differ from the others'; every
// rank gets a *core.MismatchError on "counts" naming the culprit (for
// alltoallv, one of the pair that disagrees), and the next call runs.
func TestVectorCountsMismatch(t *testing.T) {
	const n, culprit = 4, 2
	f32 := core.DType(1)
	type call func(ctx context.Context, b rank, bad bool) error
	calls := map[string]call{
		"allgatherv": func(ctx context.Context, b rank, bad bool) error {
			counts := []int{1, 2, 3, 4}
			if bad {
				counts[0] = 2
			}
			me := b.Rank()
			return b.c.Do(ctx, &core.Request{Kind: core.KindAllgatherv, DType: f32, RecvCounts: counts,
				Send: make([]byte, 4*counts[me]), Recv: make([]byte, 4*vsum(counts))})
		},
		"allgatherv ring": func(ctx context.Context, b rank, bad bool) error {
			counts := []int{100, 200, 300, 400}
			if bad {
				counts[3] = 401
			}
			me := b.Rank()
			return b.c.Do(ctx, &core.Request{Kind: core.KindAllgatherv, DType: f32, RecvCounts: counts,
				Send: make([]byte, 4*counts[me]), Recv: make([]byte, 4*vsum(counts))})
		},
		"reduce_scatter_v": func(ctx context.Context, b rank, bad bool) error {
			counts := []int{10, 20, 30, 40}
			if bad {
				counts = []int{0, 30, 30, 40}
			}
			me := b.Rank()
			return b.c.Do(ctx, &core.Request{Kind: core.KindReduceScatterV, DType: f32, Op: 1, RecvCounts: counts,
				Send: make([]byte, 4*vsum(counts)), Recv: make([]byte, 4*counts[me])})
		},
		"gatherv": func(ctx context.Context, b rank, bad bool) error {
			counts := []int{2, 2, 2, 2}
			if bad {
				counts = []int{2, 2, 2, 3}
			}
			me := b.Rank()
			req := &core.Request{Kind: core.KindGatherv, DType: f32, Root: 1, RecvCounts: counts, Send: make([]byte, 4*counts[me])}
			if me == 1 {
				req.Recv = make([]byte, 4*vsum(counts))
			}
			return b.c.Do(ctx, req)
		},
		"alltoallv": func(ctx context.Context, b rank, bad bool) error {
			me := b.Rank()
			send, recv := make([]int, n), make([]int, n)
			for j := range send {
				send[j], recv[j] = me+j, j+me
			}
			if bad {
				recv[3]++
			}
			return b.c.Do(ctx, &core.Request{Kind: core.KindAlltoallv, DType: f32, SendCounts: send, RecvCounts: recv,
				Send: make([]byte, 4*vsum(send)), Recv: make([]byte, 4*vsum(recv))})
		},
	}
	for name, c := range calls {
		t.Run(name, func(t *testing.T) {
			bs := group(t, n, smallAlgos...)
			ctx := context.Background()
			peers := make([]int, n)
			noErrors(t, each(bs, func(b rank) error {
				err := c(ctx, b, b.Rank() == culprit)
				var me *core.MismatchError
				if !errors.As(err, &me) || me.Field != "counts" {
					return fmt.Errorf("%v, want a *core.MismatchError on counts", err)
				}
				peers[b.Rank()] = me.Peer
				t.Logf("rank %d: %v", b.Rank(), err)
				if err := c(ctx, b, false); err != nil {
					return fmt.Errorf("the call after the mismatch: %w", err)
				}
				return nil
			}))
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

// TestVectorStarted: vector collectives started without blocking, two in
// flight at once, complete with the right data, as their blocking forms.
func TestVectorStarted(t *testing.T) {
	const n = 3
	bs := group(t, n, smallAlgos...)
	ctx := context.Background()
	noErrors(t, each(bs, func(b rank) error {
		me := b.Rank()
		counts := []int{1, 0, 5}
		send := make([]int32, counts[me])
		for i := range send {
			send[i] = int32(10*me + i)
		}
		recv := make([]int32, vsum(counts))
		sc, rc := make([]int, n), make([]int, n)
		for j := range n {
			sc[j], rc[j] = me+j, j+me
		}
		a2aSend, a2aRecv := make([]int32, vsum(sc)), make([]int32, vsum(rc))
		for i := range a2aSend {
			a2aSend[i] = int32(100*me + i)
		}
		h1, err := b.c.Start(ctx, core.Request{Kind: core.KindAllgatherv, DType: coll.DTypeInt32, RecvCounts: counts,
			Send: core.Bytes(send), Recv: core.Bytes(recv)})
		if err != nil {
			return err
		}
		h2, err := b.c.Start(ctx, core.Request{Kind: core.KindAlltoallv, DType: coll.DTypeInt32, SendCounts: sc, RecvCounts: rc,
			Send: core.Bytes(a2aSend), Recv: core.Bytes(a2aRecv)})
		if err != nil {
			return err
		}
		if err := h1.Wait(ctx); err != nil {
			return err
		}
		if err := h2.Wait(ctx); err != nil {
			return err
		}
		at := 0
		for j, c := range counts {
			for i := range c {
				if recv[at+i] != int32(10*j+i) {
					return fmt.Errorf("allgatherv: block %d element %d = %d, want %d", j, i, recv[at+i], 10*j+i)
				}
			}
			at += c
		}
		at = 0
		for j := range n {
			from := 0 // rank j's block for this rank starts after its blocks for ranks below this one
			for k := range me {
				from += j + k
			}
			for i := range rc[j] {
				if a2aRecv[at+i] != int32(100*j+from+i) {
					return fmt.Errorf("alltoallv: block from %d element %d = %d, want %d", j, i, a2aRecv[at+i], 100*j+from+i)
				}
			}
			at += rc[j]
		}
		return nil
	}))
}
