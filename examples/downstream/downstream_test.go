package downstream

import (
	"context"
	"fmt"
	"io"
	"log/slog"
	"sync"
	"testing"
	"time"

	"example.com/downstream/internal/mycoll"
	"github.com/gocoll/gocoll/dispatch"
	"github.com/gocoll/gocoll/store"
)

// TestWithGocollRuntime runs this module's generated API over gocoll's
// runtime: four goroutine ranks meet through a real store server and run
// collectives on the backend dispatch picks (shared memory: one node).
func TestWithGocollRuntime(t *testing.T) {
	const size, count = 4, 1000
	secret := []byte("downstream example secret")
	srv, err := store.Listen("127.0.0.1:0", secret)
	if err != nil {
		t.Fatal(err)
	}
	defer srv.Close()
	quiet := slog.New(slog.NewTextHandler(io.Discard, nil))

	errs := make([]error, size)
	var wg sync.WaitGroup
	for rank := range size {
		wg.Add(1)
		go func() {
			defer wg.Done()
			errs[rank] = runRank(srv.Addr(), secret, quiet, rank, size, count)
		}()
	}
	wg.Wait()
	for r, err := range errs {
		if err != nil {
			t.Errorf("rank %d: %v", r, err)
		}
	}
}

func runRank(addr string, secret []byte, log *slog.Logger, rank, size, count int) error {
	ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
	defer cancel()
	st, err := store.Dial(ctx, addr, secret)
	if err != nil {
		return err
	}
	defer st.Close()
	c, err := dispatch.Init(ctx, dispatch.WithStore(st), dispatch.WithRank(rank), dispatch.WithSize(size),
		dispatch.WithLogger(log), dispatch.WithEnviron(nil))
	if err != nil {
		return err
	}
	defer c.Close()

	// bfloat16 allreduce: small integers are exact in bfloat16, so the sum
	// is known exactly.
	send := make([]mycoll.BFloat16, count)
	for i := range send {
		send[i] = mycoll.BFloat16FromFloat32(float32(rank + i%7))
	}
	recv := make([]mycoll.BFloat16, count)
	if err := mycoll.AllreduceBFloat16(ctx, c, send, recv, mycoll.OpSum); err != nil {
		return err
	}
	for i, v := range recv {
		want := float32(size*(size-1)/2 + size*(i%7))
		if v.Float32() != want {
			return fmt.Errorf("allreduce: element %d = %v, want %v", i, v, want)
		}
	}

	// float32 allgather and broadcast.
	mine := []float32{float32(rank), float32(rank) / 2}
	all := make([]float32, len(mine)*size)
	if err := mycoll.AllgatherFloat32(ctx, c, mine, all); err != nil {
		return err
	}
	for r := range size {
		if all[2*r] != float32(r) || all[2*r+1] != float32(r)/2 {
			return fmt.Errorf("allgather: block %d = %v", r, all[2*r:2*r+2])
		}
	}
	buf := []float32{float32(rank), 42}
	if err := mycoll.BroadcastFloat32(ctx, c, buf, 2); err != nil {
		return err
	}
	if buf[0] != 2 || buf[1] != 42 {
		return fmt.Errorf("broadcast from rank 2: got %v", buf)
	}
	return mycoll.Barrier(ctx, c)
}
