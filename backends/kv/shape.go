package kv

import (
	"strconv"

	"github.com/gocoll/gocoll/core"
)

// shape is how one collective moves data through the store.
type shape struct {
	kind core.Kind
	blk  int // bytes of one per-rank block: count * element size
}

// shapeOf describes req, which passed core.Check.
func shapeOf(req *core.Request) *shape {
	sh := &shape{kind: req.Kind}
	if req.Type != nil {
		sh.blk = req.Count * req.Type.Size
	}
	return sh
}

func name(r int) string     { return strconv.Itoa(r) }
func block(r, j int) string { return strconv.Itoa(r) + "/" + strconv.Itoa(j) }

// publish returns what rank me writes: only what some other rank reads.
func (sh *shape) publish(req *core.Request, me, n int) (names []string, vals [][]byte) {
	if s := sh.kind.Shape(); s != nil && s.Vector() {
		return vpublish(req, me, n)
	}
	isRoot := me == req.Root
	switch sh.kind {
	case core.KindAllreduce, core.KindAllgather:
		if n > 1 {
			names, vals = []string{name(me)}, [][]byte{req.Send}
		}
	case core.KindReduce, core.KindGather:
		if !isRoot {
			names, vals = []string{name(me)}, [][]byte{req.Send}
		}
	case core.KindBroadcast:
		if isRoot && n > 1 {
			names, vals = []string{name(me)}, [][]byte{req.Recv}
		}
	case core.KindReduceScatter, core.KindAlltoall:
		for j := 0; j < n; j++ {
			if j != me {
				names = append(names, block(me, j))
				vals = append(vals, req.Send[j*sh.blk:(j+1)*sh.blk])
			}
		}
	case core.KindScatter:
		if isRoot {
			for j := 0; j < n; j++ {
				if j != me {
					names = append(names, block(me, j))
					vals = append(vals, req.Send[j*sh.blk:(j+1)*sh.blk])
				}
			}
		}
	}
	return names, vals
}

// complete reads what rank me needs and computes its result. Reductions
// fold the ranks' inputs left to right in rank order, so every rank (and
// every backend using the same kernels) computes the same bits.
func (sh *shape) complete(req *core.Request, me, n int, get func(names []string, size int) ([][]byte, error)) error {
	if s := sh.kind.Shape(); s != nil && s.Vector() {
		return vcomplete(req, me, n, get)
	}
	isRoot := me == req.Root
	blk := sh.blk
	// gatherAll returns every rank's value, with mine (local) in place.
	gatherAll := func(mine []byte, nameOf func(r int) string) ([][]byte, error) {
		var names []string
		for r := 0; r < n; r++ {
			if r != me {
				names = append(names, nameOf(r))
			}
		}
		vs, err := get(names, blk)
		if err != nil {
			return nil, err
		}
		all := make([][]byte, 0, n)
		all = append(all, vs[:me]...)
		all = append(all, mine)
		return append(all, vs[me:]...), nil
	}
	// The inputs are fetched before dst is written, so dst may be this
	// rank's send buffer (in place).
	reduce := func(dst []byte, srcs [][]byte) {
		req.Kernel.Reduce(nil, dst, srcs)
		req.Kernel.Finish(dst, n)
	}
	switch sh.kind {
	case core.KindAllreduce:
		srcs, err := gatherAll(req.Send, name)
		if err != nil {
			return err
		}
		reduce(req.Recv, srcs)
	case core.KindReduce:
		if !isRoot {
			return nil
		}
		srcs, err := gatherAll(req.Send, name)
		if err != nil {
			return err
		}
		reduce(req.Recv, srcs)
	case core.KindBroadcast:
		if isRoot {
			return nil
		}
		vs, err := get([]string{name(req.Root)}, blk)
		if err != nil {
			return err
		}
		copy(req.Recv, vs[0])
	case core.KindAllgather, core.KindGather:
		if sh.kind == core.KindGather && !isRoot {
			return nil
		}
		all, err := gatherAll(req.Send, name)
		if err != nil {
			return err
		}
		for r, v := range all {
			copy(req.Recv[r*blk:(r+1)*blk], v)
		}
	case core.KindReduceScatter:
		srcs, err := gatherAll(req.Send[me*blk:(me+1)*blk], func(r int) string { return block(r, me) })
		if err != nil {
			return err
		}
		reduce(req.Recv, srcs)
	case core.KindScatter:
		if isRoot {
			copy(req.Recv, req.Send[me*blk:(me+1)*blk])
			return nil
		}
		vs, err := get([]string{block(req.Root, me)}, blk)
		if err != nil {
			return err
		}
		copy(req.Recv, vs[0])
	case core.KindAlltoall:
		all, err := gatherAll(req.Send[me*blk:(me+1)*blk], func(r int) string { return block(r, me) })
		if err != nil {
			return err
		}
		for r, v := range all {
			copy(req.Recv[r*blk:(r+1)*blk], v)
		}
	}
	return nil
}
