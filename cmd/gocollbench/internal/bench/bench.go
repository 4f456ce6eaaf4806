// Package bench is gocollbench's measuring loop: it turns a Config into
// core.Requests on any core.Comm, times them the way nccl-tests does, and
// checks results against an exact reference.
package bench

import (
	"context"
	"encoding/binary"
	"fmt"
	"math"
	"time"

	"github.com/gocoll/gocoll/bench/perf"
	"github.com/gocoll/gocoll/core"
	"github.com/gocoll/gocoll/generated/coll"
)

// Config is what one sweep measures, the same on every rank (every rank
// parses the same command line).
type Config struct {
	Coll     string // canonical collective name (perf.Canonical)
	DType    string // spec name; "" for barrier
	Op       string // spec name; "" for collectives without a reduce op
	Root     int    // root rank of rooted collectives
	Min, Max int64  // sizes in bytes (see perf.Sizes)
	Factor   float64
	Step     int64
	Iters    int // timed iterations per size
	Warmup   int // untimed iterations per size
	// Budget bounds the timed iterations of one size: when warmup shows
	// Iters would take longer, the row runs fewer (at least MinIters).
	Budget time.Duration
	Check  bool // verify results against the exact reference
	// Sync puts an untimed barrier before every call, as OSU's collective
	// benchmarks do, so a call that returns before its peers finish (a
	// broadcast's root) cannot overlap the next one: the time is one
	// call's latency, not the period of back-to-back calls.
	Sync bool
	// Settle is how long the ranks run barriers before the first size.
	// Ranks started a moment ago may share a CPU until the kernel's load
	// balancer spreads them (it runs every few ms), and a sweep of small
	// sizes can finish sooner than that: its numbers would then measure
	// the start-up placement instead of the collective.
	Settle time.Duration
	// SendAlloc, when set, provides the send buffers of collectives that
	// have one apart from the result (dispatch.Comm.Alloc: memory the shm
	// backend reads without copying it in); SendFree releases them.
	SendAlloc func(n int) ([]byte, error)
	SendFree  func([]byte) error
}

// MinIters is the fewest timed iterations a row runs under a Budget.
const MinIters = 5

// IDs are the wire ids a sweep sends in its requests, looked up by name
// in the registry the generated package fills at init.
type IDs struct {
	kind, kind2 core.Kind // kind2: recv, for sendrecv
	dt          core.DType
	op          core.Op
	barrier     core.Kind
	allreduce   core.Kind
	f64, i64    core.DType
	max, sum    core.Op
}

func lookupKind(name string) (core.Kind, bool) {
	for i := 1; i < 256; i++ {
		if core.Kind(i).String() == name {
			return core.Kind(i), true
		}
	}
	return 0, false
}

func lookupDType(name string) (core.DType, bool) {
	for i := 1; i < 256; i++ {
		if info, ok := core.DType(i).Info(); ok && info.Name == name {
			return core.DType(i), true
		}
	}
	return 0, false
}

func lookupOp(name string) (core.Op, bool) {
	for i := 1; i < 256; i++ {
		if core.Op(i).String() == name {
			return core.Op(i), true
		}
	}
	return 0, false
}

// Resolve turns cfg's names into ids, with errors that list what exists.
func Resolve(cfg *Config) (IDs, error) {
	// The sweep's own bookkeeping (barriers, agreeing on times) uses
	// gocoll's spec ids directly.
	x := IDs{barrier: coll.KindBarrier, allreduce: coll.KindAllreduce, f64: coll.DTypeFloat64,
		i64: coll.DTypeInt64, max: coll.OpMax, sum: coll.OpSum}
	var ok bool
	need := func(name string) error {
		return fmt.Errorf("the generated package registers no %s; is generated/coll built from spec/collectives.yaml?", name)
	}
	switch cfg.Coll {
	case "sendrecv":
		if x.kind, ok = lookupKind("send"); !ok {
			return x, need("send")
		}
		if x.kind2, ok = lookupKind("recv"); !ok {
			return x, need("recv")
		}
	default:
		if x.kind, ok = lookupKind(cfg.Coll); !ok {
			return x, fmt.Errorf("unknown collective %q: want one of %v", cfg.Coll, perf.Collectives)
		}
	}
	if cfg.Coll == "barrier" {
		cfg.DType, cfg.Op = "", ""
		return x, nil
	}
	if x.dt, ok = lookupDType(cfg.DType); !ok {
		var names []string
		for i := 1; i < 256; i++ {
			if info, ok := core.DType(i).Info(); ok {
				names = append(names, info.Name)
			}
		}
		return x, fmt.Errorf("unknown dtype %q: want one of %v", cfg.DType, names)
	}
	if !HasOp(cfg.Coll) {
		cfg.Op = ""
		return x, nil
	}
	if x.op, ok = lookupOp(cfg.Op); !ok {
		return x, fmt.Errorf("unknown reduce op %q: want sum, prod, min, max, avg, band, bor or bxor", cfg.Op)
	}
	if !coll.Supports(x.dt, x.op) {
		return x, fmt.Errorf("%s does not support op %s (see spec/collectives.yaml): %w", cfg.DType, cfg.Op, core.ErrUnsupported)
	}
	return x, nil
}

// HasOp reports whether a collective takes a reduce op.
func HasOp(coll string) bool {
	switch coll {
	case "allreduce", "reduce", "reduce_scatter", "reduce_scatter_v":
		return true
	}
	return false
}

// HasRoot reports whether a collective takes a root rank.
func HasRoot(coll string) bool {
	switch coll {
	case "reduce", "broadcast", "gather", "scatter", "gatherv", "scatterv":
		return true
	}
	return false
}

// buffers is one rank's buffers for one size, and the request over them.
type buffers struct {
	req    core.Request
	req2   core.Request // recv half of sendrecv
	want   []byte       // the expected result; nil where the rank has none
	result []byte       // where the result lands
	mode   mode
	esz    int      // element size
	owned  [][]byte // buffers from cfg.SendAlloc, to free
}

// free releases the buffers from cfg.SendAlloc.
func (b *buffers) free(cfg *Config) error {
	var first error
	for _, o := range b.owned {
		if err := cfg.SendFree(o); err != nil && first == nil {
			first = fmt.Errorf("freeing a send buffer: %w", err)
		}
	}
	b.owned = nil
	return first
}

// mode is how once runs the request(s).
type mode int

const (
	modeColl      mode = iota // one collective call
	modeSendFirst             // sendrecv: send, then receive
	modeRecvFirst             // sendrecv: receive, then send
	modeIdle                  // sendrecv with odd n: the last rank sits out
)

// setup allocates and fills rank's buffers for a row of count elements per
// rank block (see core.Request).
func setup(cfg *Config, x IDs, rank, n, count int, esz int) (*buffers, error) {
	b := &buffers{req: core.Request{Kind: x.kind, DType: x.dt, Op: x.op, Count: count}, esz: esz}
	if cfg.Coll == "barrier" {
		b.req = core.Request{Kind: x.kind}
		return b, nil
	}
	var codec dtypeCodec
	var pat pattern
	canFill := true
	if c, err := codecFor(cfg.DType); err == nil {
		codec = c
		pat = pattern{codec: c, op: cfg.Op, n: n}
	} else if cfg.Check {
		return nil, err
	} else {
		canFill = false // time a downstream dtype on zeros
	}
	alloc := func(elems int) []byte { return make([]byte, elems*esz) }
	var allocErr error
	// sendBuf is a send buffer: from cfg.SendAlloc when set.
	sendBuf := func(elems int) []byte {
		if cfg.SendAlloc == nil || elems == 0 {
			return alloc(elems)
		}
		buf, err := cfg.SendAlloc(elems * esz)
		if err != nil {
			if allocErr == nil {
				allocErr = fmt.Errorf("allocating a %d-byte send buffer: %w", elems*esz, err)
			}
			return alloc(elems)
		}
		b.owned = append(b.owned, buf)
		return buf
	}
	fill := func(buf []byte, r int) []byte {
		if canFill {
			pat.fill(buf, r, len(buf)/esz)
		}
		return buf
	}
	isRoot := rank == cfg.Root
	if HasRoot(cfg.Coll) {
		b.req.Root = cfg.Root
	}
	// want builds the expected result, element by element.
	want := func(elems int, f func(i int) float64) []byte {
		if !cfg.Check {
			return nil
		}
		w := alloc(elems)
		for i := 0; i < elems; i++ {
			codec.put(w, i, f(i))
		}
		return w
	}
	// The vector collectives run with uniform counts (packed blocks), so
	// that they compare with their fixed-count forms.
	uniform := make([]int, n)
	for j := range uniform {
		uniform[j] = count
	}
	switch cfg.Coll {
	case "allgatherv", "gatherv":
		b.req.Count, b.req.RecvCounts = 0, uniform
	case "scatterv":
		b.req.Count, b.req.SendCounts = 0, uniform
	case "alltoallv":
		b.req.Count, b.req.SendCounts, b.req.RecvCounts = 0, uniform, uniform
	case "reduce_scatter_v":
		b.req.Count, b.req.RecvCounts = 0, uniform
	}
	switch cfg.Coll {
	case "allreduce":
		b.req.Send, b.req.Recv = fill(sendBuf(count), rank), alloc(count)
		b.result, b.want = b.req.Recv, want(count, pat.reduced)
	case "reduce":
		b.req.Send = fill(sendBuf(count), rank)
		if isRoot {
			b.req.Recv = alloc(count)
			b.result, b.want = b.req.Recv, want(count, pat.reduced)
		}
	case "broadcast":
		buf := alloc(count)
		if isRoot {
			fill(buf, rank)
		}
		b.req.Send, b.req.Recv = buf, buf
		b.result = buf
		b.want = want(count, func(i int) float64 { return pat.value(cfg.Root, i) })
	case "allgather", "gather", "allgatherv", "gatherv":
		b.req.Send = fill(sendBuf(count), rank)
		if cfg.Coll == "allgather" || cfg.Coll == "allgatherv" || isRoot {
			b.req.Recv = alloc(count * n)
			b.result = b.req.Recv
			b.want = want(count*n, func(i int) float64 { return pat.value(i/count, i%count) })
		}
	case "reduce_scatter", "reduce_scatter_v":
		b.req.Send, b.req.Recv = fill(sendBuf(count*n), rank), alloc(count)
		b.result, b.want = b.req.Recv, want(count, func(i int) float64 { return pat.reduced(rank*count + i) })
	case "scatter", "scatterv":
		if isRoot {
			b.req.Send = fill(sendBuf(count*n), rank)
		}
		b.req.Recv = alloc(count)
		b.result = b.req.Recv
		b.want = want(count, func(i int) float64 { return pat.value(cfg.Root, rank*count+i) })
	case "alltoall", "alltoallv":
		b.req.Send, b.req.Recv = fill(sendBuf(count*n), rank), alloc(count*n)
		b.result = b.req.Recv
		b.want = want(count*n, func(i int) float64 { return pat.value(i/count, rank*count+i%count) })
	case "sendrecv":
		// Pairs (0,1), (2,3), ...: the even rank sends then receives, the
		// odd one receives then sends; with an odd n the last rank sits out.
		peer := rank ^ 1
		if peer >= n {
			b.mode = modeIdle
			return b, nil
		}
		b.mode = modeSendFirst
		if rank%2 == 1 {
			b.mode = modeRecvFirst
		}
		b.req = core.Request{Kind: x.kind, DType: x.dt, Count: count, Peer: peer, Send: fill(sendBuf(count), rank)}
		b.req2 = core.Request{Kind: x.kind2, DType: x.dt, Count: count, Peer: peer, Recv: alloc(count)}
		b.result = b.req2.Recv
		b.want = want(count, func(i int) float64 { return pat.value(peer, i) })
	default:
		return nil, fmt.Errorf("collective %q has no buffer layout in gocollbench", cfg.Coll)
	}
	if allocErr != nil {
		b.free(cfg)
		return nil, allocErr
	}
	return b, nil
}

// clock is the time base of every measurement. time.Since(clock) reads
// only the monotonic clock, one vDSO call, as MPI_Wtime does; time.Now
// reads the wall clock as well, inside the timed window.
var clock = time.Now()

// once runs the collective one time and returns how long it took on this
// rank. A sendrecv pair is a round trip; once returns half of it, the
// one-way time, as OSU's latency test does.
func (b *buffers) once(ctx context.Context, c core.Comm) (time.Duration, error) {
	switch b.mode {
	case modeColl:
		t0 := time.Since(clock)
		err := c.Do(ctx, &b.req)
		return time.Since(clock) - t0, err
	case modeSendFirst, modeRecvFirst:
		first, second := &b.req, &b.req2
		if b.mode == modeRecvFirst {
			first, second = second, first
		}
		t0 := time.Since(clock)
		if err := c.Do(ctx, first); err != nil {
			return 0, err
		}
		err := c.Do(ctx, second)
		return (time.Since(clock) - t0) / 2, err
	}
	return 0, nil
}

// reduceMax and reduceSum agree on one number across ranks through the
// communicator under test (every rank gets the same answer, so every rank
// takes the same decisions).
func reduceMax(ctx context.Context, c core.Comm, x IDs, v float64) (float64, error) {
	send := binary.LittleEndian.AppendUint64(nil, math.Float64bits(v))
	recv := make([]byte, 8)
	err := c.Do(ctx, &core.Request{Kind: x.allreduce, DType: x.f64, Op: x.max, Count: 1, Send: send, Recv: recv})
	return math.Float64frombits(binary.LittleEndian.Uint64(recv)), err
}

func reduceSum(ctx context.Context, c core.Comm, x IDs, v int64) (int64, error) {
	send := binary.LittleEndian.AppendUint64(nil, uint64(v))
	recv := make([]byte, 8)
	err := c.Do(ctx, &core.Request{Kind: x.allreduce, DType: x.i64, Op: x.sum, Count: 1, Send: send, Recv: recv})
	return int64(binary.LittleEndian.Uint64(recv)), err
}

// settle runs barriers until d has passed on every rank's clock (the ranks
// agree through the communicator every 64 barriers, so all stop together).
func settle(ctx context.Context, c core.Comm, x IDs, bar *core.Request, d time.Duration) error {
	if d <= 0 {
		return nil
	}
	start := time.Now()
	for {
		for range 64 {
			if err := c.Do(ctx, bar); err != nil {
				return fmt.Errorf("barrier while settling (-settle): %w", err)
			}
		}
		least, err := reduceMax(ctx, c, x, -time.Since(start).Seconds())
		if err != nil {
			return fmt.Errorf("settling (-settle): %w", err)
		}
		if -least >= d.Seconds() {
			return nil
		}
	}
}

// syncBarrier is the barrier between calls under cfg.Sync.
func syncBarrier(ctx context.Context, c core.Comm, cfg *Config, bar *core.Request) error {
	if !cfg.Sync {
		return nil
	}
	if err := c.Do(ctx, bar); err != nil {
		return fmt.Errorf("barrier between calls (-sync): %w", err)
	}
	return nil
}

// medianUS is the median of ds in microseconds.
func medianUS(ds []time.Duration) float64 {
	f := make([]float64, len(ds))
	for i, d := range ds {
		f[i] = float64(d.Nanoseconds()) / 1e3
	}
	return perf.Median(f)
}

// Sweep runs every size of cfg on communicator c and calls row with each
// finished row (the same on every rank; rank 0 prints). progress, if not
// nil, is told which size is running.
func Sweep(ctx context.Context, c core.Comm, cfg *Config, x IDs, row func(perf.Row), progress func(i, n int, size int64)) ([]perf.Row, error) {
	n, rank := c.Size(), c.Rank()
	esz := 0
	if cfg.Coll != "barrier" {
		esz = x.dt.Size()
		if esz == 0 {
			return nil, fmt.Errorf("dtype %s has no registered size", cfg.DType)
		}
	}
	var sizes []int64
	if cfg.Coll == "barrier" {
		sizes = []int64{0}
	} else {
		bf := int64(perf.BlockFactor(cfg.Coll, n))
		var err error
		if sizes, err = perf.Sizes(cfg.Min, cfg.Max, cfg.Factor, cfg.Step, int64(esz)*bf); err != nil {
			return nil, err
		}
	}
	if HasRoot(cfg.Coll) && (cfg.Root < 0 || cfg.Root >= n) {
		return nil, fmt.Errorf("-root %d is not a rank of %d", cfg.Root, n)
	}
	// One barrier request for the whole sweep: a request made per call
	// escapes to the heap, and the garbage of a million small calls a
	// second keeps the collector's threads busy on the CPUs the ranks spin on.
	bar := &core.Request{Kind: x.barrier}
	if err := settle(ctx, c, x, bar, cfg.Settle); err != nil {
		return nil, err
	}
	var rows []perf.Row
	for si, size := range sizes {
		if progress != nil {
			progress(si, len(sizes), size)
		}
		count := 0
		if esz > 0 {
			count = int(size) / esz / perf.BlockFactor(cfg.Coll, n)
		}
		b, err := setup(cfg, x, rank, n, count, esz)
		if err != nil {
			return rows, err
		}
		if err := c.Do(ctx, bar); err != nil {
			return rows, fmt.Errorf("barrier before %s: %w", perf.FormatSize(size), err)
		}
		warm := make([]time.Duration, cfg.Warmup)
		for i := range warm {
			if err := syncBarrier(ctx, c, cfg, bar); err != nil {
				return rows, err
			}
			if warm[i], err = b.once(ctx, c); err != nil {
				return rows, fmt.Errorf("%s of %s (warmup): %w", cfg.Coll, perf.FormatSize(size), err)
			}
		}
		iters := cfg.Iters
		if cfg.Budget > 0 && cfg.Warmup > 0 {
			// Agree on the slowest rank's estimate so all run the same count.
			est, err := reduceMax(ctx, c, x, medianUS(warm))
			if err != nil {
				return rows, err
			}
			if est > 0 {
				if fit := int(cfg.Budget.Seconds() * 1e6 / est); fit < iters {
					iters = max(fit, MinIters)
				}
			}
		}
		times := make([]time.Duration, iters)
		for i := range times {
			if err := syncBarrier(ctx, c, cfg, bar); err != nil {
				return rows, err
			}
			if times[i], err = b.once(ctx, c); err != nil {
				return rows, fmt.Errorf("%s of %s: %w", cfg.Coll, perf.FormatSize(size), err)
			}
		}
		med := medianUS(times)
		if b.mode == modeIdle {
			med = 0 // the rank that sat out timed nothing
		}
		t, err := reduceMax(ctx, c, x, med)
		if err != nil {
			return rows, err
		}
		r := perf.Row{Size: size, Count: size / max(int64(esz), 1), TimeUS: t, Iters: iters,
			AlgBW: perf.AlgBW(size, t), BusBW: perf.BusBW(cfg.Coll, n, size, t)}
		if cfg.Coll == "barrier" {
			r.Count = 0
		}
		if cfg.Check {
			wrong, err := checkRow(ctx, c, cfg, b)
			if err != nil {
				return rows, err
			}
			total, err := reduceSum(ctx, c, x, wrong)
			if err != nil {
				return rows, err
			}
			r.Wrong = &total
		}
		if err := b.free(cfg); err != nil {
			return rows, err
		}
		rows = append(rows, r)
		if row != nil {
			row(r)
		}
	}
	return rows, nil
}

// checkRow runs the collective once more on freshly filled buffers, the
// result buffer set to the sentinel, and counts wrong elements on this rank.
func checkRow(ctx context.Context, c core.Comm, cfg *Config, b *buffers) (int64, error) {
	if b.result != nil {
		fillSentinel(b.result)
	}
	if cfg.Coll == "broadcast" && c.Rank() == cfg.Root {
		copy(b.result, b.want) // the root's buffer is the data
	}
	if _, err := b.once(ctx, c); err != nil {
		return 0, fmt.Errorf("%s (checked run): %w", cfg.Coll, err)
	}
	if b.want == nil {
		return 0, nil
	}
	return countWrong(b.esz, b.result, b.want), nil
}
