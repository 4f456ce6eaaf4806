package core

import (
	"fmt"
	"math"
	"math/bits"
	"unsafe"
)

// Check is the one check of a Request: everything a rank can tell about
// its own call without its peers. The communicator boundary (Guard) runs
// it once per call, and backends trust what passes. It
//   - resolves DType and Op to req.Type and req.Kernel, refusing a kind,
//     dtype or op no registered spec provides (ErrUnsupported);
//   - refuses a Count below zero or one whose bytes overflow (ErrInvalid);
//   - requires every buffer this rank uses to hold exactly what the
//     Kind's Shape says (ErrBufferLength);
//   - requires Root and Peer to be ranks of the group, Peer another rank
//     than this one (ErrInvalid);
//   - allows Send and Recv to be the same slice only where the Shape
//     allows in-place use, and no other overlap (ErrInvalid), before any
//     byte moves;
//   - for the vector collectives, requires each counts vector the Shape
//     takes to hold one count per rank, none negative, each displacement
//     vector (if any) one per rank, none negative, the blocks it places
//     inside the buffer and apart from each other, and every buffer to
//     hold what the counts say (see checkVector); it sets Digest.
//
// It also zeroes what the kind does not use (Op, Root, Peer, a buffer
// this rank does not take part with), so that backends compare and move
// only what matters, and sets broadcast's Send to its Recv.
func Check(req *Request, rank, size int) error {
	if req == nil {
		return fmt.Errorf("gocoll: nil request: %w", ErrInvalid)
	}
	req.Type, req.Kernel = nil, nil
	sh := req.Kind.Shape()
	if sh == nil {
		return fmt.Errorf("gocoll: collective id %d: %w: the runtime runs ids 1-%d", uint8(req.Kind), ErrUnsupported, len(shapes)-1)
	}
	if !sh.Op {
		req.Op = 0
	}
	if !sh.Root {
		req.Root = 0
	}
	if !sh.Peer {
		req.Peer = 0
	}
	if req.Kind == KindBarrier {
		req.DType, req.Count, req.Send, req.Recv = 0, 0, nil, nil
		req.SendCounts, req.SendDispls, req.RecvCounts, req.RecvDispls, req.Digest = nil, nil, nil, nil, 0
		return nil
	}
	t := LookupType(req.DType)
	if t == nil {
		return fmt.Errorf("gocoll: %v: dtype id %d: %w: no imported spec registers it (import its generated package)", req.Kind, uint8(req.DType), ErrUnsupported)
	}
	if sh.Op {
		k := t.Kernel(req.Op)
		if k == nil {
			return fmt.Errorf("gocoll: %v: %w: %v cannot be reduced with %v; use one of %s", req.Kind, ErrUnsupported, t.Name, req.Op, opNames(t))
		}
		req.Kernel = k
	}
	if sh.Root && (req.Root < 0 || req.Root >= size) {
		return fmt.Errorf("gocoll: %v: %w: root %d is not a rank of this %d-rank communicator; pass a root in [0, %d)", req.Kind, ErrInvalid, req.Root, size, size)
	}
	if sh.Peer {
		if req.Peer < 0 || req.Peer >= size {
			return fmt.Errorf("gocoll: %v: %w: peer %d is not a rank of this %d-rank communicator; pass a peer in [0, %d)", req.Kind, ErrInvalid, req.Peer, size, size)
		}
		if req.Peer == rank {
			return fmt.Errorf("gocoll: %v: %w: peer %d is this rank; a blocking %v to itself would never complete", req.Kind, ErrInvalid, req.Peer, req.Kind)
		}
	}
	if sh.Vector() {
		if err := checkVector(req, sh, t, rank, size); err != nil {
			return err
		}
		req.Type = t
		return nil
	}
	req.SendCounts, req.SendDispls, req.RecvCounts, req.RecvDispls, req.Digest = nil, nil, nil, nil, 0
	// Count x Size x ranks must not pass MaxInt: a multiplication, not the
	// two divisions the bound reads as (64-bit divisions take tens of
	// cycles, a measurable part of an 8-byte call).
	if hi, lo := bits.Mul64(uint64(req.Count), uint64(t.Size)*uint64(size)); req.Count < 0 || hi != 0 || lo > math.MaxInt {
		return fmt.Errorf("gocoll: %v: %w: count %d of %d-byte %v at %d ranks is out of range", req.Kind, ErrInvalid, req.Count, t.Size, t.Name, size)
	}
	isRoot := rank == req.Root
	if sh.SendIsRecv {
		if len(req.Send) != 0 && !same(req.Send, req.Recv) {
			return fmt.Errorf("gocoll: %v: %w: pass the one buffer as Recv, and Send as nil or the same slice", req.Kind, ErrInvalid)
		}
		req.Send = req.Recv
	} else {
		if sh.Send == None || (sh.SendRootOnly && !isRoot) {
			req.Send = nil
		}
		if sh.Recv == None || (sh.RecvRootOnly && !isRoot) {
			req.Recv = nil
		}
	}
	one := req.Count * t.Size
	want := func(e Extent) int {
		if e == AllRanks {
			return one * size
		}
		return one
	}
	if sh.Send != None && !(sh.SendRootOnly && !isRoot) {
		if n := want(sh.Send); len(req.Send) != n {
			return lengthError(req, "send", len(req.Send), n, sh.Send, size)
		}
	}
	if sh.Recv != None && !(sh.RecvRootOnly && !isRoot) {
		if n := want(sh.Recv); len(req.Recv) != n {
			return lengthError(req, "recv", len(req.Recv), n, sh.Recv, size)
		}
	}
	if !sh.SendIsRecv && len(req.Send) > 0 && len(req.Recv) > 0 {
		if same(req.Send, req.Recv) {
			if !sh.InPlace {
				return fmt.Errorf("gocoll: %v: %w: send and recv are the same buffer, and %v does not run in place; pass separate buffers", req.Kind, ErrInvalid, req.Kind)
			}
		} else if overlap(req.Send, req.Recv) {
			return fmt.Errorf("gocoll: %v: %w: send and recv partly overlap; pass the same slice (in place, where allowed) or disjoint ones", req.Kind, ErrInvalid)
		}
	}
	req.Type = t
	return nil
}

func lengthError(req *Request, name string, got, want int, e Extent, size int) error {
	per := ""
	if e == AllRanks {
		per = fmt.Sprintf(" x %d ranks", size)
	}
	return fmt.Errorf("gocoll: %v: %w: %s holds %d bytes; count %d of %v%s needs %d", req.Kind, ErrBufferLength, name, got, req.Count, req.DType, per, want)
}

// same reports whether a and b are the same slice: same start, same length.
func same(a, b []byte) bool {
	return len(a) == len(b) && unsafe.SliceData(a) == unsafe.SliceData(b)
}

// overlap reports whether a and b share any byte.
func overlap(a, b []byte) bool {
	if len(a) == 0 || len(b) == 0 {
		return false
	}
	pa, pb := uintptr(unsafe.Pointer(unsafe.SliceData(a))), uintptr(unsafe.Pointer(unsafe.SliceData(b)))
	return pa < pb+uintptr(len(b)) && pb < pa+uintptr(len(a))
}
