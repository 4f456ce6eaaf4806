package hier

import (
	"context"
	"errors"
	"fmt"
	"testing"

	"github.com/gocoll/gocoll/core"
	"github.com/gocoll/gocoll/tests/conform"
)

// The vector collectives run on World; the conformance suite checks them
// through hier at uneven layouts, and a counts disagreement fails every
// rank with a counts MismatchError, after which the next call lines up.
func TestVectorCollectives(t *testing.T) {
	for _, nodes := range [][][]int{{{0, 3}, {1, 2}, {4}}, {{0, 1}, {2, 3}}} {
		t.Run(fmt.Sprint(nodes), func(t *testing.T) {
			errs := memJob(t, nodes, func(ctx context.Context, g *core.Guard) error {
				if err := conform.Run(ctx, g, conform.Options{Sizes: []int{0, 1, 7}, NoRandom: true,
					Filter: func(c conform.Case) bool { return c.Kind.Shape().Vector() }}); err != nil {
					return err
				}
				counts := make([]int, g.Size())
				for j := range counts {
					counts[j] = j
				}
				if g.Rank() == 1 {
					counts[0] = 5
				}
				err := g.Do(ctx, &core.Request{Kind: core.KindAllgatherv, DType: 1, RecvCounts: counts,
					Send: make([]byte, 4*counts[g.Rank()]), Recv: make([]byte, 4*(sumOf(counts)))})
				var me *core.MismatchError
				if !errors.As(err, &me) || me.Field != "counts" {
					return fmt.Errorf("allgatherv with rank 1's counts different: %v, want a counts MismatchError", err)
				}
				return lineUp(ctx, g)
			})
			noErrors(t, errs)
		})
	}
}

func sumOf(v []int) int {
	s := 0
	for _, c := range v {
		s += c
	}
	return s
}
