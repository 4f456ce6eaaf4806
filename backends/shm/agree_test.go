package shm

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"strings"
	"testing"

	"github.com/gocoll/gocoll/core"
	"github.com/gocoll/gocoll/generated/coll"
	"github.com/gocoll/gocoll/internal/proctest"
)

// The agreement tests: every rank calls through a core.Guard, and one rank
// (the culprit, rank 1) passes something different or wrong. Every rank
// must fail at the same call, name the field and the culprit, and leave
// every output as it was; the next call must work.

const (
	culprit = 1
	poison  = 0xA5
)

// withBuffers gives req the buffers core.Check wants on rank of n ranks:
// send filled with rank+1 (int32-friendly small values), recv with poison.
func withBuffers(req *core.Request, rank, n int) *core.Request {
	sh := req.Kind.Shape()
	one := req.Count * req.DType.Size()
	ext := func(e core.Extent) int {
		if e == core.AllRanks {
			return one * n
		}
		return one
	}
	isRoot := rank == req.Root
	switch {
	case sh.SendIsRecv:
		req.Recv = bytes.Repeat([]byte{byte(rank + 1)}, one)
	default:
		if sh.Send != core.None && !(sh.SendRootOnly && !isRoot) {
			req.Send = bytes.Repeat([]byte{byte(rank + 1)}, ext(sh.Send))
		}
		if sh.Recv != core.None && !(sh.RecvRootOnly && !isRoot) {
			req.Recv = bytes.Repeat([]byte{poison}, ext(sh.Recv))
		}
	}
	return req
}

// wantMismatch checks that err is a *core.MismatchError about field on
// rank me that names the culprit (on the culprit: another rank), with the
// values each passed when mine and theirs are given.
func wantMismatch(err error, me int, field string, mine, theirs string) error {
	var mm *core.MismatchError
	if !errors.As(err, &mm) || mm.Field != field {
		return fmt.Errorf("want a *core.MismatchError about %s, got %v", field, err)
	}
	switch {
	case mm.Rank != me:
		return fmt.Errorf("the mismatch error calls this rank %d, it is %d: %v", mm.Rank, me, err)
	case me != culprit && mm.Peer != culprit:
		return fmt.Errorf("the mismatch error names rank %d, want %d: %v", mm.Peer, culprit, err)
	case me == culprit && mm.Peer == culprit:
		return fmt.Errorf("the culprit's mismatch error names itself as the peer: %v", err)
	}
	if field == "argument" {
		if want := fmt.Sprintf("rank %d passed an invalid argument", culprit); !strings.Contains(mm.Error(), want) {
			return fmt.Errorf("the error does not say %q: %v", want, err)
		}
		return nil
	}
	if me == culprit {
		mine, theirs = theirs, mine
	}
	if mine != "" && (mm.Mine != mine || mm.Theirs != theirs) {
		return fmt.Errorf("the mismatch error has mine %q, theirs %q; want %q, %q: %v", mm.Mine, mm.Theirs, mine, theirs, err)
	}
	return nil
}

// agreeCase is one disagreement: base is what every rank calls, culprit
// how rank 1 changes its call. field is what every rank must report; for
// "argument", the culprit's call fails core.Check with localErr.
type agreeCase struct {
	name         string
	field        string
	mine, theirs string // the values a rank that is not the culprit reports; "" to skip
	base         func(count int) *core.Request
	// culprit changes rank 1's call: before its buffers are made for a
	// valid call, after for an invalid one ("argument").
	culprit  func(req *core.Request, n int)
	localErr error
}

func allreduceReq(count int) *core.Request {
	return &core.Request{Kind: core.KindAllreduce, DType: coll.DTypeInt32, Op: coll.OpSum, Count: count}
}

var agreeCases = []agreeCase{
	{name: "count", field: "count", base: allreduceReq,
		culprit: func(r *core.Request, n int) { r.Count++ }},
	{name: "dtype", field: "dtype", mine: "int32", theirs: "uint32", base: allreduceReq,
		culprit: func(r *core.Request, n int) { r.DType = coll.DTypeUint32 }},
	{name: "op", field: "op", mine: "sum", theirs: "max",
		base: func(c int) *core.Request {
			return &core.Request{Kind: core.KindReduce, DType: coll.DTypeInt32, Op: coll.OpSum, Count: c}
		},
		culprit: func(r *core.Request, n int) { r.Op = coll.OpMax }},
	{name: "broadcast-root", field: "root", mine: "0", theirs: "1",
		base: func(c int) *core.Request {
			return &core.Request{Kind: core.KindBroadcast, DType: coll.DTypeInt32, Count: c}
		},
		culprit: func(r *core.Request, n int) { r.Root = 1 }},
	{name: "reduce-root", field: "root", mine: "0", theirs: "1",
		base: func(c int) *core.Request {
			return &core.Request{Kind: core.KindReduce, DType: coll.DTypeInt32, Op: coll.OpSum, Count: c}
		},
		culprit: func(r *core.Request, n int) { r.Root = 1 }},
	{name: "gather-root", field: "root", mine: "0", theirs: "1",
		base: func(c int) *core.Request {
			return &core.Request{Kind: core.KindGather, DType: coll.DTypeInt32, Count: c}
		},
		culprit: func(r *core.Request, n int) { r.Root = 1 }},
	{name: "kind", field: "kind", mine: "broadcast", theirs: "barrier",
		base: func(c int) *core.Request {
			return &core.Request{Kind: core.KindBroadcast, DType: coll.DTypeInt32, Count: c}
		},
		culprit: func(r *core.Request, n int) { *r = core.Request{Kind: core.KindBarrier} }},
	{name: "short-recv", field: "argument", localErr: core.ErrBufferLength, base: allreduceReq,
		culprit: func(r *core.Request, n int) { r.Recv = r.Recv[:len(r.Recv)-1] }},
	{name: "long-send", field: "argument", localErr: core.ErrBufferLength,
		base: func(c int) *core.Request {
			return &core.Request{Kind: core.KindAlltoall, DType: coll.DTypeInt32, Count: c}
		},
		culprit: func(r *core.Request, n int) { r.Send = append(r.Send, 0, 0, 0, 0) }},
	{name: "overlap", field: "argument", localErr: core.ErrInvalid, base: allreduceReq,
		culprit: func(r *core.Request, n int) {
			buf := bytes.Repeat([]byte{7}, len(r.Send)+4)
			r.Send, r.Recv = buf[:len(r.Send)], buf[4:]
		}},
	{name: "alltoall-overlap", field: "argument", localErr: core.ErrInvalid,
		base: func(c int) *core.Request {
			return &core.Request{Kind: core.KindAlltoall, DType: coll.DTypeInt32, Count: c}
		},
		culprit: func(r *core.Request, n int) {
			buf := bytes.Repeat([]byte{7}, 2*len(r.Send))
			r.Send, r.Recv = buf[:len(r.Send)], buf[len(r.Send)/2:][:len(r.Send)]
		}},
	{name: "root-out-of-range", field: "argument", localErr: core.ErrInvalid,
		base: func(c int) *core.Request {
			return &core.Request{Kind: core.KindBroadcast, DType: coll.DTypeInt32, Count: c}
		},
		culprit: func(r *core.Request, n int) { r.Root = n }},
	{name: "unknown-dtype", field: "argument", localErr: core.ErrUnsupported, base: allreduceReq,
		culprit: func(r *core.Request, n int) { r.DType = 250 }},
	{name: "unknown-kind", field: "argument", localErr: core.ErrUnsupported, base: allreduceReq,
		culprit: func(r *core.Request, n int) { r.Kind = 200 }},
	{name: "unsupported-op", field: "argument", localErr: core.ErrUnsupported,
		base: func(c int) *core.Request {
			return &core.Request{Kind: core.KindAllreduce, DType: coll.DTypeFloat32, Op: coll.OpSum, Count: c}
		},
		culprit: func(r *core.Request, n int) { r.Op = coll.OpBXor }},
	{name: "negative-count", field: "argument", localErr: core.ErrInvalid, base: allreduceReq,
		culprit: func(r *core.Request, n int) { r.Count = -3 }},
}

// checkAgreement runs every agreeCase at a small, a middle and a large
// count (one round; many chunks through both algorithms), then a plain
// allreduce.
func checkAgreement(ctx context.Context, g *core.Guard) error {
	me, n := g.Rank(), g.Size()
	for _, count := range []int{4, 1000, 300000} {
		for _, c := range agreeCases {
			// A culprit whose call is valid gets buffers for its own
			// call; one whose call is not spoils a valid one.
			req := c.base(count)
			if me == culprit && c.field != "argument" {
				c.culprit(req, n)
			}
			withBuffers(req, me, n)
			if me == culprit && c.field == "argument" {
				c.culprit(req, n)
			}
			sendBuf, recvBuf := req.Send, req.Recv
			send, recv := bytes.Clone(sendBuf), bytes.Clone(recvBuf)
			err := g.Do(ctx, req)
			where := fmt.Sprintf("%s, count %d", c.name, count)
			if c.field == "argument" && me == culprit {
				if !errors.Is(err, c.localErr) {
					return fmt.Errorf("%s: the culprit got %v, want an error wrapping %v", where, err, c.localErr)
				}
			} else if err := wantMismatch(err, me, c.field, c.mine, c.theirs); err != nil {
				return fmt.Errorf("%s: %w", where, err)
			}
			if !bytes.Equal(send, sendBuf) || !bytes.Equal(recv, recvBuf) {
				return fmt.Errorf("%s: a buffer changed although the call failed", where)
			}
			if err := g.Err(); err != nil {
				return fmt.Errorf("%s: the communicator failed: %w", where, err)
			}
		}
	}
	out := make([]byte, 4)
	if err := allreduceI32(ctx, g, i32s(int32(me)), out); err != nil {
		return fmt.Errorf("allreduce after the mismatches: %w", err)
	}
	if got, want := int32(out[0])|int32(out[1])<<8, int32(n*(n-1)/2); got != want {
		return fmt.Errorf("allreduce after the mismatches gave %d, want %d", got, want)
	}
	return nil
}

func TestAgreementGoroutines(t *testing.T) {
	for _, n := range []int{2, 3} {
		mustOK(t, goRanks(t, n, []Option{WithBufferSize(64 << 10)}, checkAgreement))
	}
}

func mismatchBody(ctx context.Context, r *proctest.Rank) error {
	g, err := newProcComm(ctx, r, "shm/", WithBufferSize(64<<10))
	if err != nil {
		return err
	}
	defer g.Close()
	if err := checkAgreement(ctx, g); err != nil {
		return err
	}
	return checkP2PAgreement(ctx, g)
}

func TestAgreementProcesses(t *testing.T) {
	procRanks(t, "mismatch", 4)
}

// checkP2PAgreement: a send and a recv that disagree fail on both sides
// (the receiver only, when the send was eager) naming the field before the receiver's buffer changes, and so does a
// pair whose one side fails its own check; the channel stays in step, so
// the next message pairs as it should. Ranks 0 and 1 are the pair; the
// others exchange alongside, unaffected.
func checkP2PAgreement(ctx context.Context, g *core.Guard) error {
	me := g.Rank()
	eager := min(2*g.Backend().(*Backend).lay.p2pSize, core.EagerSize) // sends up to this return before their recv looks
	type side struct {
		count int
		short bool // pass a buffer one byte short: fails core.Check
	}
	cases := []struct {
		name           string
		field          string
		sender, recver side
	}{
		{"count", "count", side{count: 100000}, side{count: 99999}},
		{"count-small", "count", side{count: 2}, side{count: 3}},
		{"sender-refused", "argument", side{count: 100000, short: true}, side{count: 100000}},
		{"receiver-refused", "argument", side{count: 100000}, side{count: 100000, short: true}},
		{"receiver-refused-small", "argument", side{count: 1}, side{count: 1, short: true}},
		{"both-refused", "", side{count: 5, short: true}, side{count: 5, short: true}},
	}
	for i, c := range cases {
		var req *core.Request
		var s side
		switch me {
		case 0:
			s = c.sender
			req = &core.Request{Kind: core.KindSend, DType: coll.DTypeInt32, Count: s.count, Peer: 1, Send: bytes.Repeat([]byte{3}, 4*s.count)}
		case 1:
			s = c.recver
			req = &core.Request{Kind: core.KindRecv, DType: coll.DTypeInt32, Count: s.count, Peer: 0, Recv: bytes.Repeat([]byte{poison}, 4*s.count)}
		}
		if req != nil {
			if s.short && req.Send != nil {
				req.Send = req.Send[:len(req.Send)-1]
			}
			if s.short && req.Recv != nil {
				req.Recv = req.Recv[:len(req.Recv)-1]
			}
			recv := bytes.Clone(req.Recv)
			err := g.Do(ctx, req)
			var mm *core.MismatchError
			switch {
			case s.short:
				if !errors.Is(err, core.ErrBufferLength) {
					return fmt.Errorf("%s: the refused side got %v, want core.ErrBufferLength", c.name, err)
				}
			case me == 0 && 4*s.count <= eager:
				// An eager send returned before its receiver looked.
				if err != nil {
					return fmt.Errorf("%s: the eager send returned %v, want nil", c.name, err)
				}
			case !errors.As(err, &mm) || mm.Field != c.field || mm.Peer != 1-me:
				return fmt.Errorf("%s: want a %s mismatch naming rank %d, got %v", c.name, c.field, 1-me, err)
			}
			if !bytes.Equal(recv, req.Recv) {
				return fmt.Errorf("%s: the receive buffer changed although the message was refused", c.name)
			}
		}
		// The channel is in step: a message in each direction pairs.
		if err := exchange(ctx, g, i); err != nil {
			return fmt.Errorf("%s: after the mismatch: %w", c.name, err)
		}
	}
	// A refusal right after a message that went through must not reach
	// the sender before its send of that message returned.
	for i := range 20 {
		count := 1 + i%2*9000
		switch me {
		case 0:
			req := &core.Request{Kind: core.KindSend, DType: coll.DTypeInt32, Count: count, Peer: 1, Send: make([]byte, 4*count)}
			if err := g.Do(ctx, req); err != nil {
				return fmt.Errorf("round %d: the message before the refused one: %w", i, err)
			}
			var mm *core.MismatchError
			err := g.Do(ctx, req)
			if 4*count <= eager {
				if err != nil {
					return fmt.Errorf("round %d: the eager send the receiver refused returned %v, want nil", i, err)
				}
			} else if !errors.As(err, &mm) || mm.Field != "argument" || mm.Peer != 1 {
				return fmt.Errorf("round %d: want an argument mismatch naming rank 1, got %v", i, err)
			}
		case 1:
			req := &core.Request{Kind: core.KindRecv, DType: coll.DTypeInt32, Count: count, Peer: 0, Recv: make([]byte, 4*count)}
			if err := g.Do(ctx, req); err != nil {
				return fmt.Errorf("round %d: the message before the refused one: %w", i, err)
			}
			req.Recv = req.Recv[1:]
			if err := g.Do(ctx, req); !errors.Is(err, core.ErrBufferLength) {
				return fmt.Errorf("round %d: the refused recv returned %v, want core.ErrBufferLength", i, err)
			}
		}
	}
	if err := exchange(ctx, g, 1); err != nil {
		return fmt.Errorf("after the refusals: %w", err)
	}
	if err := g.Err(); err != nil {
		return fmt.Errorf("the communicator failed: %w", err)
	}
	return nil
}

// exchange sends a message round the ring (even ranks send first) and
// checks what arrives; tag varies the contents.
func exchange(ctx context.Context, g *core.Guard, tag int) error {
	me, n := g.Rank(), g.Size()
	if n < 2 {
		return nil
	}
	next, prev := (me+1)%n, (me+n-1)%n
	count := 1 + tag*7000 // one chunk and many
	send := bytes.Repeat([]byte{byte(me + tag)}, 4*count)
	recv := make([]byte, 4*count)
	steps := []*core.Request{
		{Kind: core.KindSend, DType: coll.DTypeInt32, Count: count, Peer: next, Send: send},
		{Kind: core.KindRecv, DType: coll.DTypeInt32, Count: count, Peer: prev, Recv: recv},
	}
	if me%2 == 1 {
		steps[0], steps[1] = steps[1], steps[0]
	}
	for _, req := range steps {
		if err := g.Do(ctx, req); err != nil {
			return fmt.Errorf("%v with rank %d: %w", req.Kind, req.Peer, err)
		}
	}
	if want := bytes.Repeat([]byte{byte(prev + tag)}, 4*count); !bytes.Equal(recv, want) {
		return fmt.Errorf("received wrong data from rank %d", prev)
	}
	return nil
}

func TestP2PAgreementGoroutines(t *testing.T) {
	for _, n := range []int{2, 3} {
		mustOK(t, goRanks(t, n, []Option{WithP2PBufferSize(16 << 10)}, checkP2PAgreement))
	}
}
