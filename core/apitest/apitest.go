// Package apitest tests a generated typed API against the runtime's
// collectives. A generated package's test lists its typed functions, each
// bound to byte buffers by a small adapter, and its spec's shapes; Run and
// CheckShapes check that every function hands the communicator exactly the
// core.Request its collective's core.Shape asks for (kind, dtype, op,
// count derived from the buffers, root, peer, which buffer goes where),
// that the request passes core.Check, that errors come from the
// communicator alone, and that a call allocates nothing.
//
// None of it depends on a spec: everything follows from core.Kind.Shape.
package apitest

import (
	"context"
	"errors"
	"fmt"
	"testing"
	"unsafe"

	"github.com/gocoll/gocoll/core"
)

// Args are one call's arguments in a typed function's terms. The test
// sets the element counts, op, root and peer; Bind sets the byte views.
type Args struct {
	// Send and Recv are the element counts of the buffers the adapter
	// makes: the send buffer and the recv buffer (an inout buffer is the
	// recv buffer).
	Send, Recv int
	Op         core.Op
	Root, Peer int
	// The vector collectives' per-rank counts and displacements, as
	// core.Request holds them; the test sets them.
	SendCounts, SendDispls, RecvCounts, RecvDispls []int
	// SendBytes and RecvBytes are set by Bind: the buffers it made, as
	// bytes (nil where the function has no such buffer).
	SendBytes, RecvBytes []byte
}

// Bind makes a's buffers and returns the typed function's call on them,
// which must allocate nothing of its own.
type Bind func(a *Args) func(ctx context.Context, c core.Comm) error

// Func is one function of a typed API.
type Func struct {
	Name  string // e.g. "AllreduceFloat32"
	Kind  core.Kind
	DType core.DType // 0 for collectives that move no data
	Bind  Bind
}

// Bytes views s as bytes without copying; nil stays nil (core.Bytes).
func Bytes[T any](s []T) []byte { return core.Bytes(s) }

// comm is a core.Comm that checks each request as a communicator would,
// records the last one and returns what Check said, or fail.
type comm struct {
	rank, size int
	calls      int
	last       core.Request
	fail       error
}

func (c *comm) Rank() int { return c.rank }
func (c *comm) Size() int { return c.size }
func (c *comm) Do(_ context.Context, req *core.Request) error {
	c.calls++
	c.last = *req
	if c.fail != nil {
		return c.fail
	}
	checked := *req
	return core.Check(&checked, c.rank, c.size)
}

// extent is e elements of count at size ranks; a vector collective's
// blocks are packed, with counts (the side's) and shared (the one vector
// the shape's Mine and Sum refer to).
func extent(e core.Extent, count, size, rank int, counts, shared []int) int {
	switch e {
	case core.PerRank:
		return count
	case core.AllRanks:
		return count * size
	case core.Blocks:
		return total(counts)
	case core.Mine:
		return shared[rank]
	case core.Sum:
		return total(shared)
	}
	return 0
}

func total(v []int) int {
	s := 0
	for _, c := range v {
		s += c
	}
	return s
}

// vcounts are the counts of a vector collective's tests: ragged, one of
// them zero.
func vcounts(count, size int) []int {
	v := make([]int, size)
	for j := range v {
		v[j] = count + j
	}
	v[size-1] = 0
	return v
}

// sameBytes reports whether got is exactly want's memory (or both nil).
func sameBytes(got, want []byte) bool {
	return (got == nil) == (want == nil) && len(got) == len(want) && unsafe.SliceData(got) == unsafe.SliceData(want)
}

// Run checks every function. At 1 and 3 ranks (2 and 3 point to point),
// on every rank, it must hand the communicator one request that matches
// the shape and passes core.Check; a buffer one element too long must come
// back as core.ErrBufferLength from the check, not be caught before it;
// the communicator's error must come back as it is; and a call must
// allocate nothing.
func Run(t *testing.T, funcs []Func) {
	ctx := context.Background()
	for _, f := range funcs {
		t.Run(f.Name, func(t *testing.T) {
			sh := f.Kind.Shape()
			if sh == nil {
				t.Fatalf("%s: the runtime runs no collective %d", f.Name, f.Kind)
			}
			var op core.Op
			if sh.Op {
				ty := core.LookupType(f.DType)
				if ty == nil || len(ty.Ops()) == 0 {
					t.Fatalf("%s: dtype %v has no registered op", f.Name, f.DType)
				}
				op = ty.Ops()[0].ID
			}
			sizes := []int{1, 3}
			if sh.Peer {
				sizes = []int{2, 3} // a peer is another rank
			}
			for _, size := range sizes {
				for rank := range size {
					const count = 5
					a := args(sh, count, size, rank, op)
					c := &comm{rank: rank, size: size}
					if err := f.Bind(&a)(ctx, c); err != nil {
						t.Fatalf("rank %d of %d: %v", rank, size, err)
					}
					if c.calls != 1 {
						t.Fatalf("rank %d of %d: %d requests reached the communicator, want 1", rank, size, c.calls)
					}
					if err := match(c.last, f, sh, &a, count); err != nil {
						t.Fatalf("rank %d of %d: %v", rank, size, err)
					}
					tooLong(ctx, t, f, sh, count, size, rank, op)
				}
			}
			// The communicator's error comes back unchanged.
			a := args(sh, 2, 2, 0, op)
			sentinel := errors.New("the communicator refused")
			c := &comm{size: 2, fail: sentinel}
			if err := f.Bind(&a)(ctx, c); !errors.Is(err, sentinel) || c.calls != 1 {
				t.Fatalf("with a failing communicator: %v after %d calls, want its error after 1", err, c.calls)
			}
			// No allocations per call.
			a = args(sh, 64, 2, 0, op)
			call, c := f.Bind(&a), &comm{size: 2}
			if n := testing.AllocsPerRun(50, func() {
				if err := call(ctx, c); err != nil {
					t.Fatal(err)
				}
			}); n != 0 {
				t.Errorf("a call allocates %v times", n)
			}
		})
	}
}

// args are the arguments of a valid call at rank of size: buffers the
// shape's lengths (none off the root for root-only buffers), root 1 (0 at
// one rank), the next rank as peer.
func args(sh *core.Shape, count, size, rank int, op core.Op) Args {
	a := Args{Op: op}
	if sh.Root {
		a.Root = 1 % size
	}
	if sh.Peer {
		a.Peer = (rank + 1) % size
	}
	isRoot := rank == a.Root
	if sh.SendCounts {
		a.SendCounts = vcounts(count, size)
	}
	if sh.RecvCounts {
		a.RecvCounts = vcounts(count, size)
	}
	shared := a.RecvCounts
	if shared == nil {
		shared = a.SendCounts
	}
	if !(sh.SendRootOnly && !isRoot) {
		a.Send = extent(sh.Send, count, size, rank, a.SendCounts, shared)
	}
	if !(sh.RecvRootOnly && !isRoot) {
		a.Recv = extent(sh.Recv, count, size, rank, a.RecvCounts, shared)
	}
	return a
}

// sameInts reports whether got is exactly want's memory (or both nil).
func sameInts(got, want []int) bool {
	return (got == nil) == (want == nil) && len(got) == len(want) && unsafe.SliceData(got) == unsafe.SliceData(want)
}

// match compares the request a function handed over with what its shape
// says it must be.
func match(req core.Request, f Func, sh *core.Shape, a *Args, count int) error {
	want := core.Request{Kind: f.Kind, DType: f.DType, Count: count}
	if f.Kind == core.KindBarrier || sh.Vector() {
		want.Count = 0
	}
	if sh.Op {
		want.Op = a.Op
	}
	if sh.Root {
		want.Root = a.Root
	}
	if sh.Peer {
		want.Peer = a.Peer
	}
	if req.Kind != want.Kind || req.DType != want.DType || req.Count != want.Count || req.Op != want.Op || req.Root != want.Root || req.Peer != want.Peer {
		return fmt.Errorf("request {Kind %v DType %v Count %d Op %v Root %d Peer %d}, want {Kind %v DType %v Count %d Op %v Root %d Peer %d}",
			req.Kind, req.DType, req.Count, req.Op, req.Root, req.Peer, want.Kind, want.DType, want.Count, want.Op, want.Root, want.Peer)
	}
	if !sameBytes(req.Send, a.SendBytes) || !sameBytes(req.Recv, a.RecvBytes) {
		return fmt.Errorf("request's Send, Recv are %d, %d bytes at %p, %p; the call passed %d, %d bytes at %p, %p",
			len(req.Send), len(req.Recv), unsafe.SliceData(req.Send), unsafe.SliceData(req.Recv),
			len(a.SendBytes), len(a.RecvBytes), unsafe.SliceData(a.SendBytes), unsafe.SliceData(a.RecvBytes))
	}
	if !sameInts(req.SendCounts, a.SendCounts) || !sameInts(req.SendDispls, a.SendDispls) ||
		!sameInts(req.RecvCounts, a.RecvCounts) || !sameInts(req.RecvDispls, a.RecvDispls) {
		return fmt.Errorf("request's counts and displacements %v %v %v %v are not the call's %v %v %v %v",
			req.SendCounts, req.SendDispls, req.RecvCounts, req.RecvDispls, a.SendCounts, a.SendDispls, a.RecvCounts, a.RecvDispls)
	}
	if req.Type != nil || req.Kernel != nil || req.Digest != 0 {
		return fmt.Errorf("request's Type, Kernel or Digest is set: they are the check's to fill")
	}
	return nil
}

// tooLong calls f with each buffer this rank passes one element too long:
// the check must refuse it with core.ErrBufferLength, unless the buffer is
// the one the count is derived from and no other buffer of this rank
// disagrees with it.
func tooLong(ctx context.Context, t *testing.T, f Func, sh *core.Shape, count, size, rank int, op core.Op) {
	t.Helper()
	for _, which := range []string{"send", "recv"} {
		a := args(sh, count, size, rank, op)
		n := &a.Send
		if which == "recv" {
			n = &a.Recv
		}
		if *n == 0 {
			continue // this rank passes no such buffer
		}
		*n++
		c := &comm{rank: rank, size: size}
		err := f.Bind(&a)(ctx, c)
		if c.calls != 1 {
			t.Fatalf("rank %d of %d, %s one element too long: %d requests reached the communicator, want 1 (the check is the communicator's)", rank, size, which, c.calls)
		}
		other, e := a.Recv, sh.Send
		if which == "recv" {
			other, e = a.Send, sh.Recv
		}
		// A buffer this rank passes alone defines the count: one element
		// more is a larger count, which is valid where one element is a
		// whole block (a count of elements, or one rank's count*size).
		if !sh.Vector() && other == 0 && extent(e, 1, size, 0, nil, nil) == 1 {
			if err != nil {
				t.Fatalf("rank %d of %d, %s one element longer and alone: %v", rank, size, which, err)
			}
			continue
		}
		if !errors.Is(err, core.ErrBufferLength) {
			t.Fatalf("rank %d of %d, %s one element too long: %v, want core.ErrBufferLength from the check", rank, size, which, err)
		}
	}
}

// Shape is one collective of a spec, as the spec describes it.
type Shape struct {
	Kind  core.Kind
	Shape core.Shape // InPlace is not the spec's to say, and not compared
}

// CheckShapes checks that every collective of a spec is the runtime's:
// the same name at the same id, and the same shape.
func CheckShapes(t *testing.T, shapes []Shape) {
	for _, s := range shapes {
		got := s.Kind.Shape()
		if got == nil {
			t.Errorf("the spec's %s has id %d, which the runtime does not run", s.Shape.Name, s.Kind)
			continue
		}
		want := s.Shape
		want.InPlace = got.InPlace
		if *got != want {
			t.Errorf("the spec's %s (id %d) is %+v, the runtime's is %+v", s.Shape.Name, s.Kind, want, *got)
		}
	}
}
