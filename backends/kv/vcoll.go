package kv

import "github.com/gocoll/gocoll/core"

// The vector collectives: every block a peer reads is a value of its own,
// and the header carries the counts' digest where the count goes and the
// counts vectors after it, so that a disagreement gives the exact values.

// vectorHeader adds a vector collective's counts to h.
func vectorHeader(h *header, req *core.Request) {
	sh := req.Kind.Shape()
	if sh == nil || !sh.Vector() {
		return
	}
	h.count = int64(req.Digest)
	switch {
	case !sh.SharedCounts():
		h.vectors = [][]int{req.SendCounts, req.RecvCounts}
	case sh.SendCounts:
		h.vectors = [][]int{req.SendCounts}
	default:
		h.vectors = [][]int{req.RecvCounts}
	}
}

// vectorMismatch is the error of a vector collective whose ranks' counts
// (in their headers hs, which agree on everything else) disagree, or nil.
func vectorMismatch(seq uint64, me int, hs []*header) *core.MismatchError {
	sh := hs[me].kind.Shape()
	if sh == nil || !sh.Vector() {
		return nil
	}
	var shared, send, recv [][]int
	for _, h := range hs {
		switch {
		case len(h.vectors) == 2 && !sh.SharedCounts():
			send, recv = append(send, h.vectors[0]), append(recv, h.vectors[1])
		case len(h.vectors) == 1 && sh.SharedCounts():
			shared = append(shared, h.vectors[0])
		default:
			return nil
		}
	}
	if sh.SharedCounts() {
		return core.SharedCountsMismatch(seq, me, shared)
	}
	return core.PairCountsMismatch(seq, me, send, recv)
}

// vpublish returns what rank me writes for a vector collective: only what
// some other rank reads.
func vpublish(req *core.Request, me, n int) (names []string, vals [][]byte) {
	es := req.Type.Size
	blocks := func(counts, off []int) {
		for j := 0; j < n; j++ {
			if j != me {
				names = append(names, block(me, j))
				vals = append(vals, req.Send[off[j]*es:(off[j]+counts[j])*es])
			}
		}
	}
	switch req.Kind {
	case core.KindAllgatherv:
		if n > 1 {
			names, vals = []string{name(me)}, [][]byte{req.Send}
		}
	case core.KindGatherv:
		if me != req.Root {
			names, vals = []string{name(me)}, [][]byte{req.Send}
		}
	case core.KindScatterv:
		if me == req.Root {
			blocks(req.SendCounts, core.Offsets(req.SendCounts, req.SendDispls, nil))
		}
	case core.KindAlltoallv:
		blocks(req.SendCounts, core.Offsets(req.SendCounts, req.SendDispls, nil))
	case core.KindReduceScatterV:
		blocks(req.RecvCounts, core.Offsets(req.RecvCounts, nil, nil))
	}
	return names, vals
}

// vcomplete reads what rank me needs of a vector collective and computes
// its result; a reduction folds the ranks' blocks in rank order.
func vcomplete(req *core.Request, me, n int, get func(names []string, size int) ([][]byte, error)) error {
	es := req.Type.Size
	one := func(nm string, size int) ([]byte, error) {
		vs, err := get([]string{nm}, size)
		if err != nil {
			return nil, err
		}
		return vs[0], nil
	}
	switch req.Kind {
	case core.KindAllgatherv, core.KindGatherv:
		if req.Kind == core.KindGatherv && me != req.Root {
			return nil
		}
		counts := req.RecvCounts
		off := core.Offsets(counts, req.RecvDispls, nil)
		for r := 0; r < n; r++ {
			dst := req.Recv[off[r]*es : (off[r]+counts[r])*es]
			if r == me {
				copy(dst, req.Send)
				continue
			}
			v, err := one(name(r), len(dst))
			if err != nil {
				return err
			}
			copy(dst, v)
		}
	case core.KindScatterv:
		if me == req.Root {
			off := core.Offsets(req.SendCounts, req.SendDispls, nil)
			copy(req.Recv, req.Send[off[me]*es:])
			return nil
		}
		v, err := one(block(req.Root, me), len(req.Recv))
		if err != nil {
			return err
		}
		copy(req.Recv, v)
	case core.KindAlltoallv:
		counts := req.RecvCounts
		off := core.Offsets(counts, req.RecvDispls, nil)
		for r := 0; r < n; r++ {
			dst := req.Recv[off[r]*es : (off[r]+counts[r])*es]
			if r == me {
				so := core.Offsets(req.SendCounts, req.SendDispls, nil)
				copy(dst, req.Send[so[me]*es:])
				continue
			}
			v, err := one(block(r, me), len(dst))
			if err != nil {
				return err
			}
			copy(dst, v)
		}
	case core.KindReduceScatterV:
		off := core.Offsets(req.RecvCounts, nil, nil)
		srcs := make([][]byte, n)
		for r := 0; r < n; r++ {
			if r == me {
				srcs[r] = req.Send[off[me]*es : off[me]*es+len(req.Recv)]
				continue
			}
			v, err := one(block(r, me), len(req.Recv))
			if err != nil {
				return err
			}
			srcs[r] = v
		}
		req.Kernel.Reduce(nil, req.Recv, srcs)
		req.Kernel.Finish(req.Recv, n)
	}
	return nil
}
