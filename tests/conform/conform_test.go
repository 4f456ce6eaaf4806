package conform

import (
	"context"
	"errors"
	"fmt"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/gocoll/gocoll/core"
	"github.com/gocoll/gocoll/generated/coll"
)

// memWorld is a deliberately plain in-memory communicator for goroutine
// ranks: the last rank to arrive at a collective computes every rank's
// output from full copies of all inputs. It exists to test the runner
// (including that the runner catches wrong results); backends are tested
// with the runner elsewhere.
type memWorld struct {
	n      int
	mu     sync.Mutex
	rounds map[uint64]*round
	p2p    map[[2]int]chan []byte
}

type round struct {
	reqs    []*core.Request
	arrived int
	done    chan struct{}
	err     error
}

type memComm struct {
	w    *memWorld
	rank int
	seq  uint64
	// tamper, when set, may change a request's outputs after the
	// collective, to check that the runner notices.
	tamper func(rank int, req *core.Request)
}

func newWorld(n int) []*memComm {
	w := &memWorld{n: n, rounds: map[uint64]*round{}, p2p: map[[2]int]chan []byte{}}
	cs := make([]*memComm, n)
	for i := range cs {
		cs[i] = &memComm{w: w, rank: i}
	}
	return cs
}

func (c *memComm) Rank() int { return c.rank }
func (c *memComm) Size() int { return c.w.n }

func (c *memComm) chan2(from, to int) chan []byte {
	c.w.mu.Lock()
	defer c.w.mu.Unlock()
	k := [2]int{from, to}
	if c.w.p2p[k] == nil {
		c.w.p2p[k] = make(chan []byte, 16)
	}
	return c.w.p2p[k]
}

func (c *memComm) Do(ctx context.Context, req *core.Request) error {
	err := c.do(ctx, req)
	if err == nil && c.tamper != nil {
		c.tamper(c.rank, req)
	}
	return err
}

func (c *memComm) do(ctx context.Context, req *core.Request) error {
	sh := shapes()
	s := sh[req.Kind]
	if s.peer {
		if req.Send != nil {
			c.chan2(c.rank, req.Peer) <- append([]byte(nil), req.Send...)
			return nil
		}
		select {
		case b := <-c.chan2(req.Peer, c.rank):
			copy(req.Recv, b)
			return nil
		case <-ctx.Done():
			return ctx.Err()
		}
	}
	w := c.w
	w.mu.Lock()
	seq := c.seq
	c.seq++
	rd := w.rounds[seq]
	if rd == nil {
		rd = &round{reqs: make([]*core.Request, w.n), done: make(chan struct{})}
		w.rounds[seq] = rd
	}
	rd.reqs[c.rank] = req
	rd.arrived++
	if rd.arrived == w.n {
		rd.err = compute(s, rd.reqs)
		delete(w.rounds, seq)
		close(rd.done)
	}
	w.mu.Unlock()
	select {
	case <-rd.done:
		return rd.err
	case <-ctx.Done():
		return ctx.Err()
	}
}

// compute fills every rank's output the obvious way.
func compute(s shape, reqs []*core.Request) error {
	if s.vector {
		return computeVector(reqs)
	}
	n := len(reqs)
	r0 := reqs[0]
	for _, q := range reqs[1:] {
		if q.Kind != r0.Kind || q.DType != r0.DType || q.Op != r0.Op || q.Count != r0.Count || q.Root != r0.Root {
			return &core.MismatchError{Field: "request", Mine: fmt.Sprint(*r0), Theirs: fmt.Sprint(*q)}
		}
	}
	elem := r0.DType.Size()
	blk := r0.Count * elem
	in := make([][]byte, n) // copies, so in-place outputs cannot disturb inputs
	for i, q := range reqs {
		in[i] = append([]byte(nil), q.Send...)
	}
	var red []byte
	if s.result == core.ResultReduce || s.result == core.ResultReduceBlock {
		red = make([]byte, len(in[0]))
		k := core.LookupType(r0.DType).Kernel(r0.Op)
		k.Reduce(nil, red, in)
		k.Finish(red, n)
	}
	for me, q := range reqs {
		if q.Recv == nil {
			continue
		}
		switch s.result {
		case core.ResultReduce:
			copy(q.Recv, red)
		case core.ResultReduceBlock:
			copy(q.Recv, red[me*blk:(me+1)*blk])
		case core.ResultRoot:
			copy(q.Recv, in[r0.Root])
		case core.ResultRootBlock:
			copy(q.Recv, in[r0.Root][me*blk:(me+1)*blk])
		case core.ResultConcat:
			for j := range n {
				copy(q.Recv[j*blk:], in[j])
			}
		case core.ResultTranspose:
			for j := range n {
				copy(q.Recv[j*blk:(j+1)*blk], in[j][me*blk:(me+1)*blk])
			}
		}
	}
	return nil
}

// runAll runs opts on every rank of cs as goroutines and returns each
// rank's error.
func runAll(t *testing.T, cs []*memComm, opts Options) []error {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	errs := make([]error, len(cs))
	var wg sync.WaitGroup
	for i, c := range cs {
		wg.Go(func() { errs[i] = Run(ctx, c, opts) })
	}
	wg.Wait()
	return errs
}

func TestAllCasesOnMemComm(t *testing.T) {
	sizes := []int{0, 1, 7, 300}
	for _, np := range []int{1, 2, 3, 5} {
		t.Run(fmt.Sprint("np", np), func(t *testing.T) {
			for r, err := range runAll(t, newWorld(np), Options{Sizes: sizes[:3], Bytes: []int{1200}}) {
				if err != nil {
					t.Errorf("rank %d: %v", r, err)
				}
			}
		})
	}
}

// TestCoverage checks that a run really exercises every case, every kind of
// result and both variants.
func TestCoverage(t *testing.T) {
	cs := newWorld(3)
	seen := map[Case]int{}
	inPlace := 0
	var mu sync.Mutex
	for _, c := range cs {
		c.tamper = func(rank int, q *core.Request) {
			mu.Lock()
			defer mu.Unlock()
			if rank == 0 {
				seen[Case{Kind: q.Kind, DType: q.DType, Op: q.Op}]++
				if len(q.Send) > 0 && len(q.Recv) > 0 && &q.Send[0] == &q.Recv[0] {
					inPlace++
				}
			}
		}
	}
	for r, err := range runAll(t, cs, Options{Sizes: []int{5}}) {
		if err != nil {
			t.Fatalf("rank %d: %v", r, err)
		}
	}
	for _, c := range Cases() {
		s := shapes()
		if s[c.Kind].peer {
			continue // rank 0 sends with one kind and receives with the other
		}
		if seen[c] == 0 {
			t.Errorf("case %+v never ran", c)
		}
	}
	if inPlace == 0 {
		t.Error("no in-place call")
	}
	if len(Cases()) < 100 {
		t.Errorf("only %d cases: is generated/coll imported?", len(Cases()))
	}
}

// TestCatches checks that each kind of wrong behaviour fails every rank
// with an error that names the case, the rank and the element.
func TestCatches(t *testing.T) {
	isCase := func(q *core.Request, k core.Kind, dt core.DType, op core.Op) bool {
		return q.Kind == k && q.DType == dt && q.Op == op && q.Count > 3
	}
	tests := []struct {
		name   string
		tamper func(rank int, q *core.Request)
		opts   Options
		want   []string // in the tampered rank's error
	}{{
		name: "wrong element",
		tamper: func(rank int, q *core.Request) {
			if rank == 2 && isCase(q, core.KindAllreduce, coll.DTypeFloat32, coll.OpSum) {
				q.Recv[4*3] ^= 1
			}
		},
		want: []string{"allreduce float32 sum count=7", "rank 2 of 3", "element 3: got"},
	}, {
		name: "send buffer changed",
		tamper: func(rank int, q *core.Request) {
			if rank == 2 && isCase(q, core.KindAllgather, coll.DTypeInt8, 0) && len(q.Send) > 0 && &q.Send[0] != &q.Recv[0] {
				q.Send[1]++
			}
		},
		want: []string{"allgather int8", "send buffer changed at element 1"},
	}, {
		name: "write past the end",
		tamper: func(rank int, q *core.Request) {
			if rank == 2 && isCase(q, core.KindReduceScatter, coll.DTypeUint64, coll.OpBXor) {
				q.Recv[:len(q.Recv)+1][len(q.Recv)] = 0
			}
		},
		want: []string{"reduce_scatter uint64 bxor", "0 bytes past the end"},
	}, {
		name: "ranks disagree where no reference exists",
		tamper: func(rank int, q *core.Request) {
			// Random-pass float sums have no reference (their rounding
			// depends on the order): only the agreement check sees this.
			if rank == 2 && isCase(q, core.KindAllreduce, coll.DTypeBFloat16, coll.OpAvg) {
				q.Recv[0] ^= 1
			}
		},
		opts: Options{NoInPlace: true},
		want: []string{"allreduce bfloat16 avg count=7 (random pass", "ranks hold different outputs: ranks [0 1] | ranks [2]"},
	}}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			cs := newWorld(3)
			for _, c := range cs {
				c.tamper = tc.tamper
			}
			opts := tc.opts
			opts.Sizes = []int{7}
			errs := runAll(t, cs, opts)
			for r, err := range errs {
				if err == nil {
					t.Fatalf("rank %d: no error", r)
				}
			}
			msg := errs[2].Error()
			for _, w := range tc.want {
				if !strings.Contains(msg, w) {
					t.Errorf("rank 2's error lacks %q:\n%s", w, msg)
				}
			}
			if tc.name != "ranks disagree where no reference exists" && !strings.Contains(errs[0].Error(), "rank 2 found") {
				t.Errorf("rank 0's error does not point at rank 2:\n%v", errs[0])
			}
		})
	}
}

func TestCollectiveErrorStops(t *testing.T) {
	boom := errors.New("boom")
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	err := Run(ctx, failing{newWorld(1)[0], boom}, Options{Sizes: []int{1}})
	if !errors.Is(err, boom) || !strings.Contains(err.Error(), "broadcast") {
		t.Errorf("got %v, want the broadcast's error wrapped", err)
	}
}

// failing fails every broadcast.
type failing struct {
	core.Comm
	err error
}

func (f failing) Do(ctx context.Context, q *core.Request) error {
	if q.Kind == core.KindBroadcast {
		return f.err
	}
	return f.Comm.Do(ctx, q)
}
