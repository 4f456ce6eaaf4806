// Package checked runs collectives whose results the calling test can
// verify exactly, for the real-process tests of shrinking and groups.
package checked

import (
	"context"
	"fmt"

	"github.com/gocoll/gocoll/dispatch"
	"github.com/gocoll/gocoll/generated/coll"
)

// Allreduce is allreduce #step of count int64 on c, with its sum checked:
// each rank contributes its world rank + step + the element's index, so
// that a rank a step ahead or behind, a mispaired call or a stale buffer
// cannot pass.
func Allreduce(ctx context.Context, c *dispatch.Comm, step, count int) error {
	send, recv := make([]int64, count), make([]int64, count)
	for j := range send {
		send[j] = int64(c.WorldRank() + step + j)
	}
	if err := coll.AllreduceInt64(ctx, c, send, recv, coll.OpSum); err != nil {
		return err
	}
	var base int64
	for _, w := range c.Ranks() {
		base += int64(w + step)
	}
	for j, v := range recv {
		if want := base + int64(c.Size()*j); v != want {
			return fmt.Errorf("allreduce #%d: element %d = %d, want %d", step, j, v, want)
		}
	}
	return nil
}
