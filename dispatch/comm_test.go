package dispatch

import (
	"context"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net"
	"runtime"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/gocoll/gocoll/core"
	"github.com/gocoll/gocoll/generated/coll"
	"github.com/gocoll/gocoll/internal/memstore"
)

var quiet = slog.New(slog.NewTextHandler(io.Discard, nil))

// goRanks runs n goroutine ranks that each Init with opts(rank) and then
// run body; it returns each rank's error.
func goRanks(n int, opts func(rank int) []Option, body func(ctx context.Context, c *Comm) error) []error {
	errs := make([]error, n)
	var wg sync.WaitGroup
	for r := 0; r < n; r++ {
		wg.Add(1)
		go func() {
			defer wg.Done()
			ctx := context.Background()
			c, err := Init(ctx, append([]Option{WithLogger(quiet), WithEnviron(nil)}, opts(r)...)...)
			if err != nil {
				errs[r] = err
				return
			}
			defer c.Close()
			errs[r] = body(ctx, c)
		}()
	}
	wg.Wait()
	return errs
}

// kvOverTCP gives rank r of n torchrun's variables, rank 0 serving the
// store on port, and the kv backend with a 20 s timeout.
func kvOverTCP(port, n int, secret string) func(r int) []Option {
	return func(r int) []Option {
		return []Option{WithEnviron([]string{
			"RANK=" + strconv.Itoa(r), "WORLD_SIZE=" + strconv.Itoa(n),
			"MASTER_ADDR=127.0.0.1", "MASTER_PORT=" + strconv.Itoa(port),
			"GOCOLL_SECRET=" + secret, "GOCOLL_BACKEND=kv", "GOCOLL_TIMEOUT=20s",
		})}
	}
}

func checkErrs(t *testing.T, errs []error) {
	t.Helper()
	for r, err := range errs {
		if err != nil {
			t.Errorf("rank %d: %v", r, err)
		}
	}
}

// Node layout comes from the node ids the ranks publish.
func TestNodeLayout(t *testing.T) {
	ids := []string{"a", "b", "a", "c", "b", "a"}
	type place struct{ LocalRank, LocalSize, NodeRank, NumNodes int }
	want := []place{{0, 3, 0, 3}, {0, 2, 1, 3}, {1, 3, 0, 3}, {0, 1, 2, 3}, {1, 2, 1, 3}, {2, 3, 0, 3}}
	got := make([]place, len(ids))
	s := memstore.New()
	errs := goRanks(len(ids), func(r int) []Option {
		return []Option{WithStore(s), WithRank(r), WithSize(len(ids)), WithNodeID(ids[r]), WithBackend("kv"), WithTimeout(10 * time.Second)}
	}, func(ctx context.Context, c *Comm) error {
		got[c.Rank()] = place{c.LocalRank(), c.LocalSize(), c.NodeRank(), c.NumNodes()}
		if c.Backend() != "kv" {
			return fmt.Errorf("backend %q, want kv", c.Backend())
		}
		if c.JobID() == "" {
			return errors.New("no job id")
		}
		if fmt.Sprint(c.NodeRanks(0)) != "[0 2 5]" {
			return fmt.Errorf("node 0 ranks %v", c.NodeRanks(0))
		}
		return c.Barrier(ctx)
	})
	checkErrs(t, errs)
	for r := range want {
		if got[r] != want[r] {
			t.Errorf("rank %d (node id %s): %+v, want %+v", r, ids[r], got[r], want[r])
		}
	}
}

// Rank 0 serves the store at the master address; the others dial it; the
// job id, secret and store address agree everywhere; collectives work;
// and a second communicator on the same store gets a fresh namespace.
func TestInitOverTCPStore(t *testing.T) {
	port := freePort(t)
	const n = 4
	jobIDs := make([]string, n)
	addrs := make([]string, n)
	errs := goRanks(n, kvOverTCP(port, n, "tcp-test"), func(ctx context.Context, c *Comm) error {
		jobIDs[c.Rank()], addrs[c.Rank()] = c.JobID(), c.KVSAddr()
		for i := 0; i < 20; i++ {
			if err := c.Barrier(ctx); err != nil {
				return err
			}
		}
		send := []float32{float32(c.Rank()), 1}
		recv := make([]float32, 2)
		if err := coll.AllreduceFloat32(ctx, c, send, recv, coll.OpSum); err != nil {
			return err
		}
		if recv[0] != 0+1+2+3 || recv[1] != n {
			return fmt.Errorf("allreduce = %v", recv)
		}
		if c.Timeout() != 20*time.Second {
			return fmt.Errorf("timeout %v, want GOCOLL_TIMEOUT's 20s", c.Timeout())
		}
		return nil
	})
	checkErrs(t, errs)
	for r := 1; r < n; r++ {
		if jobIDs[r] != jobIDs[0] || addrs[r] != addrs[0] {
			t.Errorf("rank %d: job %q store %q; rank 0: %q %q", r, jobIDs[r], addrs[r], jobIDs[0], addrs[0])
		}
	}
	if addrs[0] != "127.0.0.1:"+strconv.Itoa(port) {
		t.Errorf("KVSAddr = %q", addrs[0])
	}
}

func TestReuseStore(t *testing.T) {
	s := memstore.New()
	for round := 0; round < 3; round++ {
		errs := goRanks(3, func(r int) []Option {
			return []Option{WithStore(s), WithRank(r), WithSize(3), WithBackend("kv"), WithTimeout(10 * time.Second)}
		}, func(ctx context.Context, c *Comm) error {
			v := []int32{int32(c.Rank() + round)}
			out := make([]int32, 1)
			if err := coll.AllreduceInt32(ctx, c, v, out, coll.OpSum); err != nil {
				return err
			}
			if out[0] != int32(3+3*round) {
				return fmt.Errorf("round %d: sum %d", round, out[0])
			}
			return nil
		})
		checkErrs(t, errs)
	}
}

func TestStandalone(t *testing.T) {
	c, err := Init(context.Background(), WithEnviron(nil), WithLogger(quiet))
	if err != nil {
		t.Fatal(err)
	}
	if c.Rank() != 0 || c.Size() != 1 || c.LocalSize() != 1 || c.NumNodes() != 1 || c.KVSAddr() == "" {
		t.Errorf("standalone: rank %d size %d local %d nodes %d kvs %q", c.Rank(), c.Size(), c.LocalSize(), c.NumNodes(), c.KVSAddr())
	}
	ctx := context.Background()
	if err := c.Barrier(ctx); err != nil {
		t.Fatal(err)
	}
	if err := c.Store().Set(ctx, "k", []byte("v")); err != nil {
		t.Fatal(err)
	}
	// Do itself allocates nothing per call (an error kept by address once
	// cost an allocation on every call, a tenth of an 8-byte allreduce).
	x := []float32{1, 2}
	if a := testing.AllocsPerRun(100, func() {
		if err := coll.AllreduceFloat32(ctx, c, x, x, coll.OpSum); err != nil {
			t.Fatal(err)
		}
	}); a != 0 {
		t.Errorf("an allreduce through Comm.Do allocates %v times", a)
	}
	if err := c.Close(); err != nil {
		t.Fatal(err)
	}
	if err := c.Barrier(ctx); !errors.Is(err, core.ErrClosed) {
		t.Fatalf("Barrier after Close: %v, want ErrClosed", err)
	}
	if err := c.Close(); err != nil {
		t.Fatalf("second Close: %v", err)
	}
}

// Two processes claiming one rank are caught at Init.
func TestDuplicateRank(t *testing.T) {
	s := memstore.New()
	errs := goRanks(2, func(r int) []Option {
		return []Option{WithStore(s), WithRank(0), WithSize(2), WithBackend("kv"), WithTimeout(2 * time.Second)}
	}, func(ctx context.Context, c *Comm) error { return nil })
	dup := 0
	for _, err := range errs {
		if err != nil && strings.Contains(err.Error(), "two processes claim rank 0") {
			dup++
		}
	}
	if dup != 1 {
		t.Fatalf("want exactly one 'two processes claim rank 0' error, got %v", errs)
	}
}

// A rank that never calls Init is named by the others.
func TestInitNamesMissingRank(t *testing.T) {
	s := memstore.New()
	const n, absent = 3, 1
	errs := make([]error, n)
	var wg sync.WaitGroup
	for r := 0; r < n; r++ {
		if r == absent {
			continue
		}
		wg.Add(1)
		go func() {
			defer wg.Done()
			c, err := Init(context.Background(), WithEnviron(nil), WithLogger(quiet), WithStore(s), WithRank(r), WithSize(n),
				WithBackend("kv"), WithTimeout(time.Second))
			if err == nil {
				c.Close()
			}
			errs[r] = err
		}()
	}
	wg.Wait()
	for r, err := range errs {
		if r == absent {
			continue
		}
		var pe *core.PeerError
		if !errors.As(err, &pe) || fmt.Sprint(pe.Ranks) != fmt.Sprint([]int{absent}) {
			t.Errorf("rank %d: %v; want a PeerError naming rank %d", r, err, absent)
		}
	}
}

// A barrier some rank skips names it on every other rank after the
// timeout, and the communicator is unusable afterwards.
func TestBarrierTimeoutIsFatal(t *testing.T) {
	s := memstore.New()
	const n, absent = 3, 2
	errs := goRanks(n, func(r int) []Option {
		return []Option{WithStore(s), WithRank(r), WithSize(n), WithBackend("kv"), WithTimeout(time.Second)}
	}, func(ctx context.Context, c *Comm) error {
		if c.Rank() == absent {
			return nil
		}
		err := c.Barrier(ctx)
		var pe *core.PeerError
		if !errors.As(err, &pe) || fmt.Sprint(pe.Ranks) != fmt.Sprint([]int{absent}) {
			return fmt.Errorf("want a PeerError naming rank %d, got %v", absent, err)
		}
		if err := c.Barrier(ctx); err == nil || !strings.Contains(err.Error(), "failed earlier") {
			return fmt.Errorf("second barrier: %v; want the earlier failure", err)
		}
		return nil
	})
	checkErrs(t, errs)
}

// A collective honours its context: cancellation ends it with an error.
func TestContextCancel(t *testing.T) {
	s := memstore.New()
	errs := goRanks(2, func(r int) []Option {
		return []Option{WithStore(s), WithRank(r), WithSize(2), WithBackend("kv"), WithTimeout(time.Minute)}
	}, func(ctx context.Context, c *Comm) error {
		if c.Rank() == 1 {
			return nil
		}
		ctx, cancel := context.WithCancel(ctx)
		time.AfterFunc(100*time.Millisecond, cancel)
		if err := c.Barrier(ctx); !errors.Is(err, context.Canceled) {
			return fmt.Errorf("cancelled barrier: %v", err)
		}
		return nil
	})
	checkErrs(t, errs)
}

func freePort(t *testing.T) int {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer ln.Close()
	return ln.Addr().(*net.TCPAddr).Port
}

// auto picks shm on one node and tcp across nodes; every backend gives
// the same allreduce.
func TestBackendChoice(t *testing.T) {
	for _, tc := range []struct {
		backend string
		nodes   []string
		want    string
	}{
		{"auto", []string{"n", "n", "n"}, "shm"},
		{"auto", []string{"n", "m", "n"}, "shm+tcp"},
		{"auto", []string{"n", "m", "o"}, "tcp"},
		{"shm", []string{"n", "n", "n"}, "shm"},
		{"tcp", []string{"n", "n", "n"}, "tcp"},
		{"kv", []string{"n", "m", "n"}, "kv"},
	} {
		t.Run(tc.backend+"/"+strings.Join(tc.nodes, ""), func(t *testing.T) {
			s := memstore.New()
			n := len(tc.nodes)
			errs := goRanks(n, func(r int) []Option {
				return []Option{WithStore(s), WithRank(r), WithSize(n), WithNodeID(tc.nodes[r]), WithBackend(tc.backend),
					WithTimeout(20 * time.Second)}
			}, func(ctx context.Context, c *Comm) error {
				if c.Backend() != tc.want {
					return fmt.Errorf("backend %q, want %q", c.Backend(), tc.want)
				}
				send := []float64{float64(c.Rank()), 0.5}
				recv := make([]float64, 2)
				if err := coll.AllreduceFloat64(ctx, c, send, recv, coll.OpSum); err != nil {
					return err
				}
				if recv[0] != 3 || recv[1] != 1.5 {
					return fmt.Errorf("allreduce = %v", recv)
				}
				return c.Barrier(ctx)
			})
			checkErrs(t, errs)
		})
	}
}

func TestShmNeedsOneNode(t *testing.T) {
	s := memstore.New()
	errs := goRanks(2, func(r int) []Option {
		return []Option{WithStore(s), WithRank(r), WithSize(2), WithNodeID(strconv.Itoa(r)), WithBackend("shm"), WithTimeout(5 * time.Second)}
	}, func(ctx context.Context, c *Comm) error { return nil })
	for r, err := range errs {
		if err == nil || !strings.Contains(err.Error(), "span 2 nodes") {
			t.Errorf("rank %d: %v; want shm refused across 2 nodes", r, err)
		}
	}
}

// Init and Close leave no goroutine behind: not the store server rank 0
// runs, nor the clients, nor the kv backend.
func TestCloseLeavesNoGoroutines(t *testing.T) {
	base := runtime.NumGoroutine()
	port := freePort(t)
	errs := goRanks(3, func(r int) []Option {
		return []Option{WithEnviron([]string{"RANK=" + strconv.Itoa(r), "WORLD_SIZE=3", "MASTER_ADDR=127.0.0.1",
			"MASTER_PORT=" + strconv.Itoa(port), "GOCOLL_SECRET=leak", "GOCOLL_BACKEND=kv", "GOCOLL_TIMEOUT=20s"})}
	}, func(ctx context.Context, c *Comm) error { return c.Barrier(ctx) })
	checkErrs(t, errs)
	deadline := time.Now().Add(10 * time.Second)
	for runtime.NumGoroutine() > base && time.Now().Before(deadline) {
		time.Sleep(10 * time.Millisecond)
	}
	if n := runtime.NumGoroutine(); n > base {
		buf := make([]byte, 1<<16)
		t.Fatalf("%d goroutines before, %d after Close:\n%s", base, n, buf[:runtime.Stack(buf, true)])
	}
}

// The rank serving the store closes only once every live rank has: a dead
// rank ends the wait for it alone. (It once ended the wait for all, and a
// rank still learning of the death through the store lost the store.)
func TestServerOutwaitsDeadRank(t *testing.T) {
	port := freePort(t)
	const n = 3
	dead := make(chan struct{})
	errs := goRanks(n, kvOverTCP(port, n, "outwait-test"), func(ctx context.Context, c *Comm) error {
		if err := c.Barrier(ctx); err != nil {
			return err
		}
		switch c.Rank() {
		case 1: // dies: its store connection goes without a bye
			c.release()
			close(dead)
		case 2: // still uses the store after rank 0 began to close
			<-dead
			time.Sleep(300 * time.Millisecond)
			if err := c.Store().Set(ctx, "late", []byte("x")); err != nil {
				return fmt.Errorf("the store went away while this rank used it: %w", err)
			}
		default:
			<-dead
		}
		return nil
	})
	checkErrs(t, errs)
}

// Comm.Do checks each call once: a rank whose call fails the check gets
// its own error, every other rank a MismatchError naming it at once (not
// at the minute's timeout), and the communicator stays usable.
func TestBadArgumentNamedOnEveryRank(t *testing.T) {
	s := memstore.New()
	const n, bad = 3, 1
	errs := goRanks(n, func(r int) []Option {
		return []Option{WithStore(s), WithRank(r), WithSize(n), WithBackend("kv"), WithTimeout(time.Minute)}
	}, func(ctx context.Context, c *Comm) error {
		recv := make([]byte, 8)
		if c.Rank() == bad {
			recv = recv[:6]
		}
		err := c.Do(ctx, &core.Request{Kind: core.KindAllreduce, DType: coll.DTypeFloat32, Op: coll.OpSum, Count: 2,
			Send: make([]byte, 8), Recv: recv})
		var me *core.MismatchError
		switch {
		case c.Rank() == bad && !errors.Is(err, core.ErrBufferLength):
			return fmt.Errorf("own error %v; want ErrBufferLength", err)
		case c.Rank() != bad && (!errors.As(err, &me) || me.Field != "argument" || me.Peer != bad):
			return fmt.Errorf("want a MismatchError naming rank %d's argument, got %v", bad, err)
		}
		return c.Barrier(ctx)
	})
	checkErrs(t, errs)
}
