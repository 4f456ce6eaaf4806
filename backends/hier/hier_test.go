package hier

import (
	"context"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"slices"
	"strconv"
	"sync"
	"testing"
	"time"

	"github.com/gocoll/gocoll/backends/kv"
	"github.com/gocoll/gocoll/core"
	"github.com/gocoll/gocoll/generated/coll"
	"github.com/gocoll/gocoll/internal/memstore"
	"github.com/gocoll/gocoll/store"
	"github.com/gocoll/gocoll/tests/conform"
)

// The stages here run on kv backends: real backends with real agreement,
// refusal and abort, in one process, so that hier's own logic is tested
// apart from the transports dispatch builds it from.

// job runs body on one goroutine rank per job rank, each with a
// hierarchical backend (behind a core.Guard, as a communicator drives it)
// for the node layout nodes, whose stages are kv backends on the stores
// storeOf returns, and returns each rank's error.
func job(t *testing.T, nodes [][]int, timeout time.Duration, storeOf func(rank int) core.Store,
	body func(ctx context.Context, g *core.Guard) error) []error {
	t.Helper()
	size := 0
	for _, n := range nodes {
		size += len(n)
	}
	ctx := context.Background()
	errs := make([]error, size)
	var wg sync.WaitGroup
	for node, ranks := range nodes {
		for local, rank := range ranks {
			wg.Go(func() {
				s := storeOf(rank)
				group := func(prefix string, r, n int) core.Group {
					return core.Group{Rank: r, Size: n, Store: store.Prefix(s, prefix), JobID: "hier-test", Timeout: timeout}
				}
				var cfg Config
				var err error
				defer func() {
					if err != nil {
						errs[rank] = err
					}
				}()
				if cfg.Local, err = kv.New(ctx, group("local"+strconv.Itoa(node)+"/", local, len(ranks))); err != nil {
					return
				}
				if cfg.World, err = kv.New(ctx, group("world/", rank, size)); err != nil {
					return
				}
				if local == 0 {
					if cfg.Leaders, err = kv.New(ctx, group("leaders/", node, len(nodes))); err != nil {
						return
					}
				}
				cfg.Nodes, cfg.Store = nodes, store.Prefix(s, "hier/")
				h, err := New(cfg)
				if err != nil {
					return
				}
				g := core.NewGuard(h)
				defer g.Close()
				errs[rank] = body(ctx, g)
			})
		}
	}
	wg.Wait()
	return errs
}

func memJob(t *testing.T, nodes [][]int, body func(ctx context.Context, g *core.Guard) error) []error {
	s := memstore.New()
	// A minute: a rank left waiting would fail at it with a PeerError,
	// not with the error a test wants.
	return job(t, nodes, time.Minute, func(int) core.Store { return s }, body)
}

func noErrors(t *testing.T, errs []error) {
	t.Helper()
	for r, err := range errs {
		if err != nil {
			t.Errorf("rank %d: %v", r, err)
		}
	}
}

var layouts = [][][]int{
	{{0, 1}, {2, 3}},
	{{0, 3}, {1, 2}, {4}},
	{{0, 1, 2}},
}

// val is rank r's element i: small integers, so that every sum, max and
// average below is exact in float32 whatever the order of folding.
func val(r, i int) float32 { return float32((r*7 + i*3) % 4) }

// The staged allreduce against a fold computed here, for ops with and
// without a finish step, in and out of place, and an allgather after it.
func TestAllreduce(t *testing.T) {
	const count = 5
	for _, nodes := range layouts {
		t.Run(fmt.Sprint(nodes), func(t *testing.T) {
			errs := memJob(t, nodes, func(ctx context.Context, g *core.Guard) error {
				n, me := g.Size(), g.Rank()
				for _, op := range []core.Op{coll.OpSum, coll.OpMax, coll.OpAvg} {
					send := make([]float32, count)
					for i := range send {
						send[i] = val(me, i)
					}
					out := make([]float32, count)
					if err := coll.AllreduceFloat32(ctx, g, send, out, op); err != nil {
						return fmt.Errorf("%v: %w", op, err)
					}
					if err := coll.AllreduceFloat32(ctx, g, send, send, op); err != nil {
						return fmt.Errorf("%v in place: %w", op, err)
					}
					for i := range out {
						want := val(0, i)
						for r := 1; r < n; r++ {
							switch op {
							case coll.OpMax:
								want = max(want, val(r, i))
							default:
								want += val(r, i)
							}
						}
						if op == coll.OpAvg {
							want /= float32(n)
						}
						if out[i] != want || send[i] != want {
							return fmt.Errorf("%v [%d] = %v (in place %v), want %v", op, i, out[i], send[i], want)
						}
					}
				}
				all := make([]int32, n)
				if err := coll.AllgatherInt32(ctx, g, []int32{int32(me * 10)}, all); err != nil {
					return err
				}
				for r, v := range all {
					if v != int32(r*10) {
						return fmt.Errorf("allgather = %v", all)
					}
				}
				return nil
			})
			noErrors(t, errs)
		})
	}
}

// stagedReq is a float32 call of kind with count elements per rank at
// size ranks, its buffers the lengths Check wants.
func stagedReq(kind core.Kind, count, size int) *core.Request {
	req := &core.Request{Kind: kind, DType: coll.DTypeFloat32, Count: count, Send: make([]byte, 4*count), Recv: make([]byte, 4*count)}
	switch kind {
	case coll.KindAllreduce, coll.KindReduce:
		req.Op = coll.OpSum
	case coll.KindReduceScatter:
		req.Op = coll.OpSum
		req.Send = make([]byte, 4*count*size)
	case coll.KindAllgather, coll.KindGather:
		req.Recv = make([]byte, 4*count*size)
	case coll.KindScatter:
		req.Send = make([]byte, 4*count*size)
	case coll.KindAlltoall:
		req.Send, req.Recv = make([]byte, 4*count*size), make([]byte, 4*count*size)
	case coll.KindBroadcast:
		req.Send = nil
	}
	return req
}

// The staged collectives whose calls take buffers.
var dataKinds = []core.Kind{coll.KindAllreduce, coll.KindAllgather, coll.KindBroadcast, coll.KindReduce,
	coll.KindGather, coll.KindScatter, coll.KindReduceScatter, coll.KindAlltoall}

// A rank whose staged call fails its own check gets that error; every
// other rank, on its node and on the others, a MismatchError naming it
// with Field "argument"; and the next allreduce lines up. The culprit is
// a leader or not, in turn.
func TestRefusedCallNamesTheCulprit(t *testing.T) {
	nodes := [][]int{{0, 3}, {1, 2}, {4}}
	for _, kind := range dataKinds {
		for _, bad := range []int{0, 2, 3, 4} {
			t.Run(fmt.Sprint(kind, "/rank", bad), func(t *testing.T) {
				errs := memJob(t, nodes, func(ctx context.Context, g *core.Guard) error {
					req := stagedReq(kind, 2, g.Size())
					if g.Rank() == bad {
						// Every rank passes a Recv of the wrong length
						// when it is the root.
						req.Root = bad
						req.Recv = req.Recv[:4]
					}
					err := g.Do(ctx, req)
					if g.Rank() == bad {
						if !errors.Is(err, core.ErrBufferLength) {
							return fmt.Errorf("own error %v; want ErrBufferLength", err)
						}
					} else if err := wantMismatch(err, g.Rank(), "argument", bad); err != nil {
						return err
					}
					return lineUp(ctx, g)
				})
				noErrors(t, errs)
			})
		}
	}
}

// A disagreement inside one node, or between nodes, is a MismatchError
// on every rank naming the field, the call's values and a rank that
// passed the other value; and the next allreduce lines up.
func TestMismatchNamesTheCulprit(t *testing.T) {
	nodes := [][]int{{0, 3}, {1, 2}, {4}}
	for _, kind := range dataKinds {
		for _, tc := range []struct {
			name string
			odd  []int // the ranks that pass count 3 instead of 2
		}{
			{"within a node", []int{3}},
			{"a leader within its node", []int{1}},
			{"a whole node", []int{1, 2}},
			{"a lone node", []int{4}},
		} {
			t.Run(fmt.Sprint(kind, "/", tc.name), func(t *testing.T) {
				errs := memJob(t, nodes, func(ctx context.Context, g *core.Guard) error {
					count := 2
					odd := slices.Contains(tc.odd, g.Rank())
					if odd {
						count = 3
					}
					err := g.Do(ctx, stagedReq(kind, count, g.Size()))
					var me *core.MismatchError
					if !errors.As(err, &me) || me.Field != "count" || me.Rank != g.Rank() || me.Mine != strconv.Itoa(count) {
						return fmt.Errorf("want a count MismatchError with this rank's count %d, got %v", count, err)
					}
					if slices.Contains(tc.odd, me.Peer) == odd || me.Theirs == me.Mine {
						return fmt.Errorf("the mismatch names rank %d, which passed the same count: %v", me.Peer, err)
					}
					return lineUp(ctx, g)
				})
				noErrors(t, errs)
			})
		}
	}
}

// A disagreement on the root of a rooted call is a MismatchError on
// every rank naming the root field and a rank that passed the other
// root, also where the stages' own roots (the root's node, its index
// there) would agree: both roots on another node, or on one node.
func TestRootMismatchNamesTheCulprit(t *testing.T) {
	nodes := [][]int{{0, 3}, {1, 2}, {4}}
	for _, kind := range []core.Kind{coll.KindBroadcast, coll.KindReduce, coll.KindGather, coll.KindScatter} {
		for _, tc := range []struct {
			name      string
			odd       []int // the ranks that pass root 2 instead of 1
			oddRoot   int
			rightRoot int
		}{
			{"within a node, roots on another", []int{3}, 2, 1},
			{"a whole node, roots on one node", []int{4}, 2, 1},
			{"a leader, roots on its node", []int{1}, 1, 2},
			{"a whole node, roots on another", []int{1, 2}, 3, 0},
			{"another node, the root not its node's leader", []int{4}, 1, 2},
		} {
			t.Run(fmt.Sprint(kind, "/", tc.name), func(t *testing.T) {
				errs := memJob(t, nodes, func(ctx context.Context, g *core.Guard) error {
					req := stagedReq(kind, 2, g.Size())
					odd := slices.Contains(tc.odd, g.Rank())
					req.Root = tc.rightRoot
					if odd {
						req.Root = tc.oddRoot
					}
					if g.Rank() != req.Root {
						switch kind {
						case coll.KindGather, coll.KindReduce:
							req.Recv = nil
						case coll.KindScatter:
							req.Send = nil
						}
					}
					err := g.Do(ctx, req)
					var me *core.MismatchError
					if !errors.As(err, &me) || me.Field != "root" || me.Rank != g.Rank() || me.Mine != strconv.Itoa(req.Root) {
						return fmt.Errorf("want a root MismatchError with this rank's root %d, got %v", req.Root, err)
					}
					if slices.Contains(tc.odd, me.Peer) == odd || me.Theirs == me.Mine {
						return fmt.Errorf("the mismatch names rank %d, which passed the same root: %v", me.Peer, err)
					}
					return lineUp(ctx, g)
				})
				noErrors(t, errs)
			})
		}
	}
}

// A refused call of a kind that runs on the world backend (a send): its
// peer names the culprit, and the next call lines up everywhere.
func TestRefusedWorldCallNamesTheCulprit(t *testing.T) {
	const bad, peer = 2, 0 // on different nodes
	errs := memJob(t, [][]int{{0, 1}, {2, 3}}, func(ctx context.Context, g *core.Guard) error {
		switch g.Rank() {
		case bad:
			err := g.Do(ctx, &core.Request{Kind: coll.KindSend, DType: coll.DTypeFloat32, Count: 2, Peer: peer, Send: make([]byte, 4)})
			if !errors.Is(err, core.ErrBufferLength) {
				return fmt.Errorf("own error %v; want ErrBufferLength", err)
			}
		case peer:
			err := g.Do(ctx, &core.Request{Kind: coll.KindRecv, DType: coll.DTypeFloat32, Count: 2, Peer: bad, Recv: make([]byte, 8)})
			if err := wantMismatch(err, g.Rank(), "argument", bad); err != nil {
				return err
			}
		}
		return lineUp(ctx, g)
	})
	noErrors(t, errs)
}

// Abort on one rank, which no peer's stage is waiting for yet, ends every
// rank's call of each staged kind: the peers in its stages learn it from
// their backends, and abort theirs in turn, so that ranks waiting in
// other stages learn it too; none waits for its timeout.
func TestAbortReachesEveryNode(t *testing.T) {
	for _, kind := range append([]core.Kind{coll.KindBarrier}, dataKinds...) {
		t.Run(kind.String(), func(t *testing.T) { abortDuring(t, kind) })
	}
}

// abortDuring runs TestAbortReachesEveryNode with the peers in a call of
// kind, rooted at the lone node.
func abortDuring(t *testing.T, kind core.Kind) {
	nodes := [][]int{{0, 3}, {1, 2}, {4}}
	secret := []byte("hier-abort")
	srv, err := store.Listen("127.0.0.1:0", secret, store.WithLogger(slog.New(slog.NewTextHandler(io.Discard, nil))))
	if err != nil {
		t.Fatal(err)
	}
	defer srv.Close()
	clients := make([]*store.Client, 5)
	for r := range clients {
		if clients[r], err = store.Dial(context.Background(), srv.Addr(), secret); err != nil {
			t.Fatal(err)
		}
		defer clients[r].Close()
	}
	cause := errors.New("rank 3 gives up")
	const aborter = 3
	errs := job(t, nodes, time.Minute, func(r int) core.Store { return clients[r] }, func(ctx context.Context, g *core.Guard) error {
		if g.Rank() == aborter {
			g.Abort(cause)
			if err := lineUp(ctx, g); !errors.Is(err, cause) {
				return fmt.Errorf("a call after Abort: %v; want its cause", err)
			}
			return nil
		}
		req := &core.Request{Kind: kind}
		if kind != coll.KindBarrier {
			req = stagedReq(kind, 2, g.Size())
			req.Root = 4
		}
		err := g.Do(ctx, req)
		var pe *core.PeerError
		if !errors.As(err, &pe) || !errors.Is(err, kv.ErrPeerAborted) || errors.Is(err, context.DeadlineExceeded) {
			return fmt.Errorf("want a PeerError naming an aborted rank, got %v", err)
		}
		return nil
	})
	noErrors(t, errs)
}

func wantMismatch(err error, rank int, field string, peer int) error {
	var me *core.MismatchError
	if !errors.As(err, &me) || me.Field != field || me.Peer != peer || me.Rank != rank {
		return fmt.Errorf("want a %s MismatchError naming rank %d, got %v", field, peer, err)
	}
	return nil
}

// lineUp runs an allreduce that every rank agrees on and checks its sum.
func lineUp(ctx context.Context, g *core.Guard) error {
	out := make([]int32, 1)
	if err := coll.AllreduceInt32(ctx, g, []int32{1}, out, coll.OpSum); err != nil {
		return err
	}
	if out[0] != int32(g.Size()) {
		return fmt.Errorf("the next allreduce = %d, want %d", out[0], g.Size())
	}
	return nil
}

// The conformance suite over the staged collectives, at layouts with even
// and uneven nodes and with ranks of a node not contiguous in job order.
func TestConformance(t *testing.T) {
	for _, nodes := range [][][]int{
		{{0, 1, 2}, {3, 4, 5}},
		{{0, 1}, {2, 3}, {4, 5}},
		{{0, 1}, {2}},
		{{0, 3}, {1, 2}, {4}},
	} {
		t.Run(fmt.Sprint(nodes), func(t *testing.T) {
			errs := memJob(t, nodes, func(ctx context.Context, g *core.Guard) error {
				return conform.Run(ctx, g, conform.Options{Sizes: []int{0, 1, 7, 40}, RandomSizes: []int{5},
					Filter: func(c conform.Case) bool {
						_, _, ok := staged(c.Kind)
						return ok
					}})
			})
			noErrors(t, errs)
		})
	}
}

// Ranks that disagree on the kind of a staged call fail with a kind
// MismatchError on every rank, whether the odd ranks share a node with
// others or make up a node; and the next allreduce lines up.
func TestKindMismatchFailsEveryRank(t *testing.T) {
	nodes := [][]int{{0, 3}, {1, 2}, {4}}
	for _, tc := range []struct {
		name       string
		odd        []int
		kind, oddK core.Kind
	}{
		{"a node broadcasts, the others allgather", []int{1, 2}, coll.KindAllgather, coll.KindBroadcast},
		{"a rank broadcasts, the others allgather", []int{3}, coll.KindAllgather, coll.KindBroadcast},
		{"a node gathers, the others reduce", []int{4}, coll.KindReduce, coll.KindGather},
		{"a rank barriers, the others broadcast", []int{2}, coll.KindBroadcast, coll.KindBarrier},
		{"a node alltoalls, the others allgather", []int{1, 2}, coll.KindAllgather, coll.KindAlltoall},
		{"a rank alltoalls, the others broadcast", []int{3}, coll.KindBroadcast, coll.KindAlltoall},
		{"a rank allgathers, the others alltoall", []int{0}, coll.KindAlltoall, coll.KindAllgather},
	} {
		t.Run(tc.name, func(t *testing.T) {
			errs := memJob(t, nodes, func(ctx context.Context, g *core.Guard) error {
				kind := tc.kind
				if slices.Contains(tc.odd, g.Rank()) {
					kind = tc.oddK
				}
				req := &core.Request{Kind: kind}
				if kind != coll.KindBarrier {
					req = stagedReq(kind, 2, g.Size())
				}
				err := g.Do(ctx, req)
				var me *core.MismatchError
				if !errors.As(err, &me) || me.Field != "kind" || me.Rank != g.Rank() {
					return fmt.Errorf("want a kind MismatchError, got %v", err)
				}
				return lineUp(ctx, g)
			})
			noErrors(t, errs)
		})
	}
}

// Alltoall takes its staged path up to alltoallStagedMax bytes and World
// above: both are checked bit for bit at counts on either side, for every
// dtype, at even and uneven layouts.
func TestAlltoallBothPaths(t *testing.T) {
	for _, nodes := range [][][]int{{{0, 1}, {2, 3}}, {{0, 3}, {1, 2}, {4}}} {
		t.Run(fmt.Sprint(nodes), func(t *testing.T) {
			size := 0
			for _, n := range nodes {
				size += len(n)
			}
			small := alltoallStagedMax / size / 8 // staged for every dtype
			large := alltoallStagedMax/size + 1   // World for every dtype
			errs := memJob(t, nodes, func(ctx context.Context, g *core.Guard) error {
				return conform.Run(ctx, g, conform.Options{Sizes: []int{small, large},
					Filter: func(c conform.Case) bool { return c.Kind == coll.KindAlltoall }})
			})
			noErrors(t, errs)
		})
	}
}

// Ranks that disagree on an alltoall's count, so that some would take the
// staged path and others World's, fail at once on every rank with a count
// MismatchError, whether the odd ranks make up a node or share one; and
// the next allreduce lines up.
func TestAlltoallPathDisagreement(t *testing.T) {
	nodes := [][]int{{0, 3}, {1, 2}, {4}}
	const size = 5
	small, large := 2, alltoallStagedMax/4/size+1
	for _, odd := range [][]int{{1, 2}, {3}, {4}, {0}} {
		t.Run(fmt.Sprint(odd), func(t *testing.T) {
			start := time.Now()
			errs := memJob(t, nodes, func(ctx context.Context, g *core.Guard) error {
				count := small
				if slices.Contains(odd, g.Rank()) {
					count = large
				}
				err := g.Do(ctx, stagedReq(coll.KindAlltoall, count, size))
				var me *core.MismatchError
				if !errors.As(err, &me) || me.Field != "count" || me.Rank != g.Rank() {
					return fmt.Errorf("want a count MismatchError, got %v", err)
				}
				return lineUp(ctx, g)
			})
			noErrors(t, errs)
			if d := time.Since(start); d > 20*time.Second {
				t.Errorf("the disagreement took %v to be reported: a rank waited for a timeout", d)
			}
		})
	}
}
