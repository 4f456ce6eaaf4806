package tests

import (
	"context"
	"errors"
	"fmt"
	"math"
	"os"
	"slices"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/gocoll/gocoll/core"
	"github.com/gocoll/gocoll/generated/coll"
	"github.com/gocoll/gocoll/internal/proctest"
)

// The fault probes of issue 12: what a careless or hostile caller does to a
// communicator, on every backend, with real processes. Each must end in an
// error on every rank that names the culprit and the field, never in wrong
// data, a panic or a wait for the timeout.

const envFault = "GOCOLL_TEST_FAULT"

// faultTimeout is every wait's bound in the fault ranks. The probes must
// end long before it: a *core.PeerError or a deadline in their errors is a
// failure.
const faultTimeout = 40 * time.Second

func init() { proctest.Register("fault", faultBody) }

// faults are the probes; each runs at np=3 on every backend.
var faults = []string{
	"concurrent",    // F1: one Comm used from 4 goroutines
	"bcast-root",    // F2: broadcast, 1000 elements, rank 1 passes root 1
	"bcast-root-4m", // F4: the same with 4 MiB
	"reduce-root",   // F4: reduce, rank 1 passes root 1
	"gather-root",   // F4: gather, rank 1 passes root 1
	"bad-length",    // rank 1's recv is one element short
	"overlap",       // rank 0's send and recv partly overlap
	"huge-count",    // F3: Count = 1<<62+8 with 32-byte buffers, and a nil request
	"nil-request",   // F3: rank 1 passes a nil request, the others an allreduce
	"count",         // rank 2 passes another count
	"op",            // rank 2 passes another op
	"vcounts",       // allgatherv: rank 2 passes other counts (its own count the same)
	"vcounts-pair",  // alltoallv: rank 2 expects one element more from rank 1 than rank 1 sends it
	"vdispls",       // allgatherv: rank 1's displacements make two blocks overlap
}

func TestFaults(t *testing.T) {
	for _, be := range backends {
		if be.isas {
			continue
		}
		t.Run(be.label, func(t *testing.T) {
			if why := available(be.name); why != "" {
				t.Skipf("dispatch offers no %q backend here: %s", be.name, why)
			}
			for _, f := range faults {
				t.Run(f, func(t *testing.T) {
					res := proctest.Run(t, "fault", 3, proctest.Timeout(2*time.Minute),
						proctest.Env(envBackend+"="+be.name, envFault+"="+f),
						proctest.RankEnv(func(r int) []string {
							if be.nodes > 0 {
								return []string{fmt.Sprintf("GOCOLL_NODE_ID=testnode%d", r*be.nodes/3)}
							}
							return nil
						}))
					for _, r := range res {
						t.Logf("%s", strings.TrimSpace(r.Output))
					}
				})
			}
		})
	}
}

func faultBody(ctx context.Context, r *proctest.Rank) error {
	be, fault := os.Getenv(envBackend), os.Getenv(envFault)
	c, err := initCommTimeout(ctx, r, be, faultTimeout)
	if err != nil {
		return err
	}
	defer c.Close()
	start := time.Now()
	// Every probe's error is printed, so that -v shows what each rank says.
	defer func() {
		if err != nil {
			fmt.Printf("fault error: %v\n", err)
		}
	}()
	switch fault {
	case "concurrent":
		return concurrentProbe(ctx, c)
	case "bcast-root", "bcast-root-4m":
		n := 1000
		if fault == "bcast-root-4m" {
			n = 1 << 20
		}
		buf := make([]float32, n)
		root := 0
		if r.Rank == 1 {
			root = 1
		}
		fill(buf, float32(r.Rank+1))
		err = coll.BroadcastFloat32(ctx, c, buf, root)
		if err := wantMismatch(err, r.Rank, "root", 1, "0", "1"); err != nil {
			return err
		}
	case "reduce-root":
		send, recv := make([]float32, 64), make([]float32, 64)
		root := 0
		if r.Rank == 1 {
			root = 1
		}
		err = coll.ReduceFloat32(ctx, c, send, recv, coll.OpSum, root)
		if err := wantMismatch(err, r.Rank, "root", 1, "0", "1"); err != nil {
			return err
		}
	case "gather-root":
		send, recv := make([]float32, 64), make([]float32, 64*3)
		root := 0
		if r.Rank == 1 {
			root = 1
		}
		err = coll.GatherFloat32(ctx, c, send, recv, root)
		if err := wantMismatch(err, r.Rank, "root", 1, "0", "1"); err != nil {
			return err
		}
	case "count":
		n := 64
		if r.Rank == 2 {
			n = 65
		}
		send, recv := make([]float32, n), make([]float32, n)
		err = coll.AllreduceFloat32(ctx, c, send, recv, coll.OpSum)
		if err := wantMismatch(err, r.Rank, "count", 2, "64", "65"); err != nil {
			return err
		}
	case "op":
		op := coll.OpSum
		if r.Rank == 2 {
			op = coll.OpMax
		}
		send, recv := make([]float32, 64), make([]float32, 64)
		err = coll.AllreduceFloat32(ctx, c, send, recv, op)
		if err := wantMismatch(err, r.Rank, "op", 2, "sum", "max"); err != nil {
			return err
		}
	case "bad-length":
		send, recv := make([]float32, 64), make([]float32, 64)
		if r.Rank == 1 {
			recv = recv[:63]
		}
		err = coll.AllreduceFloat32(ctx, c, send, recv, coll.OpSum)
		if err := wantArgument(err, r.Rank, 1, core.ErrBufferLength); err != nil {
			return err
		}
	case "overlap":
		buf := make([]float32, 96)
		fill(buf, 7)
		send, recv := buf[:64], buf[32:96]
		if r.Rank != 0 {
			send, recv = make([]float32, 64), make([]float32, 64)
		}
		err = coll.AllreduceFloat32(ctx, c, send, recv, coll.OpSum)
		if err := wantArgument(err, r.Rank, 0, core.ErrInvalid); err != nil {
			return err
		}
		if r.Rank == 0 && slices.ContainsFunc(buf, func(v float32) bool { return v != 7 }) {
			return errors.New("rank 0: the refused call changed its buffer")
		}
	case "huge-count":
		if err := c.Do(ctx, nil); !errors.Is(err, core.ErrInvalid) {
			return fmt.Errorf("rank %d: Do(nil) = %v, want an error wrapping core.ErrInvalid", r.Rank, err)
		}
		buf := make([]byte, 64)
		req := &core.Request{Kind: core.KindAllgather, DType: coll.DTypeFloat32, Count: 8, Send: buf[:32], Recv: make([]byte, 32*3)}
		if r.Rank == 0 {
			req = &core.Request{Kind: core.KindAllgather, DType: coll.DTypeFloat32, Count: 1<<62 + 8, Send: buf[:32], Recv: buf[32:]}
		}
		err = c.Do(ctx, req)
		if err := wantArgument(err, r.Rank, 0, core.ErrInvalid); err != nil {
			return err
		}
	case "nil-request":
		var req *core.Request
		if r.Rank != 1 {
			req = &core.Request{Kind: core.KindAllreduce, DType: coll.DTypeFloat32, Op: coll.OpSum, Count: 4, Send: make([]byte, 16), Recv: make([]byte, 16)}
		}
		err = c.Do(ctx, req)
		if err := wantArgument(err, r.Rank, 1, core.ErrInvalid); err != nil {
			return err
		}
	case "vcounts", "vcounts-pair", "vdispls":
		if err := vectorFault(ctx, c, fault, r.Rank); err != nil {
			return err
		}
	default:
		return fmt.Errorf("unknown fault %q", fault)
	}
	if d := time.Since(start); d > faultTimeout/2 {
		return fmt.Errorf("rank %d: the fault took %v to be reported: it waited for a timeout", r.Rank, d)
	}
	// The ranks reported the fault at the same call, before data moved:
	// the next call still lines up and computes the right thing.
	return checkedAllreduce(ctx, c, r.Rank)
}

func fill(b []float32, v float32) {
	for i := range b {
		b[i] = v
	}
}

// checkedAllreduce runs one allreduce and checks its result.
func checkedAllreduce(ctx context.Context, c core.Comm, rank int) error {
	send, recv := make([]float32, 1000), make([]float32, 1000)
	fill(send, float32(rank+1))
	if err := coll.AllreduceFloat32(ctx, c, send, recv, coll.OpSum); err != nil {
		return fmt.Errorf("rank %d: the allreduce after the fault: %w", rank, err)
	}
	n := c.Size()
	want := float32(n * (n + 1) / 2)
	if i := slices.IndexFunc(recv, func(v float32) bool { return v != want }); i >= 0 {
		return fmt.Errorf("rank %d: the allreduce after the fault gave %v at %d, want %v", rank, recv[i], i, want)
	}
	return nil
}

// wantMismatch checks that err is a *core.MismatchError on field: on the
// culprit it names another rank and its own value mine... on the others it
// names the culprit, with their value normal and the culprit's odd.
func wantMismatch(err error, rank int, field string, culprit int, normal, odd string) error {
	var me *core.MismatchError
	if !errors.As(err, &me) {
		return fmt.Errorf("rank %d: got %v, want a *core.MismatchError on %s", rank, err, field)
	}
	if me.Field != field || me.Rank != rank {
		return fmt.Errorf("rank %d: %v: want field %q and this rank named", rank, err, field)
	}
	if rank == culprit {
		if me.Peer == culprit || me.Mine != odd || me.Theirs != normal {
			return fmt.Errorf("rank %d (the culprit): %v: want another rank's %s %s against its own %s", rank, err, field, normal, odd)
		}
		return nil
	}
	if me.Peer != culprit || me.Mine != normal || me.Theirs != odd {
		return fmt.Errorf("rank %d: %v: want rank %d named, with %s %s against %s", rank, err, culprit, field, odd, normal)
	}
	return nil
}

// wantArgument checks the local-argument case: the culprit gets its own
// check's error (wrapping local), every other rank a *core.MismatchError
// on "argument" naming the culprit.
func wantArgument(err error, rank, culprit int, local error) error {
	if rank == culprit {
		if !errors.Is(err, local) {
			return fmt.Errorf("rank %d (the culprit): got %v, want an error wrapping %v", rank, err, local)
		}
		return nil
	}
	var me *core.MismatchError
	if !errors.As(err, &me) || me.Field != "argument" || me.Peer != culprit {
		return fmt.Errorf("rank %d: got %v, want a *core.MismatchError on \"argument\" naming rank %d", rank, err, culprit)
	}
	return nil
}

// concurrentProbe runs allreduces on one communicator from 4 goroutines at
// once. Goroutine g contributes g+1 from every rank, so a call whose ranks
// paired the same goroutine's calls sums to size*(g+1), and any other
// value is mispaired data. The communicator must notice: some call fails
// with ErrConcurrentUse on some rank, every rank's communicator ends failed
// (a last call fails here too), and no call that starts after this rank
// has seen an error returns at all without one. Calls that never overlapped
// on a rank cannot be told from one goroutine's (see core.ErrConcurrentUse):
// the mispaired results they return before the first overlap are counted
// and printed, not failed.
func concurrentProbe(ctx context.Context, c core.Comm) error {
	const goroutines, calls, n = 4, 50, 256
	size := c.Size()
	var mu sync.Mutex
	var late []string // nil results of calls started after an error
	early, ok := 0, 0
	var failed atomic.Bool
	var seen []string // the first distinct errors, printed for -v
	var wg sync.WaitGroup
	for g := range goroutines {
		wg.Go(func() {
			send, recv := make([]float32, n), make([]float32, n)
			fill(send, float32(g+1))
			for range calls {
				fill(recv, float32(math.NaN()))
				after := failed.Load()
				err := coll.AllreduceFloat32(ctx, c, send, recv, coll.OpSum)
				if err != nil {
					failed.Store(true)
				}
				mu.Lock()
				switch {
				case err == nil && after:
					late = append(late, fmt.Sprintf("goroutine %d", g))
				case err == nil && slices.ContainsFunc(recv, func(v float32) bool { return v != float32(size*(g+1)) }):
					early++
				case err == nil:
					ok++
				case !slices.Contains(seen, err.Error()) && len(seen) < 3:
					seen = append(seen, err.Error())
				}
				mu.Unlock()
			}
		})
	}
	wg.Wait()
	for _, e := range seen {
		fmt.Printf("fault error: %s\n", e)
	}
	fmt.Printf("concurrent use: %d calls right, %d mispaired before any overlap was seen, %d failed\n",
		ok, early, goroutines*calls-ok-early)
	if late != nil {
		return fmt.Errorf("%d calls started after an error on this rank and returned nil: %v", len(late), late[:min(3, len(late))])
	}
	if size == 1 {
		return nil
	}
	if err := coll.AllreduceFloat32(ctx, c, make([]float32, n), make([]float32, n), coll.OpSum); err == nil {
		return fmt.Errorf("after 4 goroutines shared it, the communicator still runs calls (%d right, %d mispaired): concurrent use went unnoticed", ok, early)
	}
	return nil
}
