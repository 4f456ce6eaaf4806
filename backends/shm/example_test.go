package shm_test

import (
	"context"
	"fmt"
	"time"

	"github.com/gocoll/gocoll/backends/shm"
	"github.com/gocoll/gocoll/core"
	"github.com/gocoll/gocoll/generated/coll"
	"github.com/gocoll/gocoll/internal/memstore"
)

// A zero-copy allreduce: the input lives in the shared workspace, so peers
// read it in place. (One rank here; every local rank does the same.)
func ExampleBackend_Alloc() {
	ctx := context.Background()
	g := core.Group{Rank: 0, Size: 1, Store: memstore.New(), JobID: "example", Timeout: time.Minute}
	b, err := shm.New(ctx, g, shm.WithHeapSize(1<<20))
	if err != nil {
		panic(err)
	}
	defer b.Close()
	buf, err := b.Alloc(4 * 1024) // 1024 float32s
	if err != nil {
		panic(err)
	}
	defer b.Free(buf)
	buf[0] = 1
	// Every call goes through a core.Guard: it checks the request once
	// and owns the communicator's failure state.
	comm := core.NewGuard(b)
	err = comm.Do(ctx, &core.Request{Kind: core.KindAllreduce, DType: coll.DTypeFloat32, Op: coll.OpSum,
		Count: 1024, Send: buf, Recv: buf})
	fmt.Println(err, b.Name())
	// Output: <nil> shm
}
