package tcp

import (
	"context"
	"errors"
	"fmt"
	"math/rand/v2"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/gocoll/gocoll/core"
	"github.com/gocoll/gocoll/generated/coll"
	"github.com/gocoll/gocoll/tests/conform"
)

// pick is yes if c holds, else no.
func pick[T any](c bool, yes, no T) T {
	if c {
		return yes
	}
	return no
}

// request builds rank's request for kind with the buffers its shape asks
// for, the send side filled with rank-dependent bytes.
func request(kind core.Kind, dt core.DType, op core.Op, count, root, rank, n int) *core.Request {
	sh := kind.Shape()
	size := func(e core.Extent) int {
		switch e {
		case core.PerRank:
			return count * dt.Size()
		case core.AllRanks:
			return count * dt.Size() * n
		}
		return 0
	}
	req := &core.Request{Kind: kind, DType: dt, Op: op, Count: count, Root: root}
	if sh.Send != core.None && !sh.SendIsRecv && !(sh.SendRootOnly && rank != root) {
		req.Send = make([]byte, size(sh.Send))
		for i := range req.Send {
			req.Send[i] = byte(rank + i)
		}
	}
	if sh.Recv != core.None && !(sh.RecvRootOnly && rank != root) {
		req.Recv = make([]byte, size(sh.Recv))
	}
	return req
}

// checkMismatch checks rank r's error from a call in which the ranks
// disagreed on field: culprit is the one rank that passed another value
// than the rest, and val(q) is what rank q passed. Every rank must get a
// *core.MismatchError on field that gives its own value; the others must
// name the culprit and its value, and the culprit a rank that disagrees
// with it and that rank's value.
func checkMismatch(err error, r int, field string, culprit int, val func(q int) string) error {
	var me *core.MismatchError
	if !errors.As(err, &me) {
		return fmt.Errorf("rank %d: got %v, want a MismatchError on %s", r, err, field)
	}
	switch {
	case me.Field != field || me.Rank != r || me.Mine != val(r):
		return fmt.Errorf("rank %d: %q, want field %s, rank %d, its value %s", r, me, field, r, val(r))
	case r != culprit && (me.Peer != culprit || me.Theirs != val(culprit)):
		return fmt.Errorf("rank %d: %q, want it to name rank %d, which passed %s", r, me, culprit, val(culprit))
	case r == culprit && (me.Peer == r || me.Theirs != val(me.Peer) || me.Theirs == me.Mine):
		return fmt.Errorf("rank %d (the culprit): %q, want a rank that passed another value, and its value", r, me)
	}
	return nil
}

// checkRefused checks a rank's error from a call in which rank culprit
// refused its own request, of kind: an "argument" MismatchError naming it
// and describing its call.
func checkRefused(err error, r, culprit int, kind core.Kind) error {
	var me *core.MismatchError
	if !errors.As(err, &me) || me.Field != "argument" || me.Rank != r || me.Mine != "valid" || me.Peer != culprit || !strings.HasPrefix(me.Theirs, kind.String()) {
		return fmt.Errorf("rank %d: got %v, want a MismatchError naming rank %d's invalid %v argument", r, err, culprit, kind)
	}
	return nil
}

// inStep checks that the ranks are still in step and the communicator
// usable: an allreduce and a broadcast give the right results.
func inStep(ctx context.Context, c core.Comm) error {
	n, r := c.Size(), c.Rank()
	buf := make([]int32, 1000)
	for i := range buf {
		buf[i] = int32(r + 1 + i)
	}
	if err := coll.AllreduceInt32(ctx, c, buf, buf, coll.OpSum); err != nil {
		return fmt.Errorf("rank %d: the allreduce after: %w", r, err)
	}
	for i, v := range buf {
		if want := int32(n*(n+1)/2 + n*i); v != want {
			return fmt.Errorf("rank %d: the allreduce after: element %d = %d, want %d", r, i, v, want)
		}
	}
	for i := range buf {
		buf[i] = int32(r)
	}
	if err := coll.BroadcastInt32(ctx, c, buf, n-1); err != nil {
		return fmt.Errorf("rank %d: the broadcast after: %w", r, err)
	}
	for i, v := range buf {
		if v != int32(n-1) {
			return fmt.Errorf("rank %d: the broadcast after: element %d = %d, want %d", r, i, v, n-1)
		}
	}
	return nil
}

// rootCase is a rooted collective in which one rank passes another root.
type rootCase struct {
	name    string
	kind    core.Kind
	count   int // int32 elements
	culprit int
	root    func(r int) int
}

var rootCases = []rootCase{
	// F2: every rank returned nil and the ranks ended with different data.
	{"broadcast/small", core.KindBroadcast, 1000, 1, func(r int) int { return pick(r == 1, 1, 0) }},
	// F4: a rank was told of values no rank had passed.
	{"broadcast/4MiB", core.KindBroadcast, 1 << 20, 2, func(r int) int { return pick(r == 2, 2, 0) }},
	// F4: an innocent rank was named, with "disagree on kind".
	{"reduce/small", core.KindReduce, 1000, 3, func(r int) int { return pick(r == 3, 1, 0) }},
	{"reduce/4MiB", core.KindReduce, 1 << 20, 3, func(r int) int { return pick(r == 3, 1, 0) }},
	// F4: the ranks waited out the whole timeout.
	{"gather", core.KindGather, 1000, 0, func(r int) int { return pick(r == 0, 1, 0) }},
	{"scatter", core.KindScatter, 1000, 2, func(r int) int { return pick(r == 2, 1, 3) }},
}

// runRootCase runs rc on c's rank, checks its error and that the ranks
// are in step afterwards, and logs the error with logf.
func runRootCase(ctx context.Context, c core.Comm, rc rootCase, logf func(string, ...any)) error {
	r := c.Rank()
	req := request(rc.kind, coll.DTypeInt32, 0, rc.count, rc.root(r), r, c.Size())
	if rc.kind == core.KindReduce {
		req.Op = coll.OpSum
	}
	err := c.Do(ctx, req)
	logf("rank %d: %v", r, err)
	if err := checkMismatch(err, r, "root", rc.culprit, func(q int) string { return strconv.Itoa(rc.root(q)) }); err != nil {
		return err
	}
	return inStep(ctx, c)
}

// TestRootMismatch: ranks that disagree on the root of a rooted collective
// all return a MismatchError on "root" that names the rank that differs,
// with the values each passed, before the timeout; and the next calls
// run.
func TestRootMismatch(t *testing.T) {
	rs := group(t, 4)
	for _, rc := range rootCases {
		t.Run(rc.name, func(t *testing.T) {
			errs := each(rs, func(b rank) error { return runRootCase(context.Background(), b.c, rc, t.Logf) })
			noErrors(t, errs)
		})
	}
}

// TestMismatch: ranks that disagree on any field of a collective whose
// frames carry the call (no agreement round) all return a MismatchError
// naming the field and the rank that differs, at every size and with
// every algorithm; and the next calls run.
func TestMismatch(t *testing.T) {
	const n = 4
	f32, i32, u32 := coll.DTypeFloat32, coll.DTypeInt32, coll.DTypeUint32
	type tc struct {
		name    string
		field   string
		culprit int // the one rank that differs; -1: several
		req     func(r int) *core.Request
		val     func(r int) string
	}
	var cases []tc
	// allreduce by recursive doubling, Rabenseifner and the ring.
	for _, count := range []int{16, 10000, 1 << 18} {
		cases = append(cases,
			tc{fmt.Sprintf("allreduce/%d/count", count), "count", 1,
				func(r int) *core.Request {
					return request(core.KindAllreduce, f32, coll.OpSum, count+pick(r == 1, 1, 0), 0, r, n)
				},
				func(r int) string { return strconv.Itoa(count + pick(r == 1, 1, 0)) }},
			tc{fmt.Sprintf("allreduce/%d/dtype", count), "dtype", 2,
				func(r int) *core.Request {
					return request(core.KindAllreduce, pick(r == 2, u32, i32), coll.OpSum, count, 0, r, n)
				},
				func(r int) string { return pick(r == 2, u32, i32).String() }},
			tc{fmt.Sprintf("allreduce/%d/op", count), "op", 0,
				func(r int) *core.Request {
					return request(core.KindAllreduce, i32, pick(r == 0, coll.OpMax, coll.OpSum), count, 0, r, n)
				},
				func(r int) string { return pick(r == 0, coll.OpMax, coll.OpSum).String() }},
		)
	}
	// Ranks 0 and 3 run recursive doubling (first partner r^1), ranks 1
	// and 2 Rabenseifner (first partner r^2): each waits for a rank that
	// sends to another, and the frames that show the difference lie
	// unread.
	diverge := func(r int) int { return pick(r == 0 || r == 3, 16, 10000) }
	cases = append(cases, tc{"allreduce/algorithms-diverge", "count", -1, // two against two
		func(r int) *core.Request { return request(core.KindAllreduce, f32, coll.OpSum, diverge(r), 0, r, n) },
		func(r int) string { return strconv.Itoa(diverge(r)) }})
	kindOf := func(r int) core.Kind { return pick(r == 3, core.KindBarrier, core.KindAllreduce) }
	cases = append(cases,
		tc{"allreduce/kind", "kind", 3,
			func(r int) *core.Request { return request(kindOf(r), i32, coll.OpSum, 8, 0, r, n) },
			func(r int) string { return kindOf(r).String() }},
		tc{"allgather/count", "count", 2,
			func(r int) *core.Request {
				return request(core.KindAllgather, i32, 0, 5000+pick(r == 2, 7, 0), 0, r, n)
			},
			func(r int) string { return strconv.Itoa(5000 + pick(r == 2, 7, 0)) }},
		tc{"reduce_scatter/op", "op", 1,
			func(r int) *core.Request {
				return request(core.KindReduceScatter, i32, pick(r == 1, coll.OpMin, coll.OpSum), 3000, 0, r, n)
			},
			func(r int) string { return pick(r == 1, coll.OpMin, coll.OpSum).String() }},
		tc{"alltoall/dtype", "dtype", 3,
			func(r int) *core.Request {
				return request(core.KindAlltoall, pick(r == 3, f32, i32), 0, 100, 0, r, n)
			},
			func(r int) string { return pick(r == 3, f32, i32).String() }},
		tc{"broadcast/count", "count", 0, // the root differs
			func(r int) *core.Request {
				return request(core.KindBroadcast, i32, 0, 100+pick(r == 0, 1, 0), 0, r, n)
			},
			func(r int) string { return strconv.Itoa(100 + pick(r == 0, 1, 0)) }},
		tc{"barrier-gather/kind", "kind", 1,
			func(r int) *core.Request {
				return request(pick(r == 1, core.KindGather, core.KindBarrier), i32, 0, 10, 0, r, n)
			},
			func(r int) string { return pick(r == 1, core.KindGather, core.KindBarrier).String() }},
	)
	rs := group(t, n)
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			ctx := context.Background()
			vals := make([]string, n)
			for r := range vals {
				vals[r] = c.val(r)
			}
			noErrors(t, each(rs, func(b rank) error {
				err := b.c.Do(ctx, c.req(b.Rank()))
				if err := checkMismatch(err, b.Rank(), c.field, c.culprit, c.val); c.culprit >= 0 && err != nil {
					return err
				}
				if err := checkVerdict(err, b.Rank(), c.field, vals); err != nil {
					return err
				}
				return inStep(ctx, b.c)
			}))
		})
	}
}

// TestOptionMismatch: ranks whose options make them choose other
// algorithms or cut frames otherwise get a MismatchError naming that.
func TestOptionMismatch(t *testing.T) {
	const n = 3
	for _, c := range []struct {
		name, field string
		count       int
		opts        func(r int) []Option
		val         func(r int) string
	}{
		{"algorithm", "algorithm", 16,
			func(r int) []Option {
				if r == 2 {
					return []Option{WithAllreduceAlgorithm(Ring)}
				}
				return nil
			},
			func(r int) string { return pick(r == 2, Ring, RecursiveDoubling).String() }},
		{"chunk size", "chunk size", 1 << 19,
			func(r int) []Option {
				if r == 2 {
					return []Option{WithChunkSize(4096)}
				}
				return nil
			},
			func(r int) string { return strconv.Itoa(pick(r == 2, 4096, DefaultChunkSize)) }},
	} {
		t.Run(c.name, func(t *testing.T) {
			rs := groupEach(t, n, c.opts)
			ctx := context.Background()
			noErrors(t, each(rs, func(b rank) error {
				err := b.c.Do(ctx, request(core.KindAllreduce, coll.DTypeFloat32, coll.OpSum, c.count, 0, b.Rank(), n))
				return checkMismatch(err, b.Rank(), c.field, 2, c.val)
			}))
		})
	}
}

// TestRefuse: a rank whose own request fails core.Check returns that
// error, and every peer returns at once a MismatchError naming it; the
// next calls run.
func TestRefuse(t *testing.T) {
	const n = 4
	f32 := coll.DTypeFloat32
	short := func(req *core.Request) *core.Request {
		if req.Send != nil {
			req.Send = req.Send[:len(req.Send)-1]
		} else {
			req.Recv = req.Recv[:len(req.Recv)-1]
		}
		return req
	}
	for _, c := range []struct {
		name    string
		culprit int
		kind    core.Kind // the culprit's
		want    error     // the culprit's error
		req     func(r int) *core.Request
	}{
		{"allreduce/small", 2, core.KindAllreduce, core.ErrBufferLength, func(r int) *core.Request {
			req := request(core.KindAllreduce, f32, coll.OpSum, 16, 0, r, n)
			if r == 2 {
				short(req)
			}
			return req
		}},
		{"allreduce/ring", 1, core.KindAllreduce, core.ErrBufferLength, func(r int) *core.Request {
			req := request(core.KindAllreduce, f32, coll.OpSum, 1<<18, 0, r, n)
			if r == 1 {
				short(req)
			}
			return req
		}},
		{"allreduce/unsupported-op", 3, core.KindAllreduce, core.ErrUnsupported, func(r int) *core.Request {
			req := request(core.KindAllreduce, f32, coll.OpSum, 16, 0, r, n)
			if r == 3 {
				req.Op = 250
			}
			return req
		}},
		{"broadcast/root", 0, core.KindBroadcast, core.ErrBufferLength, func(r int) *core.Request {
			req := request(core.KindBroadcast, f32, 0, 1000, 0, r, n)
			if r == 0 {
				short(req)
			}
			return req
		}},
		{"broadcast/4MiB-leaf", 3, core.KindBroadcast, core.ErrBufferLength, func(r int) *core.Request {
			req := request(core.KindBroadcast, f32, 0, 1<<20, 0, r, n)
			if r == 3 {
				short(req)
			}
			return req
		}},
		{"gather/leaf", 2, core.KindGather, core.ErrBufferLength, func(r int) *core.Request {
			req := request(core.KindGather, f32, 0, 100, 1, r, n)
			if r == 2 {
				short(req)
			}
			return req
		}},
		{"reduce/root-out-of-range", 1, core.KindReduce, core.ErrInvalid, func(r int) *core.Request {
			root := 0
			if r == 1 {
				root = n
			}
			return request(core.KindReduce, f32, coll.OpSum, 100, root, r, n)
		}},
		{"alltoall", 0, core.KindAlltoall, core.ErrBufferLength, func(r int) *core.Request {
			req := request(core.KindAlltoall, f32, 0, 100, 0, r, n)
			if r == 0 {
				short(req)
			}
			return req
		}},
		{"barrier/garbage-kind", 2, core.Kind(200), core.ErrUnsupported, func(r int) *core.Request {
			if r == 2 {
				return &core.Request{Kind: 200, DType: 99, Count: -5, Root: -1}
			}
			return &core.Request{Kind: core.KindBarrier}
		}},
	} {
		t.Run(c.name, func(t *testing.T) {
			rs := group(t, n)
			ctx := context.Background()
			noErrors(t, each(rs, func(b rank) error {
				r := b.Rank()
				err := b.c.Do(ctx, c.req(r))
				t.Logf("rank %d: %v", r, err)
				if r == c.culprit {
					if !errors.Is(err, c.want) {
						return fmt.Errorf("rank %d (the culprit): got %v, want %v", r, err, c.want)
					}
				} else if err := checkRefused(err, r, c.culprit, c.kind); err != nil {
					return err
				}
				return inStep(ctx, b.c)
			}))
		})
	}
}

// TestRefuseNil: a backend asked to refuse a nil request still tells its
// peers, which fail at once naming it.
func TestRefuseNil(t *testing.T) {
	rs := group(t, 3)
	ctx := context.Background()
	noErrors(t, each(rs, func(b rank) error {
		if b.Rank() == 1 {
			if err := b.Refuse(ctx, nil); err != nil {
				return err
			}
		} else if err := checkRefused(coll.Barrier(ctx, b.c), b.Rank(), 1, 0); err != nil {
			return err
		}
		return inStep(ctx, b.c)
	}))
}

// TestSendRecvAgreement: a recv whose message disagrees with it returns a
// MismatchError naming the sender, a refused send makes the receiver
// return one naming the sender, a refused recv discards the message; and
// every later message lines up.
func TestSendRecvAgreement(t *testing.T) {
	i32, f32 := coll.DTypeInt32, coll.DTypeFloat32
	msg := func(kind core.Kind, dt core.DType, count, peer int) *core.Request {
		req := &core.Request{Kind: kind, DType: dt, Count: count, Peer: peer}
		if kind == core.KindSend {
			req.Send = make([]byte, count*dt.Size())
		} else {
			req.Recv = make([]byte, count*dt.Size())
		}
		return req
	}
	// after checks that a message now goes through whole.
	after := func(ctx context.Context, b rank) error {
		buf := make([]int32, 5000)
		if b.Rank() == 0 {
			for i := range buf {
				buf[i] = int32(i * 3)
			}
			return coll.SendInt32(ctx, b.c, buf, 1)
		}
		if err := coll.RecvInt32(ctx, b.c, buf, 0); err != nil {
			return err
		}
		for i, v := range buf {
			if v != int32(i*3) {
				return fmt.Errorf("the message after: element %d = %d", i, v)
			}
		}
		return nil
	}
	for _, c := range []struct {
		name          string
		send, recv    *core.Request
		sendErr       error  // rank 0's error, wrapped
		field         string // rank 1's MismatchError
		mine, theirs  string
		recvRefused   bool
		refusedTheirs string
	}{
		{name: "count", send: msg(core.KindSend, i32, 8, 1), recv: msg(core.KindRecv, i32, 9, 0), field: "count", mine: "9", theirs: "8"},
		{name: "dtype", send: msg(core.KindSend, f32, 4000, 1), recv: msg(core.KindRecv, i32, 4000, 0), field: "dtype", mine: "int32", theirs: "float32"},
		{name: "refused send", send: func() *core.Request { r := msg(core.KindSend, i32, 8, 1); r.Send = r.Send[:3]; return r }(),
			recv: msg(core.KindRecv, i32, 8, 0), sendErr: core.ErrBufferLength, field: "argument", mine: "valid", theirs: "send of 8 int32"},
		{name: "refused recv", send: msg(core.KindSend, i32, 100000, 1),
			recv: func() *core.Request { r := msg(core.KindRecv, i32, 100000, 0); r.Recv = r.Recv[:5]; return r }(), recvRefused: true},
	} {
		t.Run(c.name, func(t *testing.T) {
			rs := group(t, 2)
			ctx := context.Background()
			noErrors(t, each(rs, func(b rank) error {
				if b.Rank() == 0 {
					if err := b.c.Do(ctx, c.send); (c.sendErr == nil && err != nil) || !errors.Is(err, c.sendErr) {
						return fmt.Errorf("send: got %v, want %v", err, c.sendErr)
					}
					return after(ctx, b)
				}
				err := b.c.Do(ctx, c.recv)
				if c.recvRefused {
					if !errors.Is(err, core.ErrBufferLength) {
						return fmt.Errorf("recv: got %v, want ErrBufferLength", err)
					}
				} else {
					var me *core.MismatchError
					if !errors.As(err, &me) || me.Field != c.field || me.Rank != 1 || me.Peer != 0 || me.Mine != c.mine || me.Theirs != c.theirs {
						return fmt.Errorf("recv: got %v, want a MismatchError on %s, 1 passed %s, 0 passed %s", err, c.field, c.mine, c.theirs)
					}
				}
				return after(ctx, b)
			}))
		})
	}
}

// TestConcurrentGuard: one communicator per rank used by 4 goroutines at
// once. Calls that overlap on a rank fail (core.ErrConcurrentUse, or the
// abort it sends to the peers), nothing hangs, and a call that returns nil
// holds an intact result: one contribution from each rank, never bytes
// from different calls mixed.
func TestConcurrentGuard(t *testing.T) {
	const n, workers = 3, 4
	rs := group(t, n)
	var ok, failed, concurrent atomic.Int64
	errs := each(rs, func(b rank) error {
		var wg sync.WaitGroup
		werrs := make([]error, workers)
		for w := range workers {
			wg.Go(func() {
				ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
				defer cancel()
				// Staggered, so that the first worker's calls run alone
				// (and succeed) for a while before the others overlap them.
				time.Sleep(time.Duration(w) * 20 * time.Millisecond)
				count := 64
				if w%2 == 1 {
					count = 100000 // the ring: long enough to overlap
				}
				buf := make([]int32, count)
				for range 50 {
					for i := range buf {
						buf[i] = 1 << (4*b.Rank() + w)
					}
					if err := coll.AllreduceInt32(ctx, b.c, buf, buf, coll.OpSum); err != nil {
						failed.Add(1)
						if errors.Is(err, core.ErrConcurrentUse) {
							concurrent.Add(1)
						}
						return
					}
					ok.Add(1)
					for i, v := range buf {
						if v != buf[0] {
							werrs[w] = fmt.Errorf("rank %d worker %d: element %d = %#x, element 0 = %#x", b.Rank(), w, i, v, buf[0])
							return
						}
					}
					for q := range n {
						if nib := uint32(buf[0]) >> (4 * q) & 0xf; nib&(nib-1) != 0 || nib == 0 {
							werrs[w] = fmt.Errorf("rank %d worker %d: result %#x holds %#x from rank %d, want one worker's bit", b.Rank(), w, buf[0], nib, q)
							return
						}
					}
				}
			})
		}
		wg.Wait()
		return errors.Join(werrs...)
	})
	noErrors(t, errs)
	t.Logf("%d calls returned nil, %d failed (%d with ErrConcurrentUse)", ok.Load(), failed.Load(), concurrent.Load())
	for _, b := range rs {
		if b.c.Err() == nil && failed.Load() > 0 {
			// Every rank's communicator learns of the failure: a peer's
			// abort reaches it at its next call.
			if err := coll.Barrier(context.Background(), b.c); err == nil {
				t.Errorf("rank %d: a barrier after the others failed succeeded", b.Rank())
			}
		}
	}
}

// TestAbort: Abort during a call makes it return at once with an error
// wrapping the cause, the peers' calls fail naming this rank, and every
// later call fails.
func TestAbort(t *testing.T) {
	const n = 3
	rs := group(t, n)
	cause := errors.New("the application gave up")
	ctx := context.Background()
	errs := make([]error, n)
	var wg sync.WaitGroup
	for _, r := range []int{0, 2} { // rank 1 never calls: the allreduce waits
		wg.Go(func() {
			buf := make([]float32, 1<<18)
			errs[r] = coll.AllreduceFloat32(ctx, rs[r].c, buf, buf, coll.OpSum)
		})
	}
	time.Sleep(100 * time.Millisecond)
	rs[0].c.Abort(cause)
	wg.Wait()
	if !errors.Is(errs[0], cause) {
		t.Errorf("rank 0: got %v, want an error wrapping the cause", errs[0])
	}
	var pe *core.PeerError
	if !errors.As(errs[2], &pe) || len(pe.Ranks) != 1 || pe.Ranks[0] != 0 || errors.Is(errs[2], context.DeadlineExceeded) {
		t.Errorf("rank 2: got %v, want a PeerError naming rank 0", errs[2])
	}
	if err := coll.Barrier(ctx, rs[0].c); !errors.Is(err, cause) {
		t.Errorf("rank 0, the next call: got %v, want an error wrapping the cause", err)
	}
	for i := 0; rs[1].failure.Load() == nil; i++ {
		if i > 500 {
			t.Fatal("rank 1 never heard of rank 0's abort")
		}
		time.Sleep(10 * time.Millisecond)
	}
	if err := coll.Barrier(ctx, rs[1].c); !errors.As(err, &pe) || pe.Ranks[0] != 0 {
		t.Errorf("rank 1, the next call: got %v, want a PeerError naming rank 0", err)
	}
	t.Logf("rank 0: %v\nrank 2: %v", errs[0], errs[2])
}

// TestRandomDisagreements runs random sequences of calls in which ranks
// now and then pass other arguments, or refuse a call, and checks that
// every call ends as the package documentation says on every rank: nil
// when the calls agree, else the same verdict, with the ranks in step.
func TestRandomDisagreements(t *testing.T) {
	t.Run("np=4", func(t *testing.T) { randomDisagreements(t, 4, 1) })
	// Tiny frames: many per call, so that disagreements meet pipelines
	// in full flow.
	t.Run("np=5/small-frames", func(t *testing.T) { randomDisagreements(t, 5, 2, smallAlgos...) })
}

func randomDisagreements(t *testing.T, n int, seed uint64, opts ...Option) {
	calls := 150
	if testing.Short() {
		calls = 40
	}
	kinds := []core.Kind{core.KindAllreduce, core.KindReduce, core.KindBroadcast, core.KindAllgather,
		core.KindReduceScatter, core.KindGather, core.KindScatter, core.KindAlltoall, core.KindBarrier}
	dtypes := []core.DType{coll.DTypeFloat32, coll.DTypeInt32, coll.DTypeFloat64}
	ops := []core.Op{coll.OpSum, coll.OpMax}
	counts := []int{0, 1, 5, 1000, 70000, 300000}
	type call struct {
		kind   core.Kind
		dtype  core.DType
		op     core.Op
		count  int
		root   int
		refuse bool
	}
	rng := rand.New(rand.NewPCG(seed, 2))
	plan := make([][]call, calls)
	for i := range plan {
		plan[i] = make([]call, n)
		base := call{kinds[rng.IntN(len(kinds))], dtypes[rng.IntN(len(dtypes))], ops[rng.IntN(len(ops))], counts[rng.IntN(len(counts))], rng.IntN(n), false}
		for r := range n {
			plan[i][r] = base
		}
		for range rng.IntN(3) { // up to two ranks differ
			c := &plan[i][rng.IntN(n)]
			switch rng.IntN(6) {
			case 0:
				c.kind = kinds[rng.IntN(len(kinds))]
			case 1:
				c.dtype = dtypes[rng.IntN(len(dtypes))]
			case 2:
				c.op = ops[rng.IntN(len(ops))]
			case 3:
				c.count = counts[rng.IntN(len(counts))]
			case 4:
				c.root = rng.IntN(n)
			case 5:
				c.refuse = true
			}
		}
		for r := range n {
			if plan[i][r].kind == core.KindBarrier {
				plan[i][r].refuse = false // a barrier has no argument to get wrong
			}
		}
	}
	// The fields as core.Check leaves them, in the verdict's order.
	fields := func(c call) []string {
		sh := c.kind.Shape()
		f := []string{c.kind.String(), c.dtype.String(), c.op.String(), strconv.Itoa(c.count), strconv.Itoa(c.root)}
		if !sh.Op {
			f[2] = "none"
		}
		if !sh.Root {
			f[4] = "0"
		}
		if c.kind == core.KindBarrier {
			f[1], f[3] = core.DType(0).String(), "0"
		}
		return f
	}
	names := []string{"kind", "dtype", "op", "count", "root"}
	rs := group(t, n, opts...)
	ctx := context.Background()
	noErrors(t, each(rs, func(b rank) error {
		me := b.Rank()
		for i, cs := range plan {
			c := cs[me]
			req := request(c.kind, c.dtype, c.op, c.count, c.root, me, n)
			if c.refuse {
				req.Count++ // the buffers no longer fit
			}
			err := b.c.Do(ctx, req)
			// What every rank must return.
			refuser := -1
			for r := range n {
				if cs[r].refuse {
					refuser = r
					break
				}
			}
			switch {
			case c.refuse:
				if !errors.Is(err, core.ErrBufferLength) {
					return fmt.Errorf("call %d: rank %d refused: got %v", i, me, err)
				}
			case refuser >= 0:
				if err := checkRefused(err, me, refuser, cs[refuser].kind); err != nil {
					return fmt.Errorf("call %d: %w", i, err)
				}
			default:
				field := -1
				for f := range names {
					for r := range n {
						if fields(cs[r])[f] != fields(cs[0])[f] {
							field = f
						}
					}
					if field >= 0 {
						break
					}
				}
				if field < 0 {
					if err != nil {
						return fmt.Errorf("call %d: rank %d: the calls agree, got %v", i, me, err)
					}
					continue
				}
				vals := make([]string, n)
				for r := range n {
					vals[r] = fields(cs[r])[field]
				}
				if err := checkVerdict(err, me, names[field], vals); err != nil {
					return fmt.Errorf("call %d: %w", i, err)
				}
			}
		}
		return inStep(ctx, b.c)
	}))
}

// checkVerdict checks rank r's error from a call in which ranks passed
// vals (by rank) for field: the value most ranks passed (on a tie, the
// lowest rank's) is the reference, and the lowest rank that passed another
// the culprit. Ranks with the reference name the culprit; the others name
// the lowest rank with the reference.
func checkVerdict(err error, r int, field string, vals []string) error {
	ref, best := 0, 0
	for i := range vals {
		c := 0
		for j := range vals {
			if vals[j] == vals[i] {
				c++
			}
		}
		if c > best {
			ref, best = i, c
		}
	}
	peer := ref
	if vals[r] == vals[ref] {
		for i := range vals {
			if vals[i] != vals[ref] {
				peer = i
				break
			}
		}
	}
	var me *core.MismatchError
	if !errors.As(err, &me) || me.Field != field || me.Rank != r || me.Mine != vals[r] || me.Peer != peer || me.Theirs != vals[peer] {
		return fmt.Errorf("rank %d: got %v, want a MismatchError on %s naming rank %d (values by rank: %v)", r, err, field, peer, vals)
	}
	return nil
}

// TestWakesLeaveHealthyCallsAlone: calls woken far more often than usual
// (every millisecond, so that most waits and payload reads are
// interrupted and resumed, SO_RCVLOWAT reads included) still give right
// results and find no disagreement where there is none.
func TestWakesLeaveHealthyCallsAlone(t *testing.T) {
	defer func(d time.Duration) { wakeEvery = d }(wakeEvery)
	wakeEvery = time.Millisecond
	const n = 3
	rs := group(t, n)
	ctx := context.Background()
	count := 4<<20 + 3 // float32: 16 MiB, long enough to be woken many times
	noErrors(t, each(rs, func(b rank) error {
		send := make([]float32, count)
		for i := range send {
			send[i] = float32(i%1000 + b.Rank())
		}
		recv := make([]float32, count)
		for _, algo := range []func() error{
			func() error { return coll.AllreduceFloat32(ctx, b.c, send, recv, coll.OpSum) },
			func() error { return coll.BroadcastFloat32(ctx, b.c, recv, 1) },
		} {
			if err := algo(); err != nil {
				return err
			}
		}
		for i, v := range recv {
			if want := float32(n*(i%1000) + n*(n-1)/2); v != want {
				return fmt.Errorf("element %d = %v, want %v", i, v, want)
			}
		}
		return inStep(ctx, b.c)
	}))
	if err := runConformSmall(ctx, rs); err != nil {
		t.Fatal(err)
	}
}

// runConformSmall runs the conformance suite at a few sizes on rs.
func runConformSmall(ctx context.Context, rs []rank) error {
	return errors.Join(each(rs, func(b rank) error {
		return conform.Run(ctx, b.c, conform.Options{Sizes: []int{1, 300, 70000}, NoRandom: true})
	})...)
}
