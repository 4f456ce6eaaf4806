package kv

import (
	"context"
	"encoding/binary"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"math"
	"math/rand/v2"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/gocoll/gocoll/core"
	"github.com/gocoll/gocoll/generated/coll"
	"github.com/gocoll/gocoll/internal/memstore"
	"github.com/gocoll/gocoll/store"
)

// group runs body on n goroutine ranks, each with its own kv backend on
// the stores mk returns behind a core.Guard, as a communicator drives it,
// and returns each rank's error.
func group(t *testing.T, n int, mk func(rank int) core.Store, timeout time.Duration, body func(ctx context.Context, b *core.Guard) error, opts ...Option) []error {
	t.Helper()
	// No deadline: the group's timeout bounds every wait, as in a job.
	ctx := context.Background()
	errs := make([]error, n)
	var wg sync.WaitGroup
	for r := 0; r < n; r++ {
		wg.Add(1)
		go func() {
			defer wg.Done()
			b, err := New(ctx, core.Group{Rank: r, Size: n, Store: mk(r), JobID: "test", Timeout: timeout}, opts...)
			if err != nil {
				errs[r] = err
				return
			}
			g := core.NewGuard(b)
			defer g.Close()
			errs[r] = body(ctx, g)
		}()
	}
	wg.Wait()
	return errs
}

func memGroup(t *testing.T, n int, body func(ctx context.Context, b *core.Guard) error, opts ...Option) []error {
	s := memstore.New()
	return group(t, n, func(int) core.Store { return s }, 10*time.Second, body, opts...)
}

func noErrors(t *testing.T, errs []error) {
	t.Helper()
	for r, err := range errs {
		if err != nil {
			t.Errorf("rank %d: %v", r, err)
		}
	}
}

func f32bytes(v []float32) []byte {
	b := make([]byte, 4*len(v))
	for i, x := range v {
		binary.LittleEndian.PutUint32(b[4*i:], math.Float32bits(x))
	}
	return b
}

func i32bytes(v []int32) []byte {
	b := make([]byte, 4*len(v))
	for i, x := range v {
		binary.LittleEndian.PutUint32(b[4*i:], uint32(x))
	}
	return b
}

// input is rank r's send data for a collective of total elements.
func inputF32(seed, r, total int) []float32 {
	rng := rand.New(rand.NewPCG(uint64(seed), uint64(r)))
	v := make([]float32, total)
	for i := range v {
		v[i] = float32(rng.NormFloat64())
	}
	return v
}

// sumF32 folds left to right in float32, as the spec requires.
func sumF32(ins [][]float32, i int) float32 {
	acc := ins[0][i]
	for _, in := range ins[1:] {
		acc += in[i]
	}
	return acc
}

func TestCollectivesFloat32Sum(t *testing.T) {
	for _, n := range []int{1, 3, 4} {
		for _, chunk := range []int{1 << 20, 12} { // 12 bytes: many chunks per value
			t.Run(fmt.Sprintf("n=%d/chunk=%d", n, chunk), func(t *testing.T) {
				testCollectives(t, n, chunk, 7)
			})
		}
	}
}

func testCollectives(t *testing.T, n, chunk, count int) {
	ins := make([][]float32, n) // each rank's count*n inputs
	for r := range ins {
		ins[r] = inputF32(1, r, count*n)
	}
	const root = 1
	rootOf := func() int { return root % n }
	type result struct{ allreduce, reduce, bcast, allgather, rs, gather, scatter, a2a []byte }
	res := make([]result, n)
	errs := memGroup(t, n, func(ctx context.Context, b *core.Guard) error {
		r := b.Rank()
		out := &res[r]
		send := f32bytes(ins[r][:count])
		all := f32bytes(ins[r])
		do := func(req *core.Request) error { req.DType = coll.DTypeFloat32; req.Count = count; return b.Do(ctx, req) }
		out.allreduce = make([]byte, 4*count)
		if err := do(&core.Request{Kind: coll.KindAllreduce, Op: coll.OpSum, Send: send, Recv: out.allreduce}); err != nil {
			return err
		}
		var recv []byte
		if r == rootOf() {
			recv = make([]byte, 4*count)
		}
		if err := do(&core.Request{Kind: coll.KindReduce, Op: coll.OpSum, Root: rootOf(), Send: send, Recv: recv}); err != nil {
			return err
		}
		out.reduce = recv
		out.bcast = append([]byte(nil), send...)
		if err := do(&core.Request{Kind: coll.KindBroadcast, Root: rootOf(), Send: out.bcast, Recv: out.bcast}); err != nil {
			return err
		}
		out.allgather = make([]byte, 4*count*n)
		if err := do(&core.Request{Kind: coll.KindAllgather, Send: send, Recv: out.allgather}); err != nil {
			return err
		}
		out.rs = make([]byte, 4*count)
		if err := do(&core.Request{Kind: coll.KindReduceScatter, Op: coll.OpSum, Send: all, Recv: out.rs}); err != nil {
			return err
		}
		if r == rootOf() {
			out.gather = make([]byte, 4*count*n)
		}
		if err := do(&core.Request{Kind: coll.KindGather, Root: rootOf(), Send: send, Recv: out.gather}); err != nil {
			return err
		}
		var ssend []byte
		if r == rootOf() {
			ssend = all
		}
		out.scatter = make([]byte, 4*count)
		if err := do(&core.Request{Kind: coll.KindScatter, Root: rootOf(), Send: ssend, Recv: out.scatter}); err != nil {
			return err
		}
		out.a2a = make([]byte, 4*count*n)
		if err := do(&core.Request{Kind: coll.KindAlltoall, Send: all, Recv: out.a2a}); err != nil {
			return err
		}
		if err := b.Do(ctx, &core.Request{Kind: coll.KindBarrier}); err != nil {
			return err
		}
		// In-place allreduce: recv is send.
		buf := append([]byte(nil), send...)
		if err := do(&core.Request{Kind: coll.KindAllreduce, Op: coll.OpSum, Send: buf, Recv: buf}); err != nil {
			return err
		}
		if string(buf) != string(out.allreduce) {
			return errors.New("in-place allreduce differs from out-of-place")
		}
		return nil
	}, WithChunkSize(chunk))
	noErrors(t, errs)
	if t.Failed() {
		return
	}
	firsts := make([][]float32, n)
	for r := range ins {
		firsts[r] = ins[r][:count]
	}
	wantReduce := make([]float32, count)
	for i := range wantReduce {
		wantReduce[i] = sumF32(firsts, i)
	}
	var wantGather []float32
	for r := 0; r < n; r++ {
		wantGather = append(wantGather, firsts[r]...)
	}
	for r := 0; r < n; r++ {
		check := func(what string, got []byte, want []float32) {
			if string(got) != string(f32bytes(want)) {
				t.Errorf("rank %d %s: got %x, want %x", r, what, got, f32bytes(want))
			}
		}
		check("allreduce", res[r].allreduce, wantReduce)
		if r == rootOf() {
			check("reduce", res[r].reduce, wantReduce)
			check("gather", res[r].gather, wantGather)
		}
		check("broadcast", res[r].bcast, firsts[rootOf()])
		check("allgather", res[r].allgather, wantGather)
		rs := make([][]float32, n)
		for j := range rs {
			rs[j] = ins[j][r*count : (r+1)*count]
		}
		wantRS := make([]float32, count)
		for i := range wantRS {
			wantRS[i] = sumF32(rs, i)
		}
		check("reduce_scatter", res[r].rs, wantRS)
		check("scatter", res[r].scatter, ins[rootOf()][r*count:(r+1)*count])
		var wantA2A []float32
		for j := 0; j < n; j++ {
			wantA2A = append(wantA2A, ins[j][r*count:(r+1)*count]...)
		}
		check("alltoall", res[r].a2a, wantA2A)
	}
}

func TestAvgAndIntMax(t *testing.T) {
	const n, count = 3, 5
	got := make([][2][]byte, n)
	errs := memGroup(t, n, func(ctx context.Context, b *core.Guard) error {
		r := b.Rank()
		f := make([]float32, count)
		iv := make([]int32, count)
		for i := range f {
			f[i] = float32(r*10 + i)
			iv[i] = int32((r*7 + i*3) % 11)
		}
		got[r][0] = make([]byte, 4*count)
		if err := b.Do(ctx, &core.Request{Kind: coll.KindAllreduce, DType: coll.DTypeFloat32, Op: coll.OpAvg, Count: count, Send: f32bytes(f), Recv: got[r][0]}); err != nil {
			return err
		}
		got[r][1] = make([]byte, 4*count)
		return b.Do(ctx, &core.Request{Kind: coll.KindAllreduce, DType: coll.DTypeInt32, Op: coll.OpMax, Count: count, Send: i32bytes(iv), Recv: got[r][1]})
	})
	noErrors(t, errs)
	wantAvg := make([]float32, count)
	wantMax := make([]int32, count)
	for i := 0; i < count; i++ {
		var sum float32
		for r := 0; r < n; r++ {
			sum += float32(r*10 + i)
			wantMax[i] = max(wantMax[i], int32((r*7+i*3)%11))
		}
		wantAvg[i] = sum / n
	}
	for r := 0; r < n; r++ {
		if string(got[r][0]) != string(f32bytes(wantAvg)) {
			t.Errorf("rank %d avg: got %x want %x", r, got[r][0], f32bytes(wantAvg))
		}
		if string(got[r][1]) != string(i32bytes(wantMax)) {
			t.Errorf("rank %d int32 max: got %x want %x", r, got[r][1], i32bytes(wantMax))
		}
	}
}

func TestSendRecv(t *testing.T) {
	const n = 3
	got := make([][]byte, n)
	errs := memGroup(t, n, func(ctx context.Context, b *core.Guard) error {
		r := b.Rank()
		// A ring exchange, twice: everyone sends right, then receives from left.
		for round := 0; round < 2; round++ {
			msg := f32bytes([]float32{float32(r), float32(round), 0.5})
			if err := b.Do(ctx, &core.Request{Kind: coll.KindSend, DType: coll.DTypeFloat32, Count: 3, Peer: (r + 1) % n, Send: msg}); err != nil {
				return err
			}
			got[r] = make([]byte, 12)
			if err := b.Do(ctx, &core.Request{Kind: coll.KindRecv, DType: coll.DTypeFloat32, Count: 3, Peer: (r + n - 1) % n, Recv: got[r]}); err != nil {
				return err
			}
			want := f32bytes([]float32{float32((r + n - 1) % n), float32(round), 0.5})
			if string(got[r]) != string(want) {
				return fmt.Errorf("round %d: got %x want %x", round, got[r], want)
			}
		}
		return nil
	}, WithChunkSize(5))
	noErrors(t, errs)
}

// Every field that must agree is compared: every rank gets a
// MismatchError naming it and a disagreeing rank, and the next
// collective still works.
func TestMismatch(t *testing.T) {
	const n, odd = 3, 2
	for _, tc := range []struct {
		field string
		req   func(r int) *core.Request
	}{
		{"count", func(r int) *core.Request {
			count := 4
			if r == odd {
				count = 5
			}
			return &core.Request{Kind: coll.KindAllreduce, DType: coll.DTypeFloat32, Op: coll.OpSum, Count: count,
				Send: make([]byte, 4*count), Recv: make([]byte, 4*count)}
		}},
		{"dtype", func(r int) *core.Request {
			dt := coll.DTypeFloat32
			if r == odd {
				dt = coll.DTypeInt32
			}
			return &core.Request{Kind: coll.KindAllreduce, DType: dt, Op: coll.OpSum, Count: 2, Send: make([]byte, 8), Recv: make([]byte, 8)}
		}},
		{"op", func(r int) *core.Request {
			op := coll.OpSum
			if r == odd {
				op = coll.OpMax
			}
			return &core.Request{Kind: coll.KindAllreduce, DType: coll.DTypeFloat32, Op: op, Count: 2, Send: make([]byte, 8), Recv: make([]byte, 8)}
		}},
		{"root", func(r int) *core.Request {
			root := 0
			if r == odd {
				root = 1
			}
			return &core.Request{Kind: coll.KindBroadcast, DType: coll.DTypeFloat32, Count: 2, Root: root, Recv: make([]byte, 8)}
		}},
		{"kind", func(r int) *core.Request {
			if r == odd {
				return &core.Request{Kind: coll.KindAllgather, DType: coll.DTypeFloat32, Count: 2, Send: make([]byte, 8), Recv: make([]byte, 8*n)}
			}
			return &core.Request{Kind: coll.KindAllreduce, DType: coll.DTypeFloat32, Op: coll.OpSum, Count: 2, Send: make([]byte, 8), Recv: make([]byte, 8)}
		}},
	} {
		t.Run(tc.field, func(t *testing.T) {
			errs := memGroup(t, n, func(ctx context.Context, b *core.Guard) error {
				r := b.Rank()
				err := b.Do(ctx, tc.req(r))
				var me *core.MismatchError
				if !errors.As(err, &me) || me.Field != tc.field || me.Rank != r {
					return fmt.Errorf("want a %s MismatchError, got %v", tc.field, err)
				}
				if (r == odd) != (me.Peer != odd) {
					return fmt.Errorf("mismatch names rank %d: %v", me.Peer, err)
				}
				return b.Do(ctx, &core.Request{Kind: coll.KindBarrier})
			})
			noErrors(t, errs)
		})
	}
}

// A rank whose call fails its own check (a short buffer, an op its dtype
// lacks, a collective id no one runs) gets that error, and every other
// rank a MismatchError naming it with Field "argument", at once; the next
// collective still lines up.
func TestRefusedCallNamesTheRank(t *testing.T) {
	const n, bad = 3, 1
	for _, tc := range []struct {
		name string
		req  func(r int) *core.Request
		want error // the bad rank's own error
	}{
		{"short send", func(r int) *core.Request {
			send := make([]byte, 16)
			if r == bad {
				send = send[:12]
			}
			return &core.Request{Kind: coll.KindAllgather, DType: coll.DTypeFloat32, Count: 4, Send: send, Recv: make([]byte, 16*n)}
		}, core.ErrBufferLength},
		{"unsupported op", func(r int) *core.Request {
			op := coll.OpSum
			if r == bad {
				op = coll.OpBXor
			}
			return &core.Request{Kind: coll.KindAllreduce, DType: coll.DTypeFloat32, Op: op, Count: 1, Send: make([]byte, 4), Recv: make([]byte, 4)}
		}, core.ErrUnsupported},
		{"unknown collective", func(r int) *core.Request {
			kind := coll.KindAllreduce
			if r == bad {
				kind = 99
			}
			return &core.Request{Kind: kind, DType: coll.DTypeFloat32, Op: coll.OpSum, Count: 1, Send: make([]byte, 4), Recv: make([]byte, 4)}
		}, core.ErrUnsupported},
		{"root out of range", func(r int) *core.Request {
			root := 0
			if r == bad {
				root = n
			}
			return &core.Request{Kind: coll.KindBroadcast, DType: coll.DTypeFloat32, Count: 1, Root: root, Recv: make([]byte, 4)}
		}, core.ErrInvalid},
	} {
		t.Run(tc.name, func(t *testing.T) {
			// A minute's timeout: a peer left waiting would show as a
			// PeerError after it, not as the MismatchError wanted.
			s := memstore.New()
			errs := group(t, n, func(int) core.Store { return s }, time.Minute, func(ctx context.Context, b *core.Guard) error {
				err := b.Do(ctx, tc.req(b.Rank()))
				if b.Rank() == bad {
					if !errors.Is(err, tc.want) {
						return fmt.Errorf("own error %v, want one wrapping %v", err, tc.want)
					}
				} else {
					var me *core.MismatchError
					if !errors.As(err, &me) || me.Field != "argument" || me.Peer != bad || me.Rank != b.Rank() {
						return fmt.Errorf("want a MismatchError naming rank %d's argument, got %v", bad, err)
					}
				}
				return b.Do(ctx, &core.Request{Kind: coll.KindBarrier})
			})
			noErrors(t, errs)
		})
	}
}

// A send refused on the sending rank fails the matching recv at once,
// naming the sender; the next message between them still lines up.
func TestRefusedSend(t *testing.T) {
	s := memstore.New()
	errs := group(t, 2, func(int) core.Store { return s }, time.Minute, func(ctx context.Context, b *core.Guard) error {
		if b.Rank() == 0 {
			if err := b.Do(ctx, &core.Request{Kind: coll.KindSend, DType: coll.DTypeFloat32, Count: 2, Peer: 1, Send: make([]byte, 7)}); !errors.Is(err, core.ErrBufferLength) {
				return fmt.Errorf("short send: %v", err)
			}
			return b.Do(ctx, &core.Request{Kind: coll.KindSend, DType: coll.DTypeFloat32, Count: 1, Peer: 1, Send: f32bytes([]float32{3})})
		}
		err := b.Do(ctx, &core.Request{Kind: coll.KindRecv, DType: coll.DTypeFloat32, Count: 2, Peer: 0, Recv: make([]byte, 8)})
		var me *core.MismatchError
		if !errors.As(err, &me) || me.Field != "argument" || me.Peer != 0 {
			return fmt.Errorf("recv of a refused send: %v", err)
		}
		got := make([]byte, 4)
		if err := b.Do(ctx, &core.Request{Kind: coll.KindRecv, DType: coll.DTypeFloat32, Count: 1, Peer: 0, Recv: got}); err != nil {
			return err
		}
		if string(got) != string(f32bytes([]float32{3})) {
			return fmt.Errorf("the next message: %x", got)
		}
		return nil
	})
	noErrors(t, errs)
}

// A rank that never arrives is named on every other rank; the backend
// then refuses further collectives.
func TestPeerNeverArrives(t *testing.T) {
	const n, absent = 4, 2
	s := memstore.New()
	errs := group(t, n, func(int) core.Store { return s }, time.Second, func(ctx context.Context, b *core.Guard) error {
		if b.Rank() == absent {
			return nil
		}
		err := b.Do(ctx, &core.Request{Kind: coll.KindBarrier})
		var pe *core.PeerError
		if !errors.As(err, &pe) || fmt.Sprint(pe.Ranks) != fmt.Sprint([]int{absent}) || !errors.Is(err, context.DeadlineExceeded) {
			return fmt.Errorf("want a PeerError naming rank %d, got %v", absent, err)
		}
		if err := b.Do(ctx, &core.Request{Kind: coll.KindBarrier}); err == nil || !strings.Contains(err.Error(), "failed earlier") {
			return fmt.Errorf("collective after a fatal error: %v", err)
		}
		return nil
	}, WithChunkSize(1<<20))
	for r, err := range errs {
		if err != nil {
			t.Errorf("rank %d: %v", r, err)
		}
	}
}

// The same collectives over the real TCP store, one client per rank.
func TestOverTCPStore(t *testing.T) {
	secret := []byte("kv-test")
	srv, err := store.Listen("127.0.0.1:0", secret, store.WithLogger(slog.New(slog.NewTextHandler(io.Discard, nil))))
	if err != nil {
		t.Fatal(err)
	}
	defer srv.Close()
	const n = 4
	clients := make([]*store.Client, n)
	for r := range clients {
		if clients[r], err = store.Dial(context.Background(), srv.Addr(), secret); err != nil {
			t.Fatal(err)
		}
		defer clients[r].Close()
	}
	const count = 1 << 16 // 256 KiB per rank, several chunks at 64 KiB
	got := make([][]byte, n)
	errs := group(t, n, func(r int) core.Store { return clients[r].WithPrefix("job/") }, 20*time.Second, func(ctx context.Context, b *core.Guard) error {
		r := b.Rank()
		got[r] = make([]byte, 4*count*n)
		for i := 0; i < 3; i++ {
			if err := b.Do(ctx, &core.Request{Kind: coll.KindAllgather, DType: coll.DTypeFloat32, Count: count,
				Send: f32bytes(inputF32(i, r, count)), Recv: got[r]}); err != nil {
				return err
			}
		}
		return nil
	}, WithChunkSize(64<<10))
	noErrors(t, errs)
	var want []float32
	for r := 0; r < n; r++ {
		want = append(want, inputF32(2, r, count)...)
	}
	for r := 0; r < n; r++ {
		if string(got[r]) != string(f32bytes(want)) {
			t.Errorf("rank %d: allgather over TCP differs", r)
		}
	}
}

// A rank whose store connection closes (its process died) is named at
// once, with ErrPeerGone rather than a timeout, in collectives and recv.
func TestDeadRankNamedWithoutTimeout(t *testing.T) {
	secret := []byte("kv-dead")
	srv, err := store.Listen("127.0.0.1:0", secret, store.WithLogger(slog.New(slog.NewTextHandler(io.Discard, nil))))
	if err != nil {
		t.Fatal(err)
	}
	defer srv.Close()
	const n, dead = 3, 1
	clients := make([]*store.Client, n)
	for r := range clients {
		if clients[r], err = store.Dial(context.Background(), srv.Addr(), secret); err != nil {
			t.Fatal(err)
		}
		defer clients[r].Close()
	}
	errs := group(t, n, func(r int) core.Store { return clients[r].WithPrefix("job/") }, time.Minute, func(ctx context.Context, b *core.Guard) error {
		if b.Rank() == dead {
			return clients[dead].Close() // as if the process died
		}
		var err error
		if b.Rank() == 0 {
			err = b.Do(ctx, &core.Request{Kind: coll.KindBarrier})
		} else {
			err = b.Do(ctx, &core.Request{Kind: coll.KindRecv, DType: coll.DTypeFloat32, Count: 1, Peer: dead, Recv: make([]byte, 4)})
		}
		var pe *core.PeerError
		if !errors.As(err, &pe) || fmt.Sprint(pe.Ranks) != fmt.Sprint([]int{dead}) || !errors.Is(err, ErrPeerGone) {
			return fmt.Errorf("want a PeerError naming rank %d as gone, got %v", dead, err)
		}
		return nil
	})
	noErrors(t, errs)
}

// tcpStoreGroup runs body on n ranks that each meet through their own
// client of one TCP store server, so that waits are guarded by the ranks'
// alive keys.
func tcpStoreGroup(t *testing.T, n int, timeout time.Duration, body func(ctx context.Context, b *core.Guard) error) []error {
	t.Helper()
	secret := []byte("kv-tcp")
	srv, err := store.Listen("127.0.0.1:0", secret, store.WithLogger(slog.New(slog.NewTextHandler(io.Discard, nil))))
	if err != nil {
		t.Fatal(err)
	}
	defer srv.Close()
	clients := make([]*store.Client, n)
	for r := range clients {
		if clients[r], err = store.Dial(context.Background(), srv.Addr(), secret); err != nil {
			t.Fatal(err)
		}
		defer clients[r].Close()
	}
	return group(t, n, func(r int) core.Store { return clients[r].WithPrefix("job/") }, timeout, body)
}

// Two calls in flight on one rank's communicator (F1) fail both, and the
// peers waiting for that rank fail at once with a PeerError that names it
// and says why, not at their timeout.
func TestConcurrentUseAbortsEveryRank(t *testing.T) {
	const n = 3
	errs := tcpStoreGroup(t, n, time.Minute, func(ctx context.Context, b *core.Guard) error {
		if b.Rank() != 0 {
			// Waits for rank 0, whose calls below never join it.
			err := b.Do(ctx, &core.Request{Kind: coll.KindBarrier})
			var pe *core.PeerError
			if !errors.As(err, &pe) || fmt.Sprint(pe.Ranks) != "[0]" || !errors.Is(err, ErrPeerAborted) ||
				!strings.Contains(err.Error(), "two calls in flight") {
				return fmt.Errorf("want a PeerError naming rank 0 as aborted for concurrent use, got %v", err)
			}
			return nil
		}
		// Two receives no one sends to: neither can finish before the
		// other starts, whichever starts first.
		var wg sync.WaitGroup
		errs := make([]error, 2)
		for i := range errs {
			wg.Go(func() {
				errs[i] = b.Do(ctx, &core.Request{Kind: coll.KindRecv, DType: coll.DTypeFloat32, Count: 1, Peer: 1 + i, Recv: make([]byte, 4)})
			})
		}
		wg.Wait()
		for i, err := range errs {
			if !errors.Is(err, core.ErrConcurrentUse) {
				return fmt.Errorf("call %d: %v; want ErrConcurrentUse", i, err)
			}
		}
		if err := b.Do(ctx, &core.Request{Kind: coll.KindBarrier}); !errors.Is(err, core.ErrConcurrentUse) {
			return fmt.Errorf("a call after the abort: %v; want the abort's cause", err)
		}
		return nil
	})
	noErrors(t, errs)
}

// Abort from another goroutine ends this rank's call in flight with the
// cause, and the peers' waits for it at once.
func TestAbort(t *testing.T) {
	const n = 3
	cause := errors.New("the job is shutting down")
	errs := tcpStoreGroup(t, n, time.Minute, func(ctx context.Context, b *core.Guard) error {
		if b.Rank() != 0 {
			err := b.Do(ctx, &core.Request{Kind: coll.KindBarrier})
			var pe *core.PeerError
			if !errors.As(err, &pe) || fmt.Sprint(pe.Ranks) != "[0]" || !errors.Is(err, ErrPeerAborted) || !strings.Contains(err.Error(), cause.Error()) {
				return fmt.Errorf("want a PeerError naming rank 0 as aborted, got %v", err)
			}
			return nil
		}
		time.AfterFunc(100*time.Millisecond, func() { b.Abort(cause) })
		// Before or after the abort, this call fails with its cause.
		err := b.Do(ctx, &core.Request{Kind: coll.KindRecv, DType: coll.DTypeFloat32, Count: 1, Peer: 1, Recv: make([]byte, 4)})
		if !errors.Is(err, cause) {
			return fmt.Errorf("the call in flight: %v; want the abort's cause", err)
		}
		return nil
	})
	noErrors(t, errs)
}
