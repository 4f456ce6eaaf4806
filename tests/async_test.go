package tests

import (
	"context"
	"errors"
	"fmt"
	"os"
	"slices"
	"testing"
	"time"

	"github.com/gocoll/gocoll/core"
	"github.com/gocoll/gocoll/dispatch"
	"github.com/gocoll/gocoll/generated/coll"
	"github.com/gocoll/gocoll/internal/proctest"
)

// Started (non-blocking) calls with real processes: many in flight on one
// communicator, checked; cancelled through their context; aborted; a rank
// killed while they are in flight. And point-to-point rules every backend
// keeps: Send then Recv on both ranks works up to the eager size, SendRecv
// and batches at any size.

const envAsync = "GOCOLL_TEST_ASYNC"

// asyncTimeout is the communicator's timeout in these ranks. Failures must
// reach every rank long before it (asyncQuick).
const (
	asyncTimeout = 40 * time.Second
	asyncQuick   = 10 * time.Second
)

func init() { proctest.Register("async", asyncBody) }

// asyncBackends are the transports the started calls are tested on:
// "auto" on two simulated nodes is the hierarchical one.
var asyncBackends = []struct {
	name, label string
	nodes       int
}{{"shm", "shm", 0}, {"tcp", "tcp", 0}, {"kv", "kv", 0}, {"auto", "hier-2nodes", 2}}

func runAsync(t *testing.T, scenario string, np int, only ...string) {
	t.Helper()
	for _, be := range asyncBackends {
		if only != nil && !slices.Contains(only, be.label) {
			continue
		}
		t.Run(be.label, func(t *testing.T) {
			if why := available(be.name); why != "" {
				t.Skipf("dispatch offers no %q backend here: %s", be.name, why)
			}
			proctest.Run(t, "async", np, proctest.Timeout(2*time.Minute),
				proctest.Env(envBackend+"="+be.name, envAsync+"="+scenario),
				proctest.RankEnv(func(r int) []string {
					if be.nodes > 0 {
						return []string{fmt.Sprintf("GOCOLL_NODE_ID=asyncnode%d", r*be.nodes/np)}
					}
					return nil
				}))
		})
	}
}

// TestStartedInFlight: 64 calls of every kind and mixed sizes in flight on
// one communicator at once, with blocking calls among them, all checked.
func TestStartedInFlight(t *testing.T) { runAsync(t, "inflight", 3) }

// TestStartedCancel: a rank cancels the context its started calls run
// under while they wait for a rank that has not started yet: every rank's
// calls fail quickly (on the peers, from the first the culprit had not
// done its part in), the peers' naming it. On shm and tcp: the
// hierarchical backend's peers name the rank the culprit waited for.
func TestStartedCancel(t *testing.T) { runAsync(t, "cancel", 3, "shm", "tcp") }

// TestStartedAbort: Comm.Abort from another goroutine while calls are in
// flight fails them on every rank quickly.
func TestStartedAbort(t *testing.T) { runAsync(t, "abort", 3, "shm", "tcp") }

// TestStartedKilled: a rank killed with SIGKILL while calls are in flight:
// every handle's Wait on the other ranks returns a *core.PeerError naming
// it.
func TestStartedKilled(t *testing.T) {
	for _, be := range asyncBackends {
		if be.label != "shm" && be.label != "tcp" {
			continue
		}
		t.Run(be.label, func(t *testing.T) {
			if why := available(be.name); why != "" {
				t.Skipf("dispatch offers no %q backend here: %s", be.name, why)
			}
			res := proctest.Run(t, "async", 3, proctest.Timeout(2*time.Minute),
				proctest.Env(envBackend+"="+be.name, envAsync+"=killed"), proctest.KillOnMark(1, "started"))
			if !res[1].Killed {
				t.Errorf("rank 1 was not killed: %+v", res[1])
			}
		})
	}
}

// TestP2PRules: Send then Recv on both ranks of a pair up to the eager
// size, SendRecv round a ring and batches at every size, start forms of
// send and recv, all checked.
func TestP2PRules(t *testing.T) { runAsync(t, "p2p", 4) }

// TestRendezvous: above core.EagerSize a send waits for its recv on shm
// and tcp alike: a send returns only once the late receiver has begun,
// and two ranks that both send first time out, both of them; at the eager
// size a send does not wait.
func TestRendezvous(t *testing.T) { runAsync(t, "rendezvous", 2, "shm", "tcp") }

func asyncBody(ctx context.Context, r *proctest.Rank) error {
	c, err := initCommTimeout(ctx, r, os.Getenv(envBackend), asyncTimeout)
	if err != nil {
		return err
	}
	defer c.Close()
	switch s := os.Getenv(envAsync); s {
	case "inflight":
		return inFlight(ctx, c)
	case "cancel", "abort":
		return failInFlight(ctx, c, s)
	case "killed":
		return killedInFlight(ctx, c, r)
	case "p2p":
		return p2pRules(ctx, c)
	case "rendezvous":
		return rendezvous(ctx, c)
	default:
		return fmt.Errorf("unknown scenario %q", s)
	}
}

// started is one call in flight and how to check its result.
type started struct {
	h     core.Handle
	what  string
	check func() error
}

// startMixed starts call number i of a mixed sequence (every rank starts
// the same sequence) and returns it.
func startMixed(ctx context.Context, c *dispatch.Comm, i int) (started, error) {
	me, n := c.Rank(), c.Size()
	sizes := []int{0, 1, 7, 1000, 17000, 70000, 300000}
	count := sizes[i%len(sizes)]
	var s started
	var err error
	switch i % 6 {
	case 0, 5: // allreduce, in place every other time
		send, recv := make([]int32, count), make([]int32, count)
		for j := range send {
			send[j] = int32((me+1)*(i+1) + j%5)
		}
		want := func(j int) int32 { return int32((i+1)*n*(n+1)/2 + n*(j%5)) }
		orig := slices.Clone(send)
		if i%2 == 1 {
			recv = send
		}
		s.what = fmt.Sprintf("allreduce of %d", count)
		s.h, err = coll.StartAllreduceInt32(ctx, c, send, recv, coll.OpSum)
		s.check = func() error {
			for j, v := range recv {
				if v != want(j) {
					return fmt.Errorf("element %d = %d, want %d", j, v, want(j))
				}
			}
			if i%2 == 0 && !slices.Equal(send, orig) {
				return errors.New("the send buffer changed")
			}
			return nil
		}
	case 1: // broadcast from a rotating root
		root := i % n
		buf := make([]float64, count)
		if me == root {
			for j := range buf {
				buf[j] = float64(i*1000 + j)
			}
		}
		s.what = fmt.Sprintf("broadcast of %d from %d", count, root)
		s.h, err = coll.StartBroadcastFloat64(ctx, c, buf, root)
		s.check = func() error {
			for j, v := range buf {
				if v != float64(i*1000+j) {
					return fmt.Errorf("element %d = %v", j, v)
				}
			}
			return nil
		}
	case 2: // allgather
		send, recv := make([]uint8, count), make([]uint8, count*n)
		for j := range send {
			send[j] = uint8(me*31 + i + j)
		}
		s.what = fmt.Sprintf("allgather of %d", count)
		s.h, err = coll.StartAllgatherUint8(ctx, c, send, recv)
		s.check = func() error {
			for r := range n {
				for j := range count {
					if got, want := recv[r*count+j], uint8(r*31+i+j); got != want {
						return fmt.Errorf("rank %d's element %d = %d, want %d", r, j, got, want)
					}
				}
			}
			return nil
		}
	case 3: // a message round the ring, as one batch
		next, prev := (me+1)%n, (me+n-1)%n
		send, recv := make([]int64, count), make([]int64, count)
		for j := range send {
			send[j] = int64(me*1_000_000 + i*1000 + j)
		}
		s.what = fmt.Sprintf("sendrecv of %d", count)
		s.h, err = coll.StartSendRecvInt64(ctx, c, send, next, recv, prev)
		s.check = func() error {
			for j, v := range recv {
				if want := int64(prev*1_000_000 + i*1000 + j); v != want {
					return fmt.Errorf("element %d = %d, want %d", j, v, want)
				}
			}
			return nil
		}
	case 4:
		s.what = "barrier"
		s.h, err = coll.StartBarrier(ctx, c)
		s.check = func() error { return nil }
	}
	if err != nil {
		return s, fmt.Errorf("starting call %d (%s): %w", i, s.what, err)
	}
	return s, nil
}

func inFlight(ctx context.Context, c *dispatch.Comm) error {
	const calls = 64
	var hs []started
	for i := range calls {
		s, err := startMixed(ctx, c, i)
		if err != nil {
			return err
		}
		hs = append(hs, s)
		if i == calls/2 {
			// A blocking call issued now runs behind the 33 in flight.
			buf := []float32{float32(c.Rank())}
			if err := coll.AllreduceFloat32(ctx, c, buf, buf, coll.OpMax); err != nil {
				return fmt.Errorf("the blocking call among started ones: %w", err)
			}
			if buf[0] != float32(c.Size()-1) {
				return fmt.Errorf("the blocking allreduce gave %v", buf[0])
			}
			for j, s := range hs {
				select {
				case <-s.h.Done():
				default:
					return fmt.Errorf("the blocking call returned before started call %d (%s) completed", j, s.what)
				}
			}
		}
	}
	for i, s := range hs {
		if err := s.h.Wait(ctx); err != nil {
			return fmt.Errorf("call %d (%s): %w", i, s.what, err)
		}
		if err := s.check(); err != nil {
			return fmt.Errorf("call %d (%s): %w", i, s.what, err)
		}
	}
	// They completed in order: each one's Done was closed by the time
	// the last one's was.
	return c.Barrier(ctx)
}

// failInFlight: rank 0 starts its calls once the culprit has given up, so
// that the others' calls wait for it meanwhile; rank 1 cancels its calls'
// context, or rank 2 aborts.
func failInFlight(ctx context.Context, c *dispatch.Comm, how string) error {
	me := c.Rank()
	culprit := 1
	if how == "abort" {
		culprit = 2
	}
	if err := c.Barrier(ctx); err != nil {
		return err
	}
	cctx, cancel := context.WithCancel(ctx)
	defer cancel()
	if me == 0 {
		if _, err := c.Store().Get(ctx, "gave-up"); err != nil {
			return err
		}
	}
	var hs []started
	for i := range 16 {
		s, err := startMixed(cctx, c, i)
		if err != nil {
			if me == 0 {
				// Rank 0 may start after the failure reached it.
				return wantFailure(err, me, culprit, how)
			}
			return err
		}
		hs = append(hs, s)
	}
	t0 := time.Now()
	if me == culprit {
		time.Sleep(100 * time.Millisecond)
		if how == "cancel" {
			cancel()
		} else {
			go c.Abort() // from another goroutine
		}
		time.Sleep(50 * time.Millisecond) // the failure reaches the peers first
		if err := c.Store().Set(ctx, "gave-up", nil); err != nil {
			return err
		}
	}
	// On the peers, calls the culprit had done its part in before it gave
	// up may complete (shm's direct rounds need nothing more of it); from
	// the first that fails on, all fail.
	failed := false
	for i, s := range hs {
		err := s.h.Wait(context.Background())
		if err == nil && me != culprit && !failed && i < len(hs)-1 {
			if err := s.check(); err != nil {
				return fmt.Errorf("call %d (%s) completed before the failure: %w", i, s.what, err)
			}
			continue
		}
		failed = true
		if err := wantFailure(err, me, culprit, how); err != nil {
			return fmt.Errorf("call %d (%s): %w", i, s.what, err)
		}
	}
	d := time.Since(t0)
	fmt.Printf("%s: rank %d: %d calls ended in %v\n", how, me, len(hs), d)
	if d > asyncQuick {
		return fmt.Errorf("the calls took %v to fail", d)
	}
	return nil
}

// wantFailure checks the error of a call the culprit cancelled or aborted.
func wantFailure(err error, me, culprit int, how string) error {
	if err == nil {
		return errors.New("succeeded although its peers gave up")
	}
	if me == culprit {
		want := context.Canceled
		if how == "abort" {
			want = core.ErrAborted
		}
		if !errors.Is(err, want) {
			return fmt.Errorf("got %v, want an error wrapping %v", err, want)
		}
		return nil
	}
	var pe *core.PeerError
	if !errors.As(err, &pe) || !slices.Contains(pe.Ranks, culprit) {
		return fmt.Errorf("got %v, want a *core.PeerError naming rank %d", err, culprit)
	}
	return nil
}

// killedInFlight: rank 1 is killed once everyone has calls in flight.
func killedInFlight(ctx context.Context, c *dispatch.Comm, r *proctest.Rank) error {
	if err := c.Barrier(ctx); err != nil {
		return err
	}
	if r.Rank == 1 {
		time.Sleep(200 * time.Millisecond) // the others' calls wait for it
		r.Mark("started")                  // proctest kills this process now
		time.Sleep(time.Minute)
		return errors.New("rank 1 outlived its kill")
	}
	var hs []started
	t0 := time.Now()
	for i := range 64 {
		s, err := startMixed(ctx, c, i)
		var pe *core.PeerError
		if err != nil && errors.As(err, &pe) && slices.Contains(pe.Ranks, 1) {
			break // the communicator failed already: later starts fail at once
		}
		if err != nil {
			return err
		}
		hs = append(hs, s)
	}
	for i, s := range hs {
		err := s.h.Wait(ctx)
		var pe *core.PeerError
		if !errors.As(err, &pe) || !slices.Contains(pe.Ranks, 1) {
			return fmt.Errorf("call %d (%s): got %v, want a *core.PeerError naming rank 1", i, s.what, err)
		}
	}
	d := time.Since(t0)
	fmt.Printf("killed: rank %d: %d calls failed within %v of the first start\n", r.Rank, len(hs), d)
	if d > asyncQuick {
		return fmt.Errorf("the calls took %v to fail", d)
	}
	return nil
}

// p2pRules checks the point-to-point rules at np 4 (pairs 0-1 and 2-3).
func p2pRules(ctx context.Context, c *dispatch.Comm) error {
	me, n := c.Rank(), c.Size()
	partner := me ^ 1
	fillMsg := func(b []int32, from, tag int) {
		for j := range b {
			b[j] = int32(from*100000 + tag*1000 + j)
		}
	}
	checkMsg := func(b []int32, from, tag int) error {
		for j, v := range b {
			if want := int32(from*100000 + tag*1000 + j); v != want {
				return fmt.Errorf("element %d from rank %d = %d, want %d", j, from, v, want)
			}
		}
		return nil
	}
	// Send then Recv on both ranks: eager up to 64 KiB on every backend.
	for tag, count := range []int{0, 1, 1000, 16 << 10} {
		send, recv := make([]int32, count), make([]int32, count)
		fillMsg(send, me, tag)
		if err := coll.SendInt32(ctx, c, send, partner); err != nil {
			return fmt.Errorf("send of %d bytes before the recv: %w", 4*count, err)
		}
		if err := coll.RecvInt32(ctx, c, recv, partner); err != nil {
			return fmt.Errorf("recv of %d bytes after the send: %w", 4*count, err)
		}
		if err := checkMsg(recv, partner, tag); err != nil {
			return fmt.Errorf("send then recv of %d bytes: %w", 4*count, err)
		}
	}
	// SendRecv round the ring, small to 8 MiB: no size deadlocks.
	next, prev := (me+1)%n, (me+n-1)%n
	for tag, count := range []int{1, 1 << 14, 1 << 16, 1 << 21} {
		send, recv := make([]int32, count), make([]int32, count)
		fillMsg(send, me, 10+tag)
		if err := coll.SendRecvInt32(ctx, c, send, next, recv, prev); err != nil {
			return fmt.Errorf("sendrecv of %d bytes: %w", 4*count, err)
		}
		if err := checkMsg(recv, prev, 10+tag); err != nil {
			return fmt.Errorf("sendrecv of %d bytes: %w", 4*count, err)
		}
		// and with the partner, both ways at once
		if err := coll.SendRecvInt32(ctx, c, send, partner, recv, partner); err != nil {
			return fmt.Errorf("exchange of %d bytes: %w", 4*count, err)
		}
		if err := checkMsg(recv, partner, 10+tag); err != nil {
			return fmt.Errorf("exchange of %d bytes: %w", 4*count, err)
		}
	}
	// An alltoall as one batch: two messages to every peer, 1 MiB each,
	// issued in an order that would deadlock blocking calls.
	const count = 1 << 18
	var reqs []*core.Request
	recvs := map[int][2][]int32{}
	for p := range n {
		if p == me {
			continue
		}
		var rb [2][]int32
		for k := range 2 {
			rb[k] = make([]int32, count)
			reqs = append(reqs, &core.Request{Kind: core.KindRecv, DType: coll.DTypeInt32, Count: count, Peer: p, Recv: core.Bytes(rb[k])})
		}
		recvs[p] = rb
		for k := range 2 {
			sb := make([]int32, count)
			fillMsg(sb, me, 20+k+p)
			reqs = append(reqs, &core.Request{Kind: core.KindSend, DType: coll.DTypeInt32, Count: count, Peer: p, Send: core.Bytes(sb)})
		}
	}
	if err := c.Batch(ctx, reqs...); err != nil {
		return fmt.Errorf("batched alltoall: %w", err)
	}
	for p, rb := range recvs {
		for k := range 2 {
			if err := checkMsg(rb[k], p, 20+k+me); err != nil {
				return fmt.Errorf("batched alltoall, message %d: %w", k, err)
			}
		}
	}
	// Start forms of recv and send, the recv first on the lower rank of
	// the pair (both in that order would wait for each other: calls run
	// in the order issued, so use SendRecv or a batch for that).
	recv := make([]int32, 5000)
	send := make([]int32, 5000)
	fillMsg(send, me, 99)
	var hr, hs core.Handle
	var err error
	if me%2 == 0 {
		if hr, err = coll.StartRecvInt32(ctx, c, recv, partner); err == nil {
			hs, err = coll.StartSendInt32(ctx, c, send, partner)
		}
	} else if hs, err = coll.StartSendInt32(ctx, c, send, partner); err == nil {
		hr, err = coll.StartRecvInt32(ctx, c, recv, partner)
	}
	if err != nil {
		return err
	}
	if err := errors.Join(hr.Wait(ctx), hs.Wait(ctx)); err != nil {
		return fmt.Errorf("started recv and send: %w", err)
	}
	if err := checkMsg(recv, partner, 99); err != nil {
		return fmt.Errorf("started recv: %w", err)
	}
	// A bad argument fails at start, and the peer learns of it.
	if me%2 == 0 {
		_, err := c.Start(ctx, core.Request{Kind: core.KindSend, DType: coll.DTypeInt32, Count: 5000, Peer: partner, Send: core.Bytes(send)[1:]})
		if !errors.Is(err, core.ErrBufferLength) {
			return fmt.Errorf("a send with a short buffer started: %v", err)
		}
	} else {
		var mm *core.MismatchError
		if err := coll.RecvInt32(ctx, c, recv, partner); !errors.As(err, &mm) || mm.Field != "argument" || mm.Peer != partner {
			return fmt.Errorf("the recv matching a refused send: got %v, want an argument mismatch naming rank %d", err, partner)
		}
	}
	if err := c.Barrier(ctx); err != nil {
		return fmt.Errorf("after the refused send: %w", err)
	}
	return nil
}

// rendezvous checks when sends return (see TestRendezvous), at np 2.
func rendezvous(ctx context.Context, c *dispatch.Comm) error {
	me, peer := c.Rank(), 1-c.Rank()
	const late = 300 * time.Millisecond
	for _, bytes := range []int{core.EagerSize, 1 << 20} {
		buf := make([]int32, bytes/4)
		if me == 0 {
			for i := range buf {
				buf[i] = int32(i)
			}
			t0 := time.Now()
			if err := coll.SendInt32(ctx, c, buf, peer); err != nil {
				return err
			}
			d := time.Since(t0)
			if bytes <= core.EagerSize && d >= late*3/4 {
				return fmt.Errorf("an eager send of %d bytes took %v: it waited for the late recv", bytes, d)
			}
			if bytes > core.EagerSize && d < late*3/4 {
				return fmt.Errorf("a send of %d bytes returned after %v, before its recv began", bytes, d)
			}
		} else {
			time.Sleep(late)
			if err := coll.RecvInt32(ctx, c, buf, peer); err != nil {
				return err
			}
			for i, v := range buf {
				if v != int32(i) {
					return fmt.Errorf("element %d of %d bytes = %d", i, bytes, v)
				}
			}
		}
		if err := c.Barrier(ctx); err != nil {
			return err
		}
	}
	// Both send 1 MiB first: both wait for a recv that never begins.
	tctx, cancel := context.WithTimeout(ctx, 2*time.Second)
	defer cancel()
	err := coll.SendInt32(tctx, c, make([]int32, 1<<18), peer)
	var pe *core.PeerError
	if !errors.As(err, &pe) {
		return fmt.Errorf("two large sends first: got %v, want a *core.PeerError", err)
	}
	return nil
}
