package apitest

import (
	"context"
	"errors"
	"fmt"
	"testing"

	"github.com/gocoll/gocoll/core"
)

// Same checks that two functions of one collective and dtype (a typed
// function and the generic function at that dtype's Go type) are the same
// call: on every rank of 1 and 3 ranks (2 and 3 point to point), with
// valid arguments, each buffer one element too long or too short, an op
// the dtype lacks and a root or peer out of range, both must hand the
// communicator the same request (compared field by field, buffers by
// length) and get the same error back.
func Same(t *testing.T, a, b Func) {
	t.Helper()
	if a.Kind != b.Kind || a.DType != b.DType {
		t.Fatalf("%s and %s: kind %v, %v and dtype %v, %v: not one collective and dtype", a.Name, b.Name, a.Kind, b.Kind, a.DType, b.DType)
	}
	sh := a.Kind.Shape()
	if sh == nil {
		t.Fatalf("%s: the runtime runs no collective %d", a.Name, a.Kind)
	}
	var op, badOp core.Op
	if sh.Op {
		ty := core.LookupType(a.DType)
		if ty == nil || len(ty.Ops()) == 0 {
			t.Fatalf("%s: dtype %v has no registered op", a.Name, a.DType)
		}
		op = ty.Ops()[0].ID
		badOp = lackedOp(ty)
	}
	sizes := []int{1, 3}
	if sh.Peer {
		sizes = []int{2, 3}
	}
	for _, size := range sizes {
		for rank := range size {
			const count = 5
			base := args(sh, count, size, rank, op)
			variants := map[string]Args{"valid": base}
			if base.Send > 0 {
				v := base
				v.Send++
				variants["send one too long"] = v
				v.Send -= 2
				variants["send one too short"] = v
			}
			if base.Recv > 0 {
				v := base
				v.Recv++
				variants["recv one too long"] = v
				v.Recv -= 2
				variants["recv one too short"] = v
			}
			if sh.Op {
				v := base
				v.Op = badOp
				variants[fmt.Sprintf("op %d, which the dtype lacks", badOp)] = v
			}
			if sh.Root {
				v := base
				v.Root = size
				variants["root out of range"] = v
			}
			if sh.Peer {
				v := base
				v.Peer = size
				variants["peer out of range"] = v
			}
			for name, v := range variants {
				if err := same(a, b, v, rank, size); err != nil {
					t.Errorf("%s and %s, rank %d of %d, %s: %v", a.Name, b.Name, rank, size, name, err)
				}
			}
		}
	}
}

// lackedOp is an op id ty has no kernel for.
func lackedOp(ty *core.Type) core.Op {
	for id := core.Op(1); id < 255; id++ {
		if ty.Kernel(id) == nil {
			return id
		}
	}
	return 255
}

// same calls a and b with the same arguments and compares what reached
// the communicator and what came back.
func same(a, b Func, v Args, rank, size int) error {
	ctx := context.Background()
	va, vb := v, v
	ca, cb := &comm{rank: rank, size: size}, &comm{rank: rank, size: size}
	ea := a.Bind(&va)(ctx, ca)
	eb := b.Bind(&vb)(ctx, cb)
	if ca.calls != cb.calls {
		return fmt.Errorf("%d and %d requests reached the communicator", ca.calls, cb.calls)
	}
	ra, rb := ca.last, cb.last
	if ra.Kind != rb.Kind || ra.DType != rb.DType || ra.Count != rb.Count || ra.Op != rb.Op || ra.Root != rb.Root || ra.Peer != rb.Peer ||
		len(ra.Send) != len(rb.Send) || len(ra.Recv) != len(rb.Recv) || (ra.Send == nil) != (rb.Send == nil) || (ra.Recv == nil) != (rb.Recv == nil) {
		return fmt.Errorf("requests differ: %s and %s", describe(ra), describe(rb))
	}
	if !sameInts(ra.SendCounts, rb.SendCounts) || !sameInts(ra.SendDispls, rb.SendDispls) ||
		!sameInts(ra.RecvCounts, rb.RecvCounts) || !sameInts(ra.RecvDispls, rb.RecvDispls) {
		return fmt.Errorf("requests' counts and displacements differ: %v %v %v %v and %v %v %v %v",
			ra.SendCounts, ra.SendDispls, ra.RecvCounts, ra.RecvDispls, rb.SendCounts, rb.SendDispls, rb.RecvCounts, rb.RecvDispls)
	}
	if (ea == nil) != (eb == nil) || (ea != nil && ea.Error() != eb.Error()) {
		return fmt.Errorf("errors differ: %v and %v", ea, eb)
	}
	for _, sentinel := range []error{core.ErrBufferLength, core.ErrUnsupported, core.ErrInvalid} {
		if errors.Is(ea, sentinel) != errors.Is(eb, sentinel) {
			return fmt.Errorf("errors %v and %v differ in wrapping %v", ea, eb, sentinel)
		}
	}
	return nil
}

func describe(r core.Request) string {
	return fmt.Sprintf("{Kind %v DType %v Count %d Op %v Root %d Peer %d Send %d bytes (nil %t) Recv %d bytes (nil %t)}",
		r.Kind, r.DType, r.Count, r.Op, r.Root, r.Peer, len(r.Send), r.Send == nil, len(r.Recv), r.Recv == nil)
}
