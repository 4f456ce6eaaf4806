package shm

import (
	"context"
	"encoding/binary"
	"errors"
	"fmt"
	"io"
	"os"
	"strings"
	"testing"
	"time"

	"golang.org/x/sys/unix"

	"github.com/gocoll/gocoll/core"
	"github.com/gocoll/gocoll/generated/coll"
	"github.com/gocoll/gocoll/internal/memstore"
	"github.com/gocoll/gocoll/internal/proctest"
)

func newSharedStore() core.Store { return memstore.New() }

func registerBodies() {
	proctest.Register("conform", conformBody)
	proctest.Register("mismatch", mismatchBody)
	proctest.Register("abort", abortBody)
	proctest.Register("kill", killBody)
	proctest.Register("many", manyBody)
	proctest.Register("sleepcpu", sleepCPUBody)
	proctest.Register("bench", benchBody)
}

func i32s(vals ...int32) []byte {
	b := make([]byte, 4*len(vals))
	for i, v := range vals {
		binary.LittleEndian.PutUint32(b[4*i:], uint32(v))
	}
	return b
}

func allreduceI32(ctx context.Context, c core.Comm, send, recv []byte) error {
	return c.Do(ctx, &core.Request{Kind: core.KindAllreduce, DType: coll.DTypeInt32, Op: coll.OpSum, Count: len(send) / 4, Send: send, Recv: recv})
}

func TestSmoke(t *testing.T) {
	for _, n := range []int{1, 2, 3, 5} {
		mustOK(t, goRanks(t, n, nil, func(ctx context.Context, b *core.Guard) error {
			for _, count := range []int{1, 5000, 300000, 1 << 20} {
				send := make([]byte, 4*count)
				for i := 0; i < count; i++ {
					binary.LittleEndian.PutUint32(send[4*i:], uint32(b.Rank()+i))
				}
				recv := make([]byte, 4*count)
				if err := allreduceI32(ctx, b, send, recv); err != nil {
					return err
				}
				for i := 0; i < count; i++ {
					want := uint32(n*(n-1)/2 + n*i)
					if got := binary.LittleEndian.Uint32(recv[4*i:]); got != want {
						return fmt.Errorf("count %d: element %d = %d, want %d", count, i, got, want)
					}
				}
			}
			return b.Do(ctx, &core.Request{Kind: core.KindBarrier})
		}))
	}
}

// TestClosedPeer: a rank that closes makes its peers' next collective fail
// at once, naming it, instead of waiting for the timeout.
func TestClosedPeer(t *testing.T) {
	errs := goRanks(t, 3, nil, func(ctx context.Context, b *core.Guard) error {
		if b.Rank() == 2 {
			return nil // closes
		}
		err := allreduceI32(ctx, b, i32s(1), make([]byte, 4))
		var pe *core.PeerError
		if !errors.As(err, &pe) || len(pe.Ranks) != 1 || pe.Ranks[0] != 2 {
			return fmt.Errorf("want a PeerError naming rank 2, got %v", err)
		}
		return nil
	})
	mustOK(t, errs)
}

func TestTimeoutNamesMissingRank(t *testing.T) {
	errs := goRanks(t, 3, nil, func(ctx context.Context, b *core.Guard) error {
		if b.Rank() == 1 {
			time.Sleep(1500 * time.Millisecond) // never calls the collective
			return nil
		}
		ctx, cancel := context.WithTimeout(ctx, 300*time.Millisecond)
		defer cancel()
		err := allreduceI32(ctx, b, i32s(1), make([]byte, 4))
		var pe *core.PeerError
		if !errors.As(err, &pe) || !errors.Is(err, context.DeadlineExceeded) || len(pe.Ranks) == 0 || pe.Ranks[0] != 1 {
			return fmt.Errorf("want a deadline PeerError naming rank 1, got %v", err)
		}
		if err := allreduceI32(context.Background(), b, i32s(1), make([]byte, 4)); err == nil {
			return errors.New("a collective after a timeout succeeded; ranks are out of step")
		}
		return nil
	})
	mustOK(t, errs)
}

// killBody loops allreduces of mixed sizes; the parent kills rank 2 once
// it has done some. The others must fail naming rank 2 as dead.
func killBody(ctx context.Context, r *proctest.Rank) error {
	b, err := newProcComm(ctx, r, "shm/", WithBufferSize(64<<10))
	if err != nil {
		return err
	}
	defer b.Close()
	send := make([]byte, 1<<20)
	recv := make([]byte, 1<<20)
	for i := 0; ; i++ {
		if i == 50 && r.Rank == 2 {
			r.Mark("victim-running")
		}
		sz := []int{4, 4096, 1 << 20}[i%3]
		if err := allreduceI32(ctx, b, send[:sz], recv[:sz]); err != nil {
			return err
		}
	}
}

func shmEntries() map[string]bool {
	m := map[string]bool{}
	ents, _ := os.ReadDir("/dev/shm")
	for _, e := range ents {
		m[e.Name()] = true
	}
	return m
}

func TestKillProcesses(t *testing.T) {
	before := shmEntries()
	res := procRanks(t, "kill", 4,
		proctest.KillOnMark(2, "victim-running"),
		proctest.Env("SHMTEST_TIMEOUT=20s"),
		proctest.ExpectError("rank(s) 2 did not take part: the process exited", 0, 1, 3))
	for _, r := range res {
		if r.Rank != 2 {
			t.Logf("rank %d: %s after %v", r.Rank, r.Err, r.Duration)
		}
	}
	for name := range shmEntries() {
		if !before[name] && strings.Contains(name, "gocoll") {
			t.Errorf("/dev/shm/%s appeared during the run", name)
		}
	}
}

// manyBody: 10,000 back-to-back allreduces of mixed sizes, each checked.
func manyBody(ctx context.Context, r *proctest.Rank) error {
	b, err := newProcComm(ctx, r, "shm/", WithBufferSize(64<<10))
	if err != nil {
		return err
	}
	defer b.Close()
	return manyAllreduces(ctx, b, 10000)
}

func manyAllreduces(ctx context.Context, b *core.Guard, iters int) error {
	n := b.Size()
	sizes := []int{1, 2, 100, 1000, 5000, 1, 7, 20000} // elements; 20000 int32 = 80 KB: two chunks
	send := make([]byte, 4*60000)
	recv := make([]byte, 4*60000)
	for i := 0; i < iters; i++ {
		count := sizes[i%len(sizes)]
		if i%100 == 99 {
			count = 60000 // four chunks
		}
		for k := 0; k < count; k++ {
			binary.LittleEndian.PutUint32(send[4*k:], uint32(b.Rank()*7+k+i))
		}
		inPlace := i%3 == 0
		out := recv[:4*count]
		if inPlace {
			out = send[:4*count]
		}
		if err := allreduceI32(ctx, b, send[:4*count], out); err != nil {
			return fmt.Errorf("iteration %d: %w", i, err)
		}
		for _, k := range []int{0, count / 2, count - 1} {
			want := uint32(7*n*(n-1)/2 + n*(k+i))
			if got := binary.LittleEndian.Uint32(out[4*k:]); got != want {
				return fmt.Errorf("iteration %d (count %d): element %d = %d, want %d", i, count, k, got, want)
			}
		}
	}
	return nil
}

func TestManyAllreducesProcesses(t *testing.T) {
	procRanks(t, "many", 4)
}

func TestManyAllreducesGoroutines(t *testing.T) {
	mustOK(t, goRanks(t, 3, []Option{WithBufferSize(64 << 10)}, func(ctx context.Context, b *core.Guard) error {
		return manyAllreduces(ctx, b, 1000)
	}))
}

func cpuTime() time.Duration {
	var ru unix.Rusage
	unix.Getrusage(unix.RUSAGE_SELF, &ru)
	return time.Duration(ru.Utime.Nano() + ru.Stime.Nano())
}

// sleepCPUBody: rank 0 waits about a second in an allreduce for rank 1;
// it reports the CPU time its process used meanwhile.
func sleepCPUBody(ctx context.Context, r *proctest.Rank) error {
	b, err := newProcComm(ctx, r, "shm/")
	if err != nil {
		return err
	}
	defer b.Close()
	if err := allreduceI32(ctx, b, i32s(1), make([]byte, 4)); err != nil { // both ready
		return err
	}
	if r.Rank == 1 {
		time.Sleep(time.Second)
		return allreduceI32(ctx, b, i32s(1), make([]byte, 4))
	}
	c0, t0 := cpuTime(), time.Now()
	if err := allreduceI32(ctx, b, i32s(1), make([]byte, 4)); err != nil {
		return err
	}
	cpu, wall := cpuTime()-c0, time.Since(t0)
	fmt.Printf("blocked %v in an allreduce, using %v of CPU (%.2f%% of a core)\n", wall, cpu, 100*cpu.Seconds()/wall.Seconds())
	// A resource bound, not a speed one: a sleeping waiter wakes every
	// 20 ms to check its peers; spinning through the second would use 100%.
	if wall > 500*time.Millisecond && cpu > wall/5 {
		return fmt.Errorf("blocked %v but used %v of CPU: the waiter does not sleep", wall, cpu)
	}
	return nil
}

func TestBlockedRankSleeps(t *testing.T) {
	res := procRanks(t, "sleepcpu", 2)
	for _, r := range res {
		if r.Rank == 0 {
			t.Log(strings.TrimSpace(r.Output))
		}
	}
}

func TestAllocZeroCopy(t *testing.T) {
	mustOK(t, goRanks(t, 2, []Option{WithHeapSize(2 << 20), WithBufferSize(64 << 10)}, func(ctx context.Context, g *core.Guard) error {
		b := backend(g)
		buf, err := b.Alloc(300000 * 4)
		if err != nil {
			return err
		}
		if _, err := b.Alloc(1 << 20); err == nil { // 1.2 MB of 2 MiB are taken
			return errors.New("Alloc beyond the heap succeeded")
		}
		for i := 0; i < 300000; i++ {
			binary.LittleEndian.PutUint32(buf[4*i:], uint32(i*(b.Rank()+1)))
		}
		if err := allreduceI32(ctx, g, buf, buf); err != nil {
			return err
		}
		for i := 0; i < 300000; i++ {
			if got := binary.LittleEndian.Uint32(buf[4*i:]); got != uint32(3*i) {
				return fmt.Errorf("element %d = %d, want %d", i, got, 3*i)
			}
		}
		if err := b.Free(buf); err != nil {
			return err
		}
		if err := b.Free(buf); err == nil {
			return errors.New("double Free succeeded")
		}
		big, err := b.Alloc(2 << 20)
		if err != nil {
			return fmt.Errorf("after Free the whole heap should be free: %w", err)
		}
		return b.Free(big)
	}))
}

func TestNoHeap(t *testing.T) {
	mustOK(t, goRanks(t, 1, nil, func(ctx context.Context, g *core.Guard) error {
		if _, err := backend(g).Alloc(10); err == nil || !strings.Contains(err.Error(), "WithHeapSize") {
			return fmt.Errorf("want an error pointing at WithHeapSize, got %v", err)
		}
		return nil
	}))
}

func TestTooBigWorkspace(t *testing.T) {
	// 1 TiB of buffers cannot be reserved: the error must say how much.
	errs := goRanks(t, 1, []Option{WithHeapSize(1 << 40)}, func(ctx context.Context, g *core.Guard) error { return nil })
	if errs[0] == nil || !strings.Contains(errs[0].Error(), "WithHeapSize") {
		t.Fatalf("want a clear out-of-memory error, got %v", errs[0])
	}
	t.Log(errs[0])
}

// TestCloseWhileWaiting: Close from another goroutine ends a call blocked
// on a peer with core.ErrClosed within a few milliseconds.
func TestCloseWhileWaiting(t *testing.T) {
	mustOK(t, goRanks(t, 2, nil, func(ctx context.Context, g *core.Guard) error {
		if g.Rank() == 1 {
			time.Sleep(time.Second) // alive, but never joins
			return nil
		}
		b := backend(g)
		done := make(chan error, 1)
		go func() { done <- b.Run(ctx, &core.Request{Kind: core.KindBarrier}) }()
		time.Sleep(100 * time.Millisecond)
		if err := b.Close(); err != nil {
			return err
		}
		if err := <-done; !errors.Is(err, core.ErrClosed) {
			return fmt.Errorf("the call blocked during Close returned %v, want core.ErrClosed", err)
		}
		if err := b.Run(ctx, &core.Request{Kind: core.KindBarrier}); !errors.Is(err, core.ErrClosed) {
			return fmt.Errorf("a call after Close returned %v, want core.ErrClosed", err)
		}
		return nil
	}))
}

func openFDs() int {
	ents, _ := os.ReadDir("/proc/self/fd")
	return len(ents)
}

// TestNoLeaks: building and closing backends leaves no descriptor behind.
func TestNoLeaks(t *testing.T) {
	mustOK(t, goRanks(t, 2, nil, func(ctx context.Context, g *core.Guard) error { return nil }))
	before := openFDs()
	for i := 0; i < 10; i++ {
		mustOK(t, goRanks(t, 3, []Option{WithBufferSize(4096)}, func(ctx context.Context, g *core.Guard) error {
			return g.Do(ctx, &core.Request{Kind: core.KindBarrier})
		}))
	}
	if after := openFDs(); after > before {
		t.Errorf("%d descriptors open before, %d after 10 backends came and went", before, after)
	}
}

// TestSetupNamesAbsentRank: New on rank 0 fails within its context's
// deadline naming the local rank that never connected; no descriptor leaks.
func TestSetupNamesAbsentRank(t *testing.T) {
	before := openFDs()
	st := memstore.New()
	ctx, cancel := context.WithTimeout(context.Background(), 300*time.Millisecond)
	defer cancel()
	errs := make(chan error, 2)
	for r := 0; r < 2; r++ {
		go func() {
			g := core.Group{Rank: r, Size: 3, Store: st, JobID: "absent", Timeout: time.Minute}
			b, err := New(ctx, g)
			if err == nil {
				b.Close()
			}
			errs <- err
		}()
	}
	for i := 0; i < 2; i++ {
		err := <-errs
		// Rank 0 waits for rank 2 until the deadline. Rank 1 waits for
		// rank 0's workspace: it reaches the deadline too, or first sees
		// rank 0 give up and close the connection (EOF), which names
		// rank 0 with that cause.
		var pe *core.PeerError
		if !errors.As(err, &pe) || len(pe.Ranks) != 1 {
			t.Errorf("want a PeerError naming one rank, got %v", err)
			continue
		}
		switch {
		case pe.Ranks[0] == 2 && !errors.Is(err, context.DeadlineExceeded):
			t.Errorf("rank 2 named without the deadline as the cause: %v", err)
		case pe.Ranks[0] == 0 && !errors.Is(err, context.DeadlineExceeded) && !errors.Is(err, io.EOF):
			t.Errorf("rank 0 named, neither at the deadline nor for closing its connection: %v", err)
		case pe.Ranks[0] != 2 && pe.Ranks[0] != 0:
			t.Errorf("want rank 2 (or, on rank 1, rank 0 that gave up) named, got %v", err)
		}
		t.Log(err)
	}
	time.Sleep(50 * time.Millisecond) // let the connections' finalizers settle
	if after := openFDs(); after > before {
		t.Errorf("%d descriptors before, %d after the failed setup", before, after)
	}
}
