package bench

import (
	"context"
	"fmt"
	"sync"
	"testing"
	"time"

	"github.com/gocoll/gocoll/bench/perf"
	"github.com/gocoll/gocoll/core"
	"github.com/gocoll/gocoll/generated/coll"
)

// world is an in-memory communicator for goroutine ranks, written from the
// spec's result rules, so the sweep's buffer layouts and its reference can
// be tested without any backend. Collectives meet in numbered rounds; send
// and recv go through per-pair channels.
type world struct {
	n      int
	mu     sync.Mutex
	rounds map[uint64]*round
	p2p    map[[2]int]chan []byte
	// corrupt, when set, flips a byte of rank 1's result of each collective
	// that has one, to prove -check notices.
	corrupt bool
}

type round struct {
	reqs  []core.Request
	count int
	ready chan struct{}
	left  int
}

type rankComm struct {
	w    *world
	rank int
	seq  uint64
}

func newWorld(n int) []*rankComm {
	w := &world{n: n, rounds: map[uint64]*round{}, p2p: map[[2]int]chan []byte{}}
	cs := make([]*rankComm, n)
	for r := range cs {
		cs[r] = &rankComm{w: w, rank: r}
	}
	return cs
}

func (c *rankComm) Rank() int { return c.rank }
func (c *rankComm) Size() int { return c.w.n }

func (w *world) pair(from, to int) chan []byte {
	w.mu.Lock()
	defer w.mu.Unlock()
	k := [2]int{from, to}
	if w.p2p[k] == nil {
		w.p2p[k] = make(chan []byte, 16)
	}
	return w.p2p[k]
}

func (c *rankComm) Do(ctx context.Context, req *core.Request) error {
	w := c.w
	esz := req.DType.Size()
	v := *req // the caller's request stays as it is
	if err := uniformVector(&v); err != nil {
		return err
	}
	req = &v
	switch req.Kind {
	case coll.KindSend:
		select {
		case w.pair(c.rank, req.Peer) <- append([]byte(nil), req.Send...):
			return nil
		case <-ctx.Done():
			return ctx.Err()
		}
	case coll.KindRecv:
		select {
		case b := <-w.pair(req.Peer, c.rank):
			copy(req.Recv, b)
			return nil
		case <-ctx.Done():
			return ctx.Err()
		}
	}
	seq := c.seq
	c.seq++
	w.mu.Lock()
	r := w.rounds[seq]
	if r == nil {
		r = &round{reqs: make([]core.Request, w.n), ready: make(chan struct{}), left: w.n}
		w.rounds[seq] = r
	}
	mine := *req
	mine.Send = append([]byte(nil), req.Send...) // others read it after we return
	r.reqs[c.rank] = mine
	r.count++
	if r.count == w.n {
		close(r.ready)
	}
	w.mu.Unlock()
	select {
	case <-r.ready:
	case <-ctx.Done():
		return ctx.Err()
	}
	defer func() {
		w.mu.Lock()
		if r.left--; r.left == 0 {
			delete(w.rounds, seq)
		}
		w.mu.Unlock()
	}()
	for i, o := range r.reqs {
		if o.Kind != req.Kind || o.DType != req.DType || o.Op != req.Op || o.Count != req.Count || o.Root != req.Root {
			return &core.MismatchError{Seq: seq, Field: "request", Rank: c.rank, Peer: i}
		}
	}
	block := req.Count * esz
	sends := func(lo, hi int) [][]byte {
		s := make([][]byte, w.n)
		for i, o := range r.reqs {
			s[i] = o.Send[lo:hi]
		}
		return s
	}
	reduce := func(dst []byte, lo, hi int) error {
		t := core.LookupType(req.DType)
		if t == nil || t.Kernel(req.Op) == nil {
			return fmt.Errorf("%w: no kernel for %v %v", core.ErrUnsupported, req.DType, req.Op)
		}
		t.Kernel(req.Op).Reduce(nil, dst, sends(lo, hi))
		t.Kernel(req.Op).Finish(dst, w.n)
		return nil
	}
	var err error
	switch req.Kind {
	case coll.KindBarrier:
		return nil
	case coll.KindAllreduce:
		err = reduce(req.Recv, 0, block)
	case coll.KindReduce:
		if c.rank == req.Root {
			err = reduce(req.Recv, 0, block)
		}
	case coll.KindReduceScatter:
		err = reduce(req.Recv, c.rank*block, (c.rank+1)*block)
	case coll.KindBroadcast:
		copy(req.Recv, r.reqs[req.Root].Send)
	case coll.KindAllgather, coll.KindGather:
		if req.Kind == coll.KindAllgather || c.rank == req.Root {
			for i, o := range r.reqs {
				copy(req.Recv[i*block:], o.Send)
			}
		}
	case coll.KindScatter:
		copy(req.Recv, r.reqs[req.Root].Send[c.rank*block:(c.rank+1)*block])
	case coll.KindAlltoall:
		for i, o := range r.reqs {
			copy(req.Recv[i*block:], o.Send[c.rank*block:(c.rank+1)*block])
		}
	default:
		return fmt.Errorf("world: %v: %w", req.Kind, core.ErrUnsupported)
	}
	if w.corrupt && c.rank == 1 && len(req.Recv) > 0 && req.Count > 1 {
		req.Recv[len(req.Recv)-1] ^= 0x40
	}
	return err
}

// runWorld runs cfg's sweep on n goroutine ranks and returns rank 0's rows.
func runWorld(t *testing.T, n int, cfg Config, corrupt bool) []perf.Row {
	t.Helper()
	x, err := Resolve(&cfg)
	if err != nil {
		t.Fatalf("Resolve(%+v): %v", cfg, err)
	}
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	comms := newWorld(n)
	comms[0].w.corrupt = corrupt
	rows := make([][]perf.Row, n)
	errs := make([]error, n)
	var wg sync.WaitGroup
	for r, c := range comms {
		wg.Add(1)
		go func() {
			defer wg.Done()
			cc := cfg
			rows[r], errs[r] = Sweep(ctx, c, &cc, x, nil, nil)
			if errs[r] != nil {
				cancel()
			}
		}()
	}
	wg.Wait()
	for r, err := range errs {
		if err != nil {
			t.Fatalf("rank %d: %v", r, err)
		}
	}
	for r := 1; r < n; r++ {
		if len(rows[r]) != len(rows[0]) {
			t.Fatalf("rank %d has %d rows, rank 0 %d: ranks must agree", r, len(rows[r]), len(rows[0]))
		}
		for i := range rows[r] {
			if rows[r][i].TimeUS != rows[0][i].TimeUS || rows[r][i].Iters != rows[0][i].Iters {
				t.Errorf("rank %d row %d: time %g iters %d, rank 0: %g %d; every rank must agree",
					r, i, rows[r][i].TimeUS, rows[r][i].Iters, rows[0][i].TimeUS, rows[0][i].Iters)
			}
		}
	}
	return rows[0]
}

// TestCheckEveryCollective runs a short checked sweep of every collective,
// with every op on a float and an integer dtype, and wants no wrong
// element: the layouts and the exact reference agree with the spec's
// result rules. Odd n exercises the idle rank of sendrecv.
func TestCheckEveryCollective(t *testing.T) {
	type tc struct{ coll, dtype, op string }
	var cases []tc
	for _, c := range perf.Collectives {
		if !HasOp(c) {
			cases = append(cases, tc{c, "float32", ""}, tc{c, "int8", ""})
			continue
		}
		for _, dt := range []string{"float32", "bfloat16", "float16", "float64", "int8", "uint8", "int32", "uint64"} {
			for _, op := range []string{"sum", "prod", "min", "max", "avg", "band", "bor", "bxor"} {
				if c != "allreduce" && dt != "bfloat16" && dt != "int8" {
					continue // the other shapes: one float and one integer type
				}
				cases = append(cases, tc{c, dt, op})
			}
		}
	}
	for _, n := range []int{3, 4} {
		for _, c := range cases {
			cfg := Config{Coll: c.coll, DType: c.dtype, Op: c.op, Root: n - 1, Min: 8, Max: 3000,
				Factor: 7, Iters: 2, Warmup: 1, Check: true, Sync: n == 4}
			if _, err := Resolve(&cfg); err != nil {
				continue // an op the dtype lacks (avg on integers, bxor on floats)
			}
			t.Run(fmt.Sprintf("n%d/%s/%s/%s", n, c.coll, c.dtype, c.op), func(t *testing.T) {
				rows := runWorld(t, n, cfg, false)
				if len(rows) == 0 {
					t.Fatal("no rows")
				}
				for _, r := range rows {
					if r.Wrong == nil || *r.Wrong != 0 {
						t.Errorf("size %d: wrong = %v, want 0", r.Size, r.Wrong)
					}
				}
			})
		}
	}
}

// TestCheckCatchesCorruption proves -check is not vacuous: a communicator
// that damages one element of one rank's result gets counted.
func TestCheckCatchesCorruption(t *testing.T) {
	for _, c := range []string{"allreduce", "allgather", "reduce_scatter", "alltoall", "broadcast"} {
		cfg := Config{Coll: c, DType: "float32", Op: "sum", Min: 64, Max: 256, Factor: 4, Iters: 1, Check: true}
		if HasRoot(c) {
			cfg.Root = 0
		}
		rows := runWorld(t, 2, cfg, true)
		for _, r := range rows {
			if r.Wrong == nil || *r.Wrong != 1 {
				t.Errorf("%s size %d: wrong = %v, want 1 (one damaged element)", c, r.Size, r.Wrong)
			}
		}
	}
}

// TestRows checks sizes, counts and bandwidths of the rows a sweep returns.
func TestRows(t *testing.T) {
	cfg := Config{Coll: "allgather", DType: "float32", Min: 8, Max: 1 << 10, Factor: 4, Iters: 3, Warmup: 1}
	rows := runWorld(t, 4, cfg, false)
	var sizes []int64
	for _, r := range rows {
		sizes = append(sizes, r.Size)
		if r.Count != r.Size/4 || r.Wrong != nil || r.Iters != 3 {
			t.Errorf("row %+v: count must be size/4, wrong unset without -check, iters 3", r)
		}
		if r.TimeUS <= 0 || r.BusBW != perf.BusBW("allgather", 4, r.Size, r.TimeUS) {
			t.Errorf("row %+v: time must be positive and busbw nccl-tests' (n-1)/n of algbw", r)
		}
	}
	// Multiples of 4 ranks x 4 bytes, from 8 B (rounded up to one element
	// per rank) to 1 KiB.
	want := []int64{16, 32, 128, 512, 1024}
	if fmt.Sprint(sizes) != fmt.Sprint(want) {
		t.Errorf("sizes %v, want %v", sizes, want)
	}
}

// TestBudget checks that a budget cuts the timed iterations of slow rows,
// never below MinIters, and that every rank agrees (runWorld checks that).
func TestBudget(t *testing.T) {
	cfg := Config{Coll: "allreduce", DType: "float32", Op: "sum", Min: 4 << 20, Max: 4 << 20, Factor: 2,
		Iters: 1000, Warmup: 2, Budget: time.Nanosecond}
	rows := runWorld(t, 2, cfg, false)
	if len(rows) != 1 || rows[0].Iters != MinIters {
		t.Errorf("rows %+v: want one row of %d iterations under a 1ns budget", rows, MinIters)
	}
}

func TestResolveErrors(t *testing.T) {
	for _, cfg := range []Config{
		{Coll: "allreduce", DType: "float32", Op: "bxor"},
		{Coll: "allreduce", DType: "int8", Op: "avg"},
		{Coll: "allreduce", DType: "complex64", Op: "sum"},
		{Coll: "allreduce", DType: "float32", Op: "median"},
		{Coll: "allfoo", DType: "float32"},
	} {
		if _, err := Resolve(&cfg); err == nil {
			t.Errorf("Resolve(%+v) accepted it", cfg)
		}
	}
	cfg := Config{Coll: "broadcast", DType: "float32", Op: "sum"}
	if _, err := Resolve(&cfg); err != nil || cfg.Op != "" {
		t.Errorf("Resolve(broadcast with -o sum) = %v, op %q: the op must be dropped, not rejected", err, cfg.Op)
	}
}

// uniformVector turns a vector collective with uniform counts and packed
// blocks (all gocollbench runs) into its fixed-count form.
func uniformVector(req *core.Request) error {
	fixed := map[core.Kind]core.Kind{
		coll.KindAllgatherv: coll.KindAllgather, coll.KindGatherv: coll.KindGather, coll.KindScatterv: coll.KindScatter,
		coll.KindAlltoallv: coll.KindAlltoall, coll.KindReduceScatterV: coll.KindReduceScatter,
	}
	k, ok := fixed[req.Kind]
	if !ok {
		return nil
	}
	counts := req.RecvCounts
	if counts == nil {
		counts = req.SendCounts
	}
	for _, v := range [][]int{req.SendCounts, req.RecvCounts} {
		for _, c := range v {
			if c != counts[0] {
				return fmt.Errorf("world: %v with counts %v: only uniform counts are simulated", req.Kind, v)
			}
		}
	}
	if req.SendDispls != nil || req.RecvDispls != nil {
		return fmt.Errorf("world: %v with displacements: only packed blocks are simulated", req.Kind)
	}
	req.Kind, req.Count = k, counts[0]
	req.SendCounts, req.RecvCounts = nil, nil
	return nil
}
