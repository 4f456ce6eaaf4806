package kv

import (
	"fmt"
	"strconv"

	"github.com/gocoll/gocoll/core"
	"github.com/gocoll/gocoll/generated/coll"
)

const (
	kindSend = coll.KindSend
	kindRecv = coll.KindRecv
)

// shape is how one kind of collective moves data through the store.
type shape struct {
	op     bool // takes a reduce op
	rooted bool // takes a root
	kind   core.Kind
	dt     core.DType
	es     int // element size
	blk    int // bytes of one per-rank block: count * es
}

// shapeOf describes req for a group of n ranks, or says why it cannot run.
func shapeOf(req *core.Request, n int) (*shape, error) {
	sh := &shape{kind: req.Kind, dt: req.DType}
	switch req.Kind {
	case coll.KindAllreduce, coll.KindReduceScatter:
		sh.op = true
	case coll.KindReduce:
		sh.op, sh.rooted = true, true
	case coll.KindBroadcast, coll.KindGather, coll.KindScatter:
		sh.rooted = true
	case coll.KindAllgather, coll.KindAlltoall, coll.KindBarrier:
	default:
		return nil, fmt.Errorf("kv: %w: collective %v", core.ErrUnsupported, req.Kind)
	}
	if req.Kind == coll.KindBarrier {
		return sh, nil
	}
	sh.es = req.DType.Size()
	if sh.es == 0 {
		return nil, fmt.Errorf("kv: %w: dtype %v is not registered (import generated/coll)", core.ErrUnsupported, req.DType)
	}
	if t := core.LookupType(req.DType); sh.op && (t == nil || t.Kernel(req.Op) == nil) {
		return nil, fmt.Errorf("kv: %w: %v does not support op %v", core.ErrUnsupported, req.DType, req.Op)
	}
	if req.Count < 0 {
		return nil, fmt.Errorf("count %d is negative", req.Count)
	}
	if sh.rooted && (req.Root < 0 || req.Root >= n) {
		return nil, fmt.Errorf("root %d is not a rank of 0..%d", req.Root, n-1)
	}
	sh.blk = req.Count * sh.es
	return sh, nil
}

// check verifies rank me's buffers have the sizes the spec gives them.
func (sh *shape) check(req *core.Request, me, n int) error {
	one, all := sh.blk, sh.blk*n
	isRoot := me == req.Root
	need := func(what string, buf []byte, want int) error {
		if len(buf) != want {
			return fmt.Errorf("%s holds %d bytes, want %d (count %d of %v)", what, len(buf), want, req.Count, req.DType)
		}
		return nil
	}
	var err error
	switch sh.kind {
	case coll.KindAllreduce:
		err = firstErr(need("send", req.Send, one), need("recv", req.Recv, one))
	case coll.KindReduce:
		err = need("send", req.Send, one)
		if isRoot && err == nil {
			err = need("recv", req.Recv, one)
		}
	case coll.KindBroadcast:
		err = need("buf", bcastBuf(req), one)
	case coll.KindAllgather:
		err = firstErr(need("send", req.Send, one), need("recv", req.Recv, all))
	case coll.KindReduceScatter:
		err = firstErr(need("send", req.Send, all), need("recv", req.Recv, one))
	case coll.KindGather:
		err = need("send", req.Send, one)
		if isRoot && err == nil {
			err = need("recv", req.Recv, all)
		}
	case coll.KindScatter:
		err = need("recv", req.Recv, one)
		if isRoot && err == nil {
			err = need("send", req.Send, all)
		}
	case coll.KindAlltoall:
		err = firstErr(need("send", req.Send, all), need("recv", req.Recv, all))
	}
	return err
}

func firstErr(errs ...error) error {
	for _, e := range errs {
		if e != nil {
			return e
		}
	}
	return nil
}

// bcastBuf is broadcast's single buffer: callers pass it as both Send and
// Recv, but either alone is accepted.
func bcastBuf(req *core.Request) []byte {
	if req.Recv != nil {
		return req.Recv
	}
	return req.Send
}

func name(r int) string     { return strconv.Itoa(r) }
func block(r, j int) string { return strconv.Itoa(r) + "/" + strconv.Itoa(j) }

// publish returns what rank me writes: only what some other rank reads.
func (sh *shape) publish(req *core.Request, me, n int) (names []string, vals [][]byte) {
	isRoot := me == req.Root
	switch sh.kind {
	case coll.KindAllreduce, coll.KindAllgather:
		if n > 1 {
			names, vals = []string{name(me)}, [][]byte{req.Send}
		}
	case coll.KindReduce, coll.KindGather:
		if !isRoot {
			names, vals = []string{name(me)}, [][]byte{req.Send}
		}
	case coll.KindBroadcast:
		if isRoot && n > 1 {
			names, vals = []string{name(me)}, [][]byte{bcastBuf(req)}
		}
	case coll.KindReduceScatter, coll.KindAlltoall:
		for j := 0; j < n; j++ {
			if j != me {
				names = append(names, block(me, j))
				vals = append(vals, req.Send[j*sh.blk:(j+1)*sh.blk])
			}
		}
	case coll.KindScatter:
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
	reduce := func(dst []byte, srcs [][]byte) error {
		k := core.LookupType(sh.dt).Kernel(req.Op) // shape checked it exists
		k.Reduce(nil, dst, srcs)
		k.Finish(dst, n)
		return nil
	}
	switch sh.kind {
	case coll.KindAllreduce:
		srcs, err := gatherAll(req.Send, name)
		if err != nil {
			return err
		}
		return reduce(req.Recv, srcs)
	case coll.KindReduce:
		if !isRoot {
			return nil
		}
		srcs, err := gatherAll(req.Send, name)
		if err != nil {
			return err
		}
		return reduce(req.Recv, srcs)
	case coll.KindBroadcast:
		if isRoot {
			return nil
		}
		vs, err := get([]string{name(req.Root)}, blk)
		if err != nil {
			return err
		}
		copy(bcastBuf(req), vs[0])
	case coll.KindAllgather, coll.KindGather:
		if sh.kind == coll.KindGather && !isRoot {
			return nil
		}
		all, err := gatherAll(req.Send, name)
		if err != nil {
			return err
		}
		// My own block first, with copy's overlap rules, in case send
		// lies inside recv; the others come from the store.
		copy(req.Recv[me*blk:(me+1)*blk], req.Send)
		for r, v := range all {
			if r != me {
				copy(req.Recv[r*blk:(r+1)*blk], v)
			}
		}
	case coll.KindReduceScatter:
		srcs, err := gatherAll(req.Send[me*blk:(me+1)*blk], func(r int) string { return block(r, me) })
		if err != nil {
			return err
		}
		return reduce(req.Recv, srcs)
	case coll.KindScatter:
		if isRoot {
			copy(req.Recv, req.Send[me*blk:(me+1)*blk])
			return nil
		}
		vs, err := get([]string{block(req.Root, me)}, blk)
		if err != nil {
			return err
		}
		copy(req.Recv, vs[0])
	case coll.KindAlltoall:
		all, err := gatherAll(req.Send[me*blk:(me+1)*blk], func(r int) string { return block(r, me) })
		if err != nil {
			return err
		}
		// Every other rank's block is already fetched, so writing recv
		// is safe even when it is send (in place).
		copy(req.Recv[me*blk:(me+1)*blk], req.Send[me*blk:(me+1)*blk])
		for r, v := range all {
			if r != me {
				copy(req.Recv[r*blk:(r+1)*blk], v)
			}
		}
	}
	return nil
}
