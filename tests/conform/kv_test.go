package conform

import (
	"context"
	"fmt"
	"sync"
	"testing"
	"time"

	"github.com/gocoll/gocoll/backends/kv"
	"github.com/gocoll/gocoll/core"
	"github.com/gocoll/gocoll/internal/memstore"
)

// TestKVGoroutineRanks runs the whole runner over a real backend (the
// store-based one) with goroutine ranks: the runner's own smoke test
// against code it did not write.
func TestKVGoroutineRanks(t *testing.T) {
	for _, np := range []int{1, 2, 3, 4} {
		t.Run(fmt.Sprint("np", np), func(t *testing.T) {
			st := memstore.New()
			ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
			defer cancel()
			errs := make([]error, np)
			var wg sync.WaitGroup
			for r := range np {
				wg.Go(func() {
					b, err := kv.New(ctx, core.Group{Rank: r, Size: np, Store: st, JobID: "conform", Timeout: 30 * time.Second})
					if err != nil {
						errs[r] = err
						return
					}
					g := core.NewGuard(b)
					defer g.Close()
					errs[r] = Run(ctx, g, Options{Sizes: []int{0, 1, 7, 300}})
				})
			}
			wg.Wait()
			for r, err := range errs {
				if err != nil {
					t.Errorf("rank %d: %v", r, err)
				}
			}
		})
	}
}
