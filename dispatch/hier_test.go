package dispatch

import (
	"context"
	"errors"
	"fmt"
	"testing"
	"time"

	"github.com/gocoll/gocoll/core"
	"github.com/gocoll/gocoll/generated/coll"
	"github.com/gocoll/gocoll/internal/memstore"
	"github.com/gocoll/gocoll/tests/conform"
)

// val is rank r's element i: a small integer, so that every sum, product,
// min and max below is exact in every dtype and any order of folding
// gives the same bits as the flat left-to-right fold.
func val(r, i int) int { return (r*7 + i*3) % 4 }

// The hierarchical allreduce (shm within nodes, tcp between leaders)
// against results computed here, for several node layouts, dtypes, ops
// and sizes (the largest spans several shm chunks), in and out of place.
func TestHierAllreduce(t *testing.T) {
	if testing.Short() {
		t.Skip("starts shm and tcp groups")
	}
	for _, layout := range [][]string{{"a", "a", "b", "b"}, {"a", "b", "b", "a", "c"}} {
		n := len(layout)
		t.Run(fmt.Sprint(layout), func(t *testing.T) {
			s := memstore.New()
			errs := goRanks(n, func(r int) []Option {
				return []Option{WithStore(s), WithRank(r), WithSize(n), WithNodeID(layout[r]), WithTimeout(30 * time.Second)}
			}, func(ctx context.Context, c *Comm) error {
				if c.Backend() != "shm+tcp" {
					return fmt.Errorf("backend %q, want shm+tcp", c.Backend())
				}
				for _, count := range []int{1, 1000, 300_000} {
					if err := hierCase(ctx, c, count); err != nil {
						return fmt.Errorf("count %d: %w", count, err)
					}
				}
				return c.Barrier(ctx)
			})
			checkErrs(t, errs)
		})
	}
}

func hierCase(ctx context.Context, c *Comm, count int) error {
	n, me := c.Size(), c.Rank()
	fold := func(i int, op core.Op) int {
		acc := val(0, i)
		for r := 1; r < n; r++ {
			v := val(r, i)
			switch op {
			case coll.OpSum, coll.OpAvg:
				acc += v
			case coll.OpProd:
				acc *= v
			case coll.OpMax:
				acc = max(acc, v)
			case coll.OpMin:
				acc = min(acc, v)
			}
		}
		return acc
	}
	for _, op := range []core.Op{coll.OpSum, coll.OpProd, coll.OpMax, coll.OpMin, coll.OpAvg} {
		f32 := make([]float32, count)
		bf := make([]coll.BFloat16, count)
		for i := range f32 {
			f32[i] = float32(val(me, i))
			bf[i] = coll.BFloat16FromFloat32(float32(val(me, i)))
		}
		out := make([]float32, count)
		if err := coll.AllreduceFloat32(ctx, c, f32, out, op); err != nil {
			return fmt.Errorf("float32 %v: %w", op, err)
		}
		// In place, bfloat16.
		if err := coll.AllreduceBFloat16(ctx, c, bf, bf, op); err != nil {
			return fmt.Errorf("bfloat16 %v: %w", op, err)
		}
		for i := range out {
			want := float32(fold(i, op))
			if op == coll.OpAvg {
				want /= float32(n)
			}
			if out[i] != want {
				return fmt.Errorf("float32 %v [%d] = %v, want %v", op, i, out[i], want)
			}
			if wb := coll.BFloat16FromFloat32(want); bf[i] != wb {
				return fmt.Errorf("bfloat16 %v [%d] = %v, want %v", op, i, bf[i].Float32(), wb.Float32())
			}
		}
		if op == coll.OpAvg {
			continue
		}
		u8 := make([]uint8, count)
		for i := range u8 {
			u8[i] = uint8(val(me, i) * 50) // sums wrap around
		}
		if err := coll.AllreduceUint8(ctx, c, u8, u8, op); err != nil {
			return fmt.Errorf("uint8 %v: %w", op, err)
		}
		for i := range u8 {
			acc := uint8(val(0, i) * 50)
			for r := 1; r < n; r++ {
				v := uint8(val(r, i) * 50)
				switch op {
				case coll.OpSum:
					acc += v
				case coll.OpProd:
					acc *= v
				case coll.OpMax:
					acc = max(acc, v)
				case coll.OpMin:
					acc = min(acc, v)
				}
			}
			if u8[i] != acc {
				return fmt.Errorf("uint8 %v [%d] = %d, want %d", op, i, u8[i], acc)
			}
		}
	}
	return nil
}

// A disagreement inside one node must not leave the other nodes waiting:
// every rank, on every node, returns a MismatchError naming the field and
// the rank that disagreed, at once (not at the timeout, which would be a
// PeerError), and the next collective lines up.
func TestHierMismatchFailsEveryRank(t *testing.T) {
	s := memstore.New()
	layout := []string{"a", "a", "b", "b", "c"}
	const odd = 1
	errs := goRanks(len(layout), func(r int) []Option {
		return []Option{WithStore(s), WithRank(r), WithSize(len(layout)), WithNodeID(layout[r]), WithTimeout(time.Minute)}
	}, func(ctx context.Context, c *Comm) error {
		count := 8
		if c.Rank() == odd {
			count = 9
		}
		send, recv := make([]float32, count), make([]float32, count)
		err := coll.AllreduceFloat32(ctx, c, send, recv, coll.OpSum)
		var me *core.MismatchError
		if !errors.As(err, &me) || me.Field != "count" || me.Rank != c.Rank() || (c.Rank() != odd && me.Peer != odd) {
			return fmt.Errorf("want a count MismatchError naming rank %d, got %v", odd, err)
		}
		return c.Barrier(ctx)
	})
	checkErrs(t, errs)
}

// The conformance suite over the hierarchical backend built from real
// shm and tcp groups, for every collective (staged or not) at node
// layouts with uneven nodes and ranks of a node not contiguous.
func TestHierConformance(t *testing.T) {
	if testing.Short() {
		t.Skip("starts shm and tcp groups")
	}
	for _, layout := range [][]string{{"a", "a", "b"}, {"a", "b", "b", "a", "c"}} {
		n := len(layout)
		t.Run(fmt.Sprint(layout), func(t *testing.T) {
			s := memstore.New()
			errs := goRanks(n, func(r int) []Option {
				return []Option{WithStore(s), WithRank(r), WithSize(n), WithNodeID(layout[r]), WithTimeout(30 * time.Second)}
			}, func(ctx context.Context, c *Comm) error {
				if c.Backend() != "shm+tcp" {
					return fmt.Errorf("backend %q, want shm+tcp", c.Backend())
				}
				if err := conform.Run(ctx, c, conform.Options{Sizes: []int{0, 1, 7, 1001}, RandomSizes: []int{7}}); err != nil {
					return err
				}
				// Blocks that span several of shm's default chunks (512 KiB), in float32.
				return conform.Run(ctx, c, conform.Options{Bytes: []int{3 << 19}, NoRandom: true, NoInPlace: true,
					Filter: func(k conform.Case) bool { return k.DType == coll.DTypeFloat32 }})
			})
			for r, err := range errs {
				if err != nil {
					t.Errorf("rank %d: %v", r, err)
				}
			}
		})
	}
}
