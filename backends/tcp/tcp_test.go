package tcp

import (
	"context"
	"errors"
	"fmt"
	"io"
	"net"
	"runtime"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/gocoll/gocoll/core"
	"github.com/gocoll/gocoll/generated/coll"
	"github.com/gocoll/gocoll/internal/memstore"
	"github.com/gocoll/gocoll/tests/conform"
)

var testSecret = []byte("tcp backend test secret")

// rank is one rank of a test group: its backend, and the communicator
// boundary (core.Guard) that calls go through, as they do in use.
type rank struct {
	*Backend
	c *core.Guard
}

func ranks(bs []*Backend) []rank {
	rs := make([]rank, len(bs))
	for i, b := range bs {
		rs[i] = rank{b, core.NewGuard(b)}
	}
	return rs
}

// group starts n ranks as goroutines of this process over loopback, meeting
// through an in-memory store, and closes them when the test ends.
func group(t testing.TB, n int, opts ...Option) []rank {
	return groupEach(t, n, func(int) []Option { return opts })
}

// groupEach is group with options per rank.
func groupEach(t testing.TB, n int, opts func(r int) []Option) []rank {
	t.Helper()
	st := memstore.New()
	bs := make([]*Backend, n)
	errs := make([]error, n)
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	var wg sync.WaitGroup
	for r := range n {
		wg.Go(func() {
			g := core.Group{Rank: r, Size: n, Store: core.WithPrefix(st, "tcp/"), JobID: "test", Secret: testSecret, Timeout: 30 * time.Second}
			bs[r], errs[r] = New(ctx, g, append([]Option{WithAddress("127.0.0.1")}, opts(r)...)...)
		})
	}
	wg.Wait()
	for r, err := range errs {
		if err != nil {
			for _, b := range bs {
				if b != nil {
					b.Close()
				}
			}
			t.Fatalf("rank %d: New: %v", r, err)
		}
	}
	t.Cleanup(func() {
		for _, b := range bs {
			b.Close()
		}
	})
	return ranks(bs)
}

// each runs f on every rank concurrently and returns the errors by rank.
func each(rs []rank, f func(b rank) error) []error {
	errs := make([]error, len(rs))
	var wg sync.WaitGroup
	for r, b := range rs {
		wg.Go(func() { errs[r] = f(b) })
	}
	wg.Wait()
	return errs
}

func noErrors(t testing.TB, errs []error) {
	t.Helper()
	for r, err := range errs {
		if err != nil {
			t.Errorf("rank %d: %v", r, err)
		}
	}
	if t.Failed() {
		t.FailNow()
	}
}

// smallAlgos makes small test sizes take every algorithm: recursive
// doubling up to 64 bytes, Rabenseifner up to 512, the ring above with
// 64-byte chunks; trees up to 256 bytes, chains above.
var smallAlgos = []Option{WithThresholds(64, 512, 256), WithChunkSize(64)}

// conformOptions are the conformance sizes for smallAlgos: empty, one
// element, and sizes that leave remainders when cut into blocks and
// chunks and that reach every algorithm for every dtype.
var conformOptions = conform.Options{Sizes: []int{0, 1, 7, 33, 300}, RandomSizes: []int{7, 300}}

// runConform runs the conformance suite on c.
func runConform(ctx context.Context, c core.Comm) error {
	return conform.Run(ctx, c, conformOptions)
}

func TestConformanceLoopback(t *testing.T) {
	maxNP := 8
	if testing.Short() {
		maxNP = 4
	}
	for np := 1; np <= maxNP; np++ {
		t.Run(fmt.Sprintf("np=%d", np), func(t *testing.T) {
			bs := group(t, np, smallAlgos...)
			ctx := context.Background()
			noErrors(t, each(bs, func(b rank) error {
				return runConform(ctx, b.c)
			}))
		})
	}
}

// TestAllreduceAlgorithms forces each allreduce algorithm over sizes that
// do not divide evenly, at group sizes that are and are not powers of two.
func TestAllreduceAlgorithms(t *testing.T) {
	for _, algo := range []Algorithm{RecursiveDoubling, Rabenseifner, Ring} {
		for _, np := range []int{2, 3, 5, 6} {
			t.Run(fmt.Sprintf("%v/np=%d", algo, np), func(t *testing.T) {
				bs := group(t, np, WithAllreduceAlgorithm(algo), WithChunkSize(256))
				noErrors(t, each(bs, func(b rank) error {
					for _, count := range []int{0, 1, np - 1, 1000, 4099} {
						for _, op := range []core.Op{coll.OpSum, coll.OpMax, coll.OpAvg} {
							for _, inPlace := range []bool{false, true} {
								if err := checkAllreduceF32(b, count, op, inPlace); err != nil {
									return fmt.Errorf("count %d op %v in place %v: %w", count, op, inPlace, err)
								}
							}
						}
					}
					return nil
				}))
			})
		}
	}
}

// checkAllreduceF32 runs one float32 allreduce of small integers, in place
// (send is recv) or not, and checks it exactly.
func checkAllreduceF32(b rank, count int, op core.Op, inPlace bool) error {
	n := b.Size()
	send := make([]float32, count)
	for i := range send {
		send[i] = float32((i*7+b.Rank()*3)%9 - 4)
	}
	recv := make([]float32, count)
	if inPlace {
		recv = send
	}
	if err := coll.AllreduceFloat32(context.Background(), b.c, send, recv, op); err != nil {
		return err
	}
	for i := range recv {
		var want float32
		for r := range n {
			v := float32((i*7+r*3)%9 - 4)
			switch {
			case r == 0:
				want = v
			case op == coll.OpMax:
				want = max(want, v)
			default:
				want += v
			}
		}
		if op == coll.OpAvg {
			want /= float32(n)
		}
		if recv[i] != want {
			return fmt.Errorf("element %d = %v, want %v", i, recv[i], want)
		}
	}
	return nil
}

func TestBroadcastReduceAlgorithms(t *testing.T) {
	for _, algo := range []Algorithm{BinomialTree, Chain} {
		for _, np := range []int{2, 3, 7} {
			t.Run(fmt.Sprintf("%v/np=%d", algo, np), func(t *testing.T) {
				bs := group(t, np, WithBroadcastAlgorithm(algo), WithReduceAlgorithm(algo), WithChunkSize(128))
				noErrors(t, each(bs, func(b rank) error {
					ctx := context.Background()
					for _, count := range []int{0, 1, 100, 5000} {
						for root := range np {
							buf := make([]int32, count)
							for i := range buf {
								buf[i] = int32(i + 1000*b.Rank())
							}
							if err := coll.BroadcastInt32(ctx, b.c, buf, root); err != nil {
								return err
							}
							for i, v := range buf {
								if v != int32(i+1000*root) {
									return fmt.Errorf("broadcast count %d root %d: element %d = %d", count, root, i, v)
								}
							}
							send := make([]int32, count)
							for i := range send {
								send[i] = int32(i * (b.Rank() + 1))
							}
							var recv []int32
							if b.Rank() == root {
								recv = make([]int32, count)
							}
							if err := coll.ReduceInt32(ctx, b.c, send, recv, coll.OpSum, root); err != nil {
								return err
							}
							for i, v := range recv {
								if want := int32(i * np * (np + 1) / 2); v != want {
									return fmt.Errorf("reduce count %d root %d: element %d = %d, want %d", count, root, i, v, want)
								}
							}
						}
					}
					return nil
				}))
			})
		}
	}
}

// TestLargeAllreduce moves enough data that the ring pipelines many chunks
// per segment, payloads are read with SO_RCVLOWAT raised and the kernel's
// socket buffers fill, with every allreduce algorithm.
func TestLargeAllreduce(t *testing.T) {
	np := 3
	count := 1<<20 + 5 // 4 MiB of float32
	for _, algo := range []Algorithm{RecursiveDoubling, Rabenseifner, Ring} {
		t.Run(algo.String(), func(t *testing.T) {
			bs := group(t, np, WithAllreduceAlgorithm(algo))
			noErrors(t, each(bs, func(b rank) error {
				send := make([]float32, count)
				for i := range send {
					send[i] = float32(i%1000 + b.Rank())
				}
				recv := make([]float32, count)
				if err := coll.AllreduceFloat32(context.Background(), b.c, send, recv, coll.OpSum); err != nil {
					return err
				}
				for i, v := range recv {
					if want := float32(np*(i%1000) + 3); v != want {
						return fmt.Errorf("element %d = %v, want %v", i, v, want)
					}
				}
				return nil
			}))
		})
	}
}

// TestPeerDies: a rank that vanishes mid-collective (its connections reset)
// makes every other rank fail with a PeerError naming it, well before the
// timeout.
func TestPeerDies(t *testing.T) {
	np := 4
	bs := group(t, np)
	const victim = 2
	ctx := context.Background()
	start := time.Now()
	errs := each(bs, func(b rank) error {
		if b.Rank() == victim {
			time.Sleep(100 * time.Millisecond)
			for _, p := range b.peers {
				if p != nil {
					p.data.SetLinger(0) // reset, as a killed process's would
					p.data.Close()
					p.ctl.SetLinger(0)
					p.ctl.Close()
				}
			}
			return nil
		}
		buf := make([]float32, 1<<16)
		return coll.AllreduceFloat32(ctx, b.c, buf, buf, coll.OpSum)
	})
	for r, err := range errs {
		if r == victim {
			continue
		}
		var pe *core.PeerError
		if !errors.As(err, &pe) {
			t.Errorf("rank %d: got %v, want a PeerError", r, err)
			continue
		}
		if len(pe.Ranks) != 1 || pe.Ranks[0] != victim {
			t.Errorf("rank %d: %v names ranks %v, want [%d]", r, err, pe.Ranks, victim)
		}
	}
	t.Logf("all ranks failed within %v; rank 0's error: %v", time.Since(start), errs[0])
}

// TestTimeoutNamesMissingRank: a rank that never calls the collective is
// named when the deadline passes.
func TestTimeoutNamesMissingRank(t *testing.T) {
	bs := group(t, 2)
	ctx, cancel := context.WithTimeout(context.Background(), 300*time.Millisecond)
	defer cancel()
	err := coll.Barrier(ctx, bs[0].c)
	var pe *core.PeerError
	if !errors.As(err, &pe) || len(pe.Ranks) != 1 || pe.Ranks[0] != 1 || !errors.Is(err, context.DeadlineExceeded) {
		t.Fatalf("got %v, want a PeerError naming rank 1 with DeadlineExceeded", err)
	}
	// Rank 1 is told: once the news is in, its next call fails at once,
	// naming rank 1 itself as the straggler.
	for i := 0; bs[1].failure.Load() == nil; i++ {
		if i > 500 {
			t.Fatal("rank 1 never heard of rank 0's timeout")
		}
		time.Sleep(10 * time.Millisecond)
	}
	err = coll.Barrier(context.Background(), bs[1].c)
	if !errors.As(err, &pe) {
		t.Fatalf("rank 1 after rank 0's timeout: got %v, want a PeerError", err)
	}
}

// TestCancel: cancelling one rank's context ends its call, and the others
// learn of it.
func TestCancel(t *testing.T) {
	bs := group(t, 3)
	ctx, cancel := context.WithCancel(context.Background())
	go func() { time.Sleep(50 * time.Millisecond); cancel() }()
	errs := each(bs, func(b rank) error {
		if b.Rank() == 0 {
			return coll.Barrier(ctx, b.c) // waits for rank 2, which never comes
		}
		if b.Rank() == 1 {
			return coll.Barrier(context.Background(), b.c)
		}
		return nil
	})
	if !errors.Is(errs[0], context.Canceled) {
		t.Errorf("rank 0: got %v, want context.Canceled", errs[0])
	}
	var pe *core.PeerError
	if !errors.As(errs[1], &pe) {
		t.Errorf("rank 1: got %v, want a PeerError", errs[1])
	}
}

// TestUnauthenticatedDropped: a connection that does not prove it holds the
// secret is closed before it can send a byte anywhere, and the group forms
// anyway.
func TestUnauthenticatedDropped(t *testing.T) {
	st := memstore.New()
	ps := core.WithPrefix(st, "tcp/")
	n := 2
	bs := make([]*Backend, n)
	errs := make([]error, n)
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	var wg sync.WaitGroup
	wg.Go(func() {
		bs[0], errs[0] = New(ctx, core.Group{Rank: 0, Size: n, Store: ps, JobID: "j", Secret: testSecret, Timeout: 30 * time.Second}, WithAddress("127.0.0.1"))
	})
	// Rank 0 is listening and waiting for rank 1. An intruder connects
	// first, with the wrong secret, pretending to be rank 1.
	addr, err := ps.Get(ctx, "addr/0")
	if err != nil {
		t.Fatal(err)
	}
	c, err := net.Dial("tcp", string(addr))
	if err != nil {
		t.Fatal(err)
	}
	derr := dialHandshake(c, []byte("wrong secret"), "j", 0, 1, connData)
	if derr == nil {
		t.Fatal("handshake with the wrong secret succeeded")
	}
	c.SetReadDeadline(time.Now().Add(5 * time.Second))
	if _, err := c.Read(make([]byte, 1)); err != io.EOF {
		t.Errorf("the intruder's connection was not closed: read returned %v", err)
	}
	c.Close()
	// A second intruder speaks garbage.
	c2, err := net.Dial("tcp", string(addr))
	if err != nil {
		t.Fatal(err)
	}
	c2.Write([]byte(strings.Repeat("GET / HTTP/1.0\r\n", 20)))
	c2.SetReadDeadline(time.Now().Add(5 * time.Second))
	io.Copy(io.Discard, c2) // returns when rank 0 closes it
	c2.Close()

	wg.Go(func() {
		bs[1], errs[1] = New(ctx, core.Group{Rank: 1, Size: n, Store: ps, JobID: "j", Secret: testSecret, Timeout: 30 * time.Second}, WithAddress("127.0.0.1"))
	})
	wg.Wait()
	for r, err := range errs {
		if err != nil {
			t.Fatalf("rank %d: %v", r, err)
		}
	}
	defer bs[0].Close()
	defer bs[1].Close()
	t.Logf("intruder's handshake error: %v", derr)
	if got := bs[0].rejected.Load(); got < 2 {
		t.Errorf("rank 0 counted %d dropped connections, want 2", got)
	}
	noErrors(t, each(ranks(bs), func(b rank) error { return coll.Barrier(ctx, b.c) }))
}

// TestWrongSecretRank: a whole rank with the wrong secret cannot join, and
// both failed setups leave nothing running (no dialer retries on).
func TestWrongSecretRank(t *testing.T) {
	before := runtime.NumGoroutine()
	st := memstore.New()
	ps := core.WithPrefix(st, "tcp/")
	ctx, cancel := context.WithTimeout(context.Background(), time.Second)
	defer cancel()
	errs := make([]error, 2)
	var wg sync.WaitGroup
	for r := range 2 {
		wg.Go(func() {
			secret := testSecret
			if r == 1 {
				secret = []byte("not the secret")
			}
			b, err := New(ctx, core.Group{Rank: r, Size: 2, Store: ps, JobID: "j", Secret: secret, Timeout: time.Second}, WithAddress("127.0.0.1"))
			if err == nil {
				b.Close()
			}
			errs[r] = err
		})
	}
	wg.Wait()
	for r, err := range errs {
		if err == nil {
			t.Errorf("rank %d joined a group with a mismatched secret", r)
		}
	}
	t.Logf("rank 0: %v\nrank 1: %v", errs[0], errs[1])
	cancel() // its timer's goroutine is not the backend's
	deadline := time.Now().Add(5 * time.Second)
	for runtime.NumGoroutine() > before && time.Now().Before(deadline) {
		time.Sleep(10 * time.Millisecond)
	}
	if after := runtime.NumGoroutine(); after > before {
		buf := make([]byte, 1<<20)
		t.Errorf("%d goroutines before, %d after failed setups:\n%s", before, after, buf[:runtime.Stack(buf, true)])
	}
}

// TestCloseLeavesNoGoroutine: New and Close, and a call in flight during
// Close, leave no goroutine behind.
func TestCloseLeavesNoGoroutine(t *testing.T) {
	before := runtime.NumGoroutine()
	st := memstore.New()
	n := 3
	bs := make([]*Backend, n)
	var wg sync.WaitGroup
	for r := range n {
		wg.Go(func() {
			var err error
			bs[r], err = New(context.Background(), core.Group{Rank: r, Size: n, Store: st, JobID: "j", Secret: testSecret, Timeout: 10 * time.Second}, WithAddress("127.0.0.1"))
			if err != nil {
				t.Error(err)
			}
		})
	}
	wg.Wait()
	if t.Failed() {
		t.FailNow()
	}
	done := make(chan error)
	go func() { done <- coll.Barrier(context.Background(), core.NewGuard(bs[0])) }() // ranks 1, 2 never come
	time.Sleep(50 * time.Millisecond)
	for _, b := range bs {
		b.Close()
	}
	if err := <-done; !errors.Is(err, core.ErrClosed) {
		t.Errorf("barrier during Close: %v, want ErrClosed", err)
	}
	if err := coll.Barrier(context.Background(), core.NewGuard(bs[1])); !errors.Is(err, core.ErrClosed) {
		t.Errorf("barrier after Close: %v, want ErrClosed", err)
	}
	deadline := time.Now().Add(5 * time.Second)
	for runtime.NumGoroutine() > before && time.Now().Before(deadline) {
		time.Sleep(10 * time.Millisecond)
	}
	if after := runtime.NumGoroutine(); after > before {
		buf := make([]byte, 1<<20)
		t.Errorf("%d goroutines before, %d after Close:\n%s", before, after, buf[:runtime.Stack(buf, true)])
	}
}

// TestNoAllocs: steady-state collectives allocate nothing per call. The
// wake of a long wait (wakeEvery), which comes with time, not with calls,
// is kept out of the measurement: TestWakeAllocs bounds its cost.
func TestNoAllocs(t *testing.T) {
	if raceEnabled {
		t.Skip("the race detector allocates on its own")
	}
	defer func(d time.Duration) { wakeEvery = d }(wakeEvery)
	wakeEvery = time.Hour
	const n = 3
	f32, i32 := coll.DTypeFloat32, coll.DTypeInt32
	for _, tc := range []struct {
		name         string
		kind         core.Kind
		dtype        core.DType
		op           core.Op
		count        int
		sendN, recvN int // buffer sizes in blocks of count elements
	}{
		{"allreduce/rd", coll.KindAllreduce, f32, coll.OpSum, 64, 1, 1},
		{"allreduce/rabenseifner", coll.KindAllreduce, f32, coll.OpAvg, 16 << 10, 1, 1},
		{"allreduce/ring", coll.KindAllreduce, f32, coll.OpSum, 1 << 18, 1, 1},
		{"reduce/tree", coll.KindReduce, i32, coll.OpMax, 100, 1, 1},
		{"reduce/chain", coll.KindReduce, i32, coll.OpSum, 1 << 18, 1, 1},
		{"broadcast/tree", coll.KindBroadcast, i32, 0, 100, 1, 1},
		{"broadcast/chain", coll.KindBroadcast, i32, 0, 1 << 18, 1, 1},
		{"allgather", coll.KindAllgather, i32, 0, 1 << 16, 1, n},
		{"reduce_scatter", coll.KindReduceScatter, f32, coll.OpSum, 1 << 16, n, 1},
		{"gather", coll.KindGather, i32, 0, 1000, 1, n},
		{"scatter", coll.KindScatter, i32, 0, 1000, n, 1},
		{"alltoall", coll.KindAlltoall, i32, 0, 1000, n, n},
		{"barrier", coll.KindBarrier, 0, 0, 0, 0, 0},
	} {
		t.Run(tc.name, func(t *testing.T) {
			bs := group(t, n)
			ctx := context.Background()
			reqs := make([]*core.Request, n)
			for r := range n {
				req := &core.Request{Kind: tc.kind, DType: tc.dtype, Op: tc.op, Count: tc.count, Root: 1,
					Send: make([]byte, 4*tc.count*tc.sendN), Recv: make([]byte, 4*tc.count*tc.recvN)}
				if tc.kind == coll.KindBroadcast {
					req.Send = req.Recv
				}
				reqs[r] = req
			}
			start := make([]chan struct{}, n)
			done := make(chan error, n)
			for r := 1; r < n; r++ {
				start[r] = make(chan struct{})
				go func() {
					for range start[r] {
						done <- bs[r].c.Do(ctx, reqs[r])
					}
				}()
			}
			allocs := testing.AllocsPerRun(30, func() {
				for r := 1; r < n; r++ {
					start[r] <- struct{}{}
				}
				if err := bs[0].c.Do(ctx, reqs[0]); err != nil {
					t.Fatal(err)
				}
				for r := 1; r < n; r++ {
					if err := <-done; err != nil {
						t.Fatal(err)
					}
				}
			})
			for r := 1; r < n; r++ {
				close(start[r])
			}
			// AllocsPerRun counts the whole process: all three ranks.
			if allocs != 0 {
				t.Errorf("%v allocations per call (all ranks together), want 0", allocs)
			}
		})
	}
}

// TestMissingRankAtSetup: ranks that never start are named when New gives
// up.
func TestMissingRankAtSetup(t *testing.T) {
	st := memstore.New()
	ctx := context.Background()
	errs := make([]error, 2)
	var wg sync.WaitGroup
	for r := range 2 { // rank 2 of 3 never comes
		wg.Go(func() {
			b, err := New(ctx, core.Group{Rank: r, Size: 3, Store: st, JobID: "j", Secret: testSecret, Timeout: 500 * time.Millisecond}, WithAddress("127.0.0.1"))
			if err == nil {
				b.Close()
			}
			errs[r] = err
		})
	}
	wg.Wait()
	for r, err := range errs {
		var pe *core.PeerError
		if !errors.As(err, &pe) || len(pe.Ranks) != 1 || pe.Ranks[0] != 2 {
			t.Errorf("rank %d: got %v, want a PeerError naming rank 2", r, err)
		}
	}
	t.Logf("rank 0: %v", errs[0])
}

// TestInterfaceFromEnv: GOCOLL_SOCKET_IFNAME picks the interface to listen
// on (here the loopback interface).
func TestInterfaceFromEnv(t *testing.T) {
	t.Setenv(EnvSocketIfname, "lo")
	st := memstore.New()
	bs := make([]*Backend, 2)
	var wg sync.WaitGroup
	for r := range 2 {
		wg.Go(func() {
			var err error
			bs[r], err = New(context.Background(), core.Group{Rank: r, Size: 2, Store: st, JobID: "j", Secret: testSecret, Timeout: 10 * time.Second})
			if err != nil {
				t.Error(err)
			}
		})
	}
	wg.Wait()
	if t.Failed() {
		t.FailNow()
	}
	defer bs[0].Close()
	defer bs[1].Close()
	if a := bs[0].peers[1].data.LocalAddr().(*net.TCPAddr); !a.IP.IsLoopback() {
		t.Errorf("rank 0 listens on %v, want the loopback interface's address", a)
	}
	noErrors(t, each(ranks(bs), func(b rank) error { return coll.Barrier(context.Background(), b.c) }))
	t.Setenv(EnvSocketIfname, "no-such-interface0")
	if _, err := New(context.Background(), core.Group{Rank: 0, Size: 2, Store: st, JobID: "j", Secret: testSecret, Timeout: time.Second}); err == nil || !strings.Contains(err.Error(), "no-such-interface0") {
		t.Errorf("New with a missing interface: %v, want an error naming it", err)
	}
}

// TestTimeoutBlamesStraggler: when one rank never calls the collective, the
// ranks that time out waiting for ranks that wait for it name it, not the
// innocent ranks in between.
func TestTimeoutBlamesStraggler(t *testing.T) {
	np := 4
	const straggler = 3
	bs := group(t, np)
	errs := each(bs, func(b rank) error {
		if b.Rank() == straggler {
			return nil
		}
		ctx, cancel := context.WithTimeout(context.Background(), 500*time.Millisecond)
		defer cancel()
		buf := make([]float32, 4) // recursive doubling: rank 0 waits on 2, which waits on 3
		return coll.AllreduceFloat32(ctx, b.c, buf, buf, coll.OpSum)
	})
	for r, err := range errs {
		if r == straggler {
			continue
		}
		var pe *core.PeerError
		if !errors.As(err, &pe) || len(pe.Ranks) != 1 || pe.Ranks[0] != straggler {
			t.Errorf("rank %d: got %v, want a PeerError naming only rank %d", r, err, straggler)
		}
	}
	t.Logf("rank 0: %v", errs[0])
}

// TestFailedSetupLeavesNoGoroutine: a New that gives up leaves nothing
// running.
func TestFailedSetupLeavesNoGoroutine(t *testing.T) {
	before := runtime.NumGoroutine()
	st := memstore.New()
	var wg sync.WaitGroup
	for r := 1; r < 3; r++ { // rank 0 never comes: the others dial in vain
		wg.Go(func() {
			b, err := New(context.Background(), core.Group{Rank: r, Size: 3, Store: st, JobID: "j", Secret: testSecret, Timeout: 300 * time.Millisecond}, WithAddress("127.0.0.1"))
			if err == nil {
				b.Close()
				t.Errorf("rank %d: New succeeded without rank 0", r)
			}
		})
	}
	wg.Wait()
	deadline := time.Now().Add(5 * time.Second)
	for runtime.NumGoroutine() > before && time.Now().Before(deadline) {
		time.Sleep(10 * time.Millisecond)
	}
	if after := runtime.NumGoroutine(); after > before {
		buf := make([]byte, 1<<20)
		t.Errorf("%d goroutines before, %d after failed setups:\n%s", before, after, buf[:runtime.Stack(buf, true)])
	}
}

// TestRebuildOverStaleAddresses: a second backend built under the same
// store keys (as after a failure) connects although the first one's
// addresses are still there when it starts.
func TestRebuildOverStaleAddresses(t *testing.T) {
	st := memstore.New()
	build := func(delay []time.Duration) []*Backend {
		bs := make([]*Backend, 3)
		var wg sync.WaitGroup
		for r := range 3 {
			wg.Go(func() {
				time.Sleep(delay[r])
				var err error
				bs[r], err = New(context.Background(), core.Group{Rank: r, Size: 3, Store: st, JobID: "j", Secret: testSecret, Timeout: 10 * time.Second}, WithAddress("127.0.0.1"))
				if err != nil {
					t.Errorf("rank %d: %v", r, err)
				}
			})
		}
		wg.Wait()
		if t.Failed() {
			t.FailNow()
		}
		return bs
	}
	first := build([]time.Duration{0, 0, 0})
	noErrors(t, each(ranks(first), func(b rank) error { return coll.Barrier(context.Background(), b.c) }))
	for _, b := range first {
		b.Close()
	}
	// Rank 0 publishes its new address late: rank 1 and 2 first read the
	// old one, whose listener is gone.
	second := build([]time.Duration{300 * time.Millisecond, 0, 0})
	defer func() {
		for _, b := range second {
			b.Close()
		}
	}()
	noErrors(t, each(ranks(second), func(b rank) error { return coll.Barrier(context.Background(), b.c) }))
}

func TestAlgorithmsFromEnv(t *testing.T) {
	t.Setenv(EnvAlgorithms, "allreduce=ring, broadcast=chain,reduce=binomial_tree")
	cfg := defaultConfig()
	if err := cfg.fromEnv(); err != nil {
		t.Fatal(err)
	}
	if cfg.allreduce != Ring || cfg.broadcast != Chain || cfg.reduce != BinomialTree {
		t.Errorf("got allreduce=%v broadcast=%v reduce=%v", cfg.allreduce, cfg.broadcast, cfg.reduce)
	}
	for _, bad := range []string{"allreduce", "allreduce=fast", "gather=direct", "broadcast=ring"} {
		t.Setenv(EnvAlgorithms, bad)
		cfg := defaultConfig()
		if err := cfg.fromEnv(); err == nil {
			t.Errorf("%s=%q accepted", EnvAlgorithms, bad)
		}
	}
}
