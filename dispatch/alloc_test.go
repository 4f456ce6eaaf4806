package dispatch

import (
	"context"
	"errors"
	"fmt"
	"testing"
	"time"
	"unsafe"

	"github.com/gocoll/gocoll/backends/shm"
	"github.com/gocoll/gocoll/generated/coll"
	"github.com/gocoll/gocoll/internal/memstore"
)

// Alloc hands out buffers in the shm backend's shared heap (sized through
// WithShm), an allreduce reading one in place gets the right sum, and
// backends without shared memory still give usable buffers.
func TestAlloc(t *testing.T) {
	const n, count = 3, 1 << 18 // large enough for the zero-copy path
	for _, backend := range []string{"shm", "kv"} {
		t.Run(backend, func(t *testing.T) {
			s := memstore.New()
			errs := goRanks(n, func(r int) []Option {
				return []Option{WithStore(s), WithRank(r), WithSize(n), WithNodeID("one"), WithBackend(backend),
					WithTimeout(20 * time.Second), WithShm(shm.WithHeapSize(8 << 20))}
			}, func(ctx context.Context, c *Comm) error {
				buf, err := c.Alloc(4 * count)
				if err != nil {
					return fmt.Errorf("Alloc: %w", err)
				}
				if len(buf) != 4*count {
					return fmt.Errorf("Alloc gave %d bytes, want %d", len(buf), 4*count)
				}
				send := unsafe.Slice((*float32)(unsafe.Pointer(unsafe.SliceData(buf))), count)
				for i := range send {
					send[i] = float32(c.Rank() + i%7)
				}
				recv := make([]float32, count)
				if err := coll.AllreduceFloat32(ctx, c, send, recv, coll.OpSum); err != nil {
					return err
				}
				for i, v := range recv {
					if want := float32(0 + 1 + 2 + n*(i%7)); v != want {
						return fmt.Errorf("recv[%d] = %v, want %v", i, v, want)
					}
				}
				return c.Free(buf)
			})
			checkErrs(t, errs)
		})
	}
	// Without a heap the shm backend says so instead of handing out
	// private memory the caller believes is shared.
	s := memstore.New()
	errs := goRanks(1, func(r int) []Option {
		return []Option{WithStore(s), WithRank(r), WithSize(1), WithBackend("shm"), WithTimeout(5 * time.Second)}
	}, func(ctx context.Context, c *Comm) error {
		_, err := c.Alloc(64)
		if err == nil {
			return errors.New("Alloc without a heap succeeded")
		}
		return nil
	})
	checkErrs(t, errs)
}
