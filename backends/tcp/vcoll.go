package tcp

import (
	"encoding/binary"

	"github.com/gocoll/gocoll/core"
)

// The vector collectives. Their counts are agreed as the other
// collectives' count is: counts every rank passes alike travel as a
// digest (core.Request.Digest) in every frame's count field, and
// alltoallv, whose counts differ by rank, first runs a round in which
// each rank sends every peer the count it will send it, and checks the
// count it expects (vagree). When the counts disagree, the settling
// ranks' end frames carry their counts vectors, and every rank derives
// the same error with the exact values from them (verdict).

// vcall is the running vector collective's counts, for the end frames of
// a settlement (nil outside one).
type vcall struct {
	shared     []int // the counts every rank passes alike
	send, recv []int // alltoallv's
}

func vmax(v []int) int {
	m := 0
	for _, c := range v {
		m = max(m, c)
	}
	return m
}

func vsum(v []int) int {
	s := 0
	for _, c := range v {
		s += c
	}
	return s
}

// vchoose picks a vector collective's algorithm: from arguments every
// rank shares, so every rank picks the same.
func (b *Backend) vchoose(req *core.Request) Algorithm {
	switch req.Kind {
	case core.KindAllgatherv:
		if vsum(req.RecvCounts)*b.es <= b.cfg.smallSize {
			return Direct // one step instead of the ring's n-1
		}
		return Ring
	case core.KindReduceScatterV:
		return Ring
	case core.KindAlltoallv:
		return Pairwise
	}
	return Direct
}

func (b *Backend) runVector(req *core.Request, algo Algorithm) error {
	if algo == algoCopy {
		return b.vlocal(req)
	}
	switch req.Kind {
	case core.KindAllgatherv:
		off := core.Offsets(req.RecvCounts, req.RecvDispls, nil)
		if algo == Direct {
			return b.allgathervDirect(req.Send, req.Recv, req.RecvCounts, off)
		}
		return b.allgathervRing(req.Send, req.Recv, req.RecvCounts, off)
	case core.KindReduceScatterV:
		return b.reduceScatterRing(req.Send, req.Recv, 0, req.RecvCounts)
	case core.KindGatherv:
		if err := b.agree(); err != nil {
			return err
		}
		return b.gatherv(req)
	case core.KindScatterv:
		if err := b.agree(); err != nil {
			return err
		}
		return b.scatterv(req)
	}
	if err := b.vagree(req.SendCounts, req.RecvCounts); err != nil {
		return err
	}
	return b.alltoallv(req)
}

// vlocal runs a vector collective of one rank.
func (b *Backend) vlocal(req *core.Request) error {
	es := b.es
	switch req.Kind {
	case core.KindAllgatherv, core.KindGatherv:
		at := core.Offsets(req.RecvCounts, req.RecvDispls, nil)[0]
		copy(req.Recv[at*es:], req.Send)
	case core.KindScatterv:
		at := core.Offsets(req.SendCounts, req.SendDispls, nil)[0]
		copy(req.Recv, req.Send[at*es:])
	case core.KindAlltoallv:
		from := core.Offsets(req.SendCounts, req.SendDispls, nil)[0]
		at := core.Offsets(req.RecvCounts, req.RecvDispls, nil)[0]
		copy(req.Recv[at*es:at*es+req.RecvCounts[0]*es], req.Send[from*es:])
	case core.KindReduceScatterV:
		copy(req.Recv, req.Send)
		b.kern.Finish(req.Recv, 1)
	}
	return nil
}

// allgathervDirect: every rank sends its block to every other at once.
// Every rank hears from every other, so each compares every call.
func (b *Backend) allgathervDirect(send, recv []byte, counts, off []int) error {
	n, r, es := b.size, b.rank, b.es
	copy(recv[off[r]*es:(off[r]+counts[r])*es], send)
	for k := 1; k < n; k++ {
		if err := b.post(b.peers[mod(r+k, n)], &b.cur, send); err != nil {
			return err
		}
	}
	for k := 1; k < n; k++ {
		j := mod(r-k, n)
		if err := b.recv(b.peers[j], &b.cur, recv[off[j]*es:(off[j]+counts[j])*es]); err != nil {
			return err
		}
	}
	return b.flushAll()
}

// allgathervRing: n-1 steps; block j (counts[j] elements at off[j]) travels
// the ring, chunk by chunk, as allgatherRing's blocks do.
func (b *Backend) allgathervRing(send, recv []byte, counts, off []int) error {
	n, r, es := b.size, b.rank, b.es
	right, left := b.peers[mod(r+1, n)], b.peers[mod(r-1, n)]
	ce := b.chunkElems(vmax(counts))
	block := func(j int) []byte { return recv[off[j]*es : (off[j]+counts[j])*es] }
	mine := block(r)
	copy(mine, send)
	if err := chunks(0, counts[r], ce, func(c, e int) error {
		return b.post(right, &b.cur, mine[c*es:e*es])
	}); err != nil {
		return err
	}
	for k := 0; k < n-1; k++ {
		s := mod(r-k-1, n)
		blk := block(s)
		forward := k < n-2
		if err := chunks(0, counts[s], ce, func(c, e int) error {
			dst := blk[c*es : e*es]
			if err := b.recv(left, &b.cur, dst); err != nil {
				return err
			}
			if forward {
				return b.post(right, &b.cur, dst)
			}
			return nil
		}); err != nil {
			return err
		}
	}
	return b.flush(right)
}

// gatherv: every rank sends its block straight to the root.
func (b *Backend) gatherv(req *core.Request) error {
	r, root, es := b.rank, req.Root, b.es
	if r != root {
		return b.send(b.peers[root], &b.cur, req.Send)
	}
	counts := req.RecvCounts
	off := core.Offsets(counts, req.RecvDispls, nil)
	copy(req.Recv[off[r]*es:], req.Send)
	for i, p := range b.peers {
		if p != nil {
			if err := b.recv(p, &b.cur, req.Recv[off[i]*es:(off[i]+counts[i])*es]); err != nil {
				return err
			}
		}
	}
	return nil
}

// scatterv: the root sends every rank its block, all at once.
func (b *Backend) scatterv(req *core.Request) error {
	r, root, es := b.rank, req.Root, b.es
	if r != root {
		return b.recv(b.peers[root], &b.cur, req.Recv)
	}
	counts := req.SendCounts
	off := core.Offsets(counts, req.SendDispls, nil)
	for i, p := range b.peers {
		if p != nil {
			if err := b.post(p, &b.cur, req.Send[off[i]*es:(off[i]+counts[i])*es]); err != nil {
				return err
			}
		}
	}
	copy(req.Recv, req.Send[off[r]*es:(off[r]+counts[r])*es])
	return b.flushAll()
}

// vagree is alltoallv's counts round: each rank sends every peer, in an
// agreement frame, the count it will send it, and compares what each
// peer says with the count it expects from it. A rank sends no data
// before its own checks pass, and every rank waits for data from every
// other, so no rank completes while any pair disagrees: the rank that
// finds the difference settles, and so, on its end frame, do the others.
func (b *Backend) vagree(send, recv []int) error {
	n, r := b.size, b.rank
	h := b.cur
	h.typ = frameAgree
	out := b.buffer(8 * n)
	for k := 1; k < n; k++ {
		j := mod(r+k, n)
		binary.LittleEndian.PutUint64(out[8*j:], uint64(send[j]))
		if err := b.post(b.peers[j], &h, out[8*j:8*j+8]); err != nil {
			return err
		}
	}
	var in [8]byte
	for k := 1; k < n; k++ {
		j := mod(r-k, n)
		if err := b.recv(b.peers[j], &h, in[:]); err != nil {
			return err
		}
		if got := int(binary.LittleEndian.Uint64(in[:])); got != recv[j] {
			if err := b.flushAll(); err != nil {
				return err
			}
			return b.settle("alltoallv counts")
		}
	}
	return b.flushAll()
}

// alltoallv: pairwise exchange, as alltoall.
func (b *Backend) alltoallv(req *core.Request) error {
	n, r, es := b.size, b.rank, b.es
	sc, rc := req.SendCounts, req.RecvCounts
	so, ro := core.Offsets(sc, req.SendDispls, nil), core.Offsets(rc, req.RecvDispls, nil)
	copy(req.Recv[ro[r]*es:(ro[r]+rc[r])*es], req.Send[so[r]*es:(so[r]+sc[r])*es])
	for k := 1; k < n; k++ {
		j := mod(r+k, n)
		if err := b.post(b.peers[j], &b.cur, req.Send[so[j]*es:(so[j]+sc[j])*es]); err != nil {
			return err
		}
	}
	for k := 1; k < n; k++ {
		j := mod(r-k, n)
		if err := b.recv(b.peers[j], &b.cur, req.Recv[ro[j]*es:(ro[j]+rc[j])*es]); err != nil {
			return err
		}
	}
	return b.flushAll()
}

// appendVectors appends the running call's counts vectors to an end
// frame's payload: a count of vectors, then each as a length and its
// values.
func (b *Backend) appendVectors(p []byte) []byte {
	var vs [][]int
	switch {
	case b.vc.send != nil:
		vs = [][]int{b.vc.send, b.vc.recv}
	case b.vc.shared != nil:
		vs = [][]int{b.vc.shared}
	}
	p = append(p, byte(len(vs)))
	for _, v := range vs {
		p = binary.LittleEndian.AppendUint32(p, uint32(len(v)))
		for _, c := range v {
			p = binary.LittleEndian.AppendUint64(p, uint64(c))
		}
	}
	return p
}

// parseVectors reads what appendVectors wrote; nil if malformed.
func parseVectors(p []byte) [][]int {
	if len(p) < 1 {
		return nil
	}
	nv := int(p[0])
	p = p[1:]
	vs := make([][]int, 0, nv)
	for range nv {
		if len(p) < 4 {
			return nil
		}
		l := int(binary.LittleEndian.Uint32(p))
		p = p[4:]
		if l < 0 || len(p) < 8*l {
			return nil
		}
		v := make([]int, l)
		for i := range v {
			v[i] = int(binary.LittleEndian.Uint64(p[8*i:]))
		}
		vs = append(vs, v)
		p = p[8*l:]
	}
	return vs
}

// vverdict is the error of a vector collective whose ranks' counts
// disagree, from every rank's end note, or nil if the notes do not show
// it. Every rank holds the same notes, so every rank derives the same.
func (b *Backend) vverdict() *core.MismatchError {
	sh := b.cur.kind.Shape()
	if sh == nil || !sh.Vector() {
		return nil
	}
	var shared, send, recv [][]int
	for r := range b.notes {
		vs := b.notes[r].vectors
		switch {
		case len(vs) == 2 && !sh.SharedCounts():
			send, recv = append(send, vs[0]), append(recv, vs[1])
		case len(vs) == 1 && sh.SharedCounts():
			shared = append(shared, vs[0])
		default:
			return nil
		}
	}
	if sh.SharedCounts() {
		return core.SharedCountsMismatch(b.cur.seq, b.rank, shared)
	}
	return core.PairCountsMismatch(b.cur.seq, b.rank, send, recv)
}
