package shm

import (
	"encoding/binary"
	"errors"
	"fmt"
	"strconv"

	"github.com/gocoll/gocoll/core"
)

// The vector collectives (allgatherv, gatherv, scatterv, alltoallv,
// reduce_scatter_v). Each round carries a chunk of every block a rank
// sends, at fixed places in its buffer, and every rank copies (or, for
// reduce_scatter_v, reduces) what is meant for it straight out of its
// peers' buffers: one copy in, one copy out, as the fixed-count ones do.
//
// Agreement: counts every rank passes alike travel as a digest in the
// descriptor's count, compared with the rest of it in the first round.
// Alltoallv's counts differ by rank; each rank puts its share of a sum
// over the whole counts matrix (core.CountsEdgeSum) and its largest count
// in its hot line's inline bytes, so the first round also tells every
// rank whether the matrix is consistent, and how many rounds the largest
// block takes, at no extra cost. Only when the counts disagree do the
// ranks take one more round, all of them, to exchange their vectors for
// an error that gives the exact values.

// vplan is one vector collective's geometry on this rank.
type vplan struct {
	sendCounts, sendOff []int // the blocks this rank writes (nil: none)
	one                 bool  // allgatherv, gatherv: one block, read by every reader
	recvCounts, recvOff []int // the blocks this rank reads (nil: none)
	cb                  int   // elements per block per round, at most
	// stride is how many elements apart this rank's blocks lie in its
	// buffer: cb, or less when its largest block is smaller, so that
	// small blocks lie together as alltoall's do. A reader takes a
	// peer's from vstride.
	stride int
}

// clampChunk is round k's part [lo, hi) of a block of count elements
// moved cb at a time.
func clampChunk(count, k, cb int) (lo, hi int) {
	lo = min(k*cb, count)
	return lo, min(lo+cb, count)
}

func maxOf(v []int) int {
	m := 0
	for _, c := range v {
		m = max(m, c)
	}
	return m
}

func (b *Backend) vector(o *op, d desc, req *core.Request, es int) error {
	n, me := b.size, b.rank
	if len(b.voff) < 2*n {
		b.voff = make([]int, 2*n)
	}
	so, ro := b.voff[:n], b.voff[n:2*n]
	var pl vplan
	isRoot := me == req.Root
	maxc := 0
	switch req.Kind {
	case core.KindAllgatherv, core.KindGatherv:
		pl.one = true
		pl.sendCounts = req.RecvCounts
		if req.Kind == core.KindAllgatherv || isRoot {
			pl.recvCounts, pl.recvOff = req.RecvCounts, core.Offsets(req.RecvCounts, req.RecvDispls, ro)
		}
		maxc = maxOf(req.RecvCounts)
	case core.KindScatterv:
		if isRoot {
			pl.sendCounts, pl.sendOff = req.SendCounts, core.Offsets(req.SendCounts, req.SendDispls, so)
		}
		maxc = maxOf(req.SendCounts)
	case core.KindAlltoallv:
		pl.sendCounts, pl.sendOff = req.SendCounts, core.Offsets(req.SendCounts, req.SendDispls, so)
		pl.recvCounts, pl.recvOff = req.RecvCounts, core.Offsets(req.RecvCounts, req.RecvDispls, ro)
		maxc = maxOf(req.SendCounts) // the largest of all ranks' after the first round
	case core.KindReduceScatterV:
		pl.sendCounts, pl.sendOff = req.RecvCounts, core.Offsets(req.RecvCounts, nil, so)
		maxc = maxOf(req.RecvCounts)
	}
	blocks := n
	if pl.one {
		blocks = 1
	}
	if b.vcb.es != es || b.vcb.blocks != blocks {
		// Divisions are slow enough to show in a small call: the last
		// geometry is kept.
		b.vcb.es, b.vcb.blocks, b.vcb.cb = es, blocks, b.lay.bufferSize/(blocks*es)
	}
	pl.cb = b.vcb.cb
	pl.stride = min(pl.cb, maxc)
	if len(b.vstride) < n {
		b.vstride = make([]int, n) // alltoallv's: the peers' come with the first round
	}
	d.count = req.Digest
	rounds := 1
	for k := 0; k < rounds; k++ {
		p := b.parity()
		mine := b.slot(me, p)
		switch {
		case pl.one:
			lo, hi := clampChunk(pl.sendCounts[me], k, pl.cb)
			copy(mine, req.Send[lo*es:hi*es])
		case pl.sendCounts != nil:
			sb := pl.stride * es
			for j, c := range pl.sendCounts {
				lo, hi := clampChunk(c, k, pl.cb)
				at := pl.sendOff[j]
				copy(mine[j*sb:j*sb+sb], req.Send[(at+lo)*es:(at+hi)*es])
			}
		}
		if k > 0 {
			if err := b.step(o); err != nil {
				return err
			}
		} else {
			var err error
			if rounds, err = b.vfirst(o, d, req, maxc, pl.cb); err != nil {
				return err
			}
		}
		switch req.Kind {
		case core.KindAllgatherv, core.KindGatherv:
			for j, c := range pl.recvCounts {
				lo, hi := clampChunk(c, k, pl.cb)
				at := pl.recvOff[j]
				copy(req.Recv[(at+lo)*es:(at+hi)*es], b.slot(j, p))
			}
		case core.KindScatterv:
			lo, hi := clampChunk(req.SendCounts[me], k, pl.cb)
			from := me * pl.stride * es
			copy(req.Recv[lo*es:hi*es], b.slot(req.Root, p)[from:from+(hi-lo)*es])
		case core.KindAlltoallv:
			for j, c := range pl.recvCounts {
				lo, hi := clampChunk(c, k, pl.cb)
				at := pl.recvOff[j]
				from := me * b.vstride[j] * es
				copy(req.Recv[(at+lo)*es:(at+hi)*es], b.slot(j, p)[from:from+(hi-lo)*es])
			}
		case core.KindReduceScatterV:
			lo, hi := clampChunk(req.RecvCounts[me], k, pl.cb)
			from := me * pl.stride * es
			srcs := b.srcs[:n]
			for j := range srcs {
				srcs[j] = b.slot(j, p)[from : from+(hi-lo)*es]
			}
			b.reduce(req.Kernel, req.Recv[lo*es:hi*es], srcs)
		}
	}
	return nil
}

// vfirst runs a vector collective's first round and returns how many
// rounds it takes, or the error on which every rank agrees.
func (b *Backend) vfirst(o *op, d desc, req *core.Request, maxc, cb int) (int, error) {
	me := b.rank
	pair := req.Kind == core.KindAlltoallv
	p := b.parity()
	if pair {
		in := &b.hot[me][p].inline
		binary.LittleEndian.PutUint64(in[0:], core.CountsEdgeSum(me, req.SendCounts, req.RecvCounts))
		binary.LittleEndian.PutUint64(in[8:], uint64(maxc))
	}
	if err := b.first(o, d); err != nil {
		var mm *core.MismatchError
		if errors.As(err, &mm) && mm.Field == "count" {
			// Only the digests differ: the counts.
			return 0, b.countsError(o, d, req)
		}
		return 0, err
	}
	if pair {
		var sum uint64
		for j := range b.size {
			in := &b.hot[j][p].inline
			sum += binary.LittleEndian.Uint64(in[0:])
			peer := int(binary.LittleEndian.Uint64(in[8:]))
			maxc = max(maxc, peer)
			b.vstride[j] = min(cb, peer)
		}
		if sum != 0 {
			return 0, b.countsError(o, d, req)
		}
	}
	if maxc <= cb {
		return 1, nil
	}
	return chunks(maxc, cb), nil
}

// countsError is the error of a vector collective whose first round
// showed that the ranks' counts disagree, as every rank sees it: the
// ranks exchange their counts vectors in one more round and derive the
// same error from them. Vectors too large for a buffer are named by their
// digests instead.
func (b *Backend) countsError(o *op, d desc, req *core.Request) error {
	n, me := b.size, b.rank
	pair := req.Kind == core.KindAlltoallv
	vecs := 1
	if pair {
		vecs = 2
	}
	if 8*n*vecs > b.lay.bufferSize {
		if pair {
			return &core.MismatchError{Seq: d.coll, Field: "counts", Rank: me, Mine: "counts of a matrix too large to show", Peer: me, Theirs: "send counts that differ from their receivers' counts"}
		}
		return &core.MismatchError{Seq: d.coll, Field: "counts", Rank: me, Mine: "digest " + strconv.FormatUint(d.count, 16), Peer: me, Theirs: "other digests"}
	}
	p := b.parity()
	put := func(at int, v []int) {
		buf := b.slot(me, p)[at*8*n:]
		for j, c := range v {
			binary.LittleEndian.PutUint64(buf[8*j:], uint64(c))
		}
	}
	get := func(r, at int) []int {
		buf := b.slot(r, p)[at*8*n:]
		v := make([]int, n)
		for j := range v {
			v[j] = int(binary.LittleEndian.Uint64(buf[8*j:]))
		}
		return v
	}
	if pair {
		put(0, req.SendCounts)
		put(1, req.RecvCounts)
	} else if req.Kind == core.KindScatterv {
		put(0, req.SendCounts)
	} else {
		put(0, req.RecvCounts)
	}
	if err := b.step(o); err != nil {
		return err
	}
	all := make([][]int, n)
	if pair {
		recv := make([][]int, n)
		for r := range all {
			all[r], recv[r] = get(r, 0), get(r, 1)
		}
		if e := core.PairCountsMismatch(d.coll, me, all, recv); e != nil {
			return e
		}
		return fmt.Errorf("shm: %v #%d: the ranks' counts checks disagree, yet their counts agree: %w", req.Kind, d.coll, errCorrupt)
	}
	for r := range all {
		all[r] = get(r, 0)
	}
	if e := core.SharedCountsMismatch(d.coll, me, all); e != nil {
		return e
	}
	return fmt.Errorf("shm: %v #%d: the ranks' counts digests differ, yet their counts agree: %w", req.Kind, d.coll, errCorrupt)
}

// errCorrupt marks a state the protocol rules out: shared memory that does
// not hold what the ranks wrote.
var errCorrupt = errors.New("the shared workspace is corrupt")
