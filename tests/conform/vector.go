package conform

import (
	"bytes"
	"context"
	"fmt"

	"github.com/gocoll/gocoll/core"
)

// The vector collectives (core.Shape.Vector): per-rank counts drawn from
// the case, the size and the rank, like the inputs, so that every rank
// knows every rank's counts without exchanging them. The counts pattern
// turns with the case and the size over
//   - uniform: count everywhere (the fixed-count collective's layout),
//   - ragged: random counts in [0, 2*count],
//   - one rank (alltoallv: one pair) holding everything: count*size there,
//     0 elsewhere,
//   - every other rank empty;
// and every case runs with packed blocks and again with displaced ones
// (reverse rank order, one element of poison between blocks, which must
// stay untouched).

// vpattern names the counts pattern of cr, for messages.
var vpatterns = [...]string{"uniform counts", "ragged counts", "one rank holds everything", "every other rank empty"}

func (cr *caseRun) vpattern() int { return (cr.idx + cr.sizeIdx) % len(vpatterns) }

// vcount is the count of the block rank i sends rank j (for the shared
// counts of the other vector collectives, j's count: i is 0).
func (r *runner) vcount(cr *caseRun, i, j int) int {
	c, n := cr.count, r.size
	switch cr.vpattern() {
	case 1:
		return int(mix(seedFor(cr.pass, cr.idx, cr.sizeIdx, i, j)) % uint64(2*c+1))
	case 2:
		if j == (cr.idx+1)%n && (i == cr.idx%n || !r.shapes[cr.c.Kind].pair()) {
			return c * n
		}
		return 0
	case 3:
		if (i+j)%2 == 1 {
			return 0
		}
	}
	return c
}

// pair reports whether s is alltoallv's shape: counts per pair of ranks.
func (s shape) pair() bool { return s.sendCounts && s.recvCounts }

// vlayout places blocks of counts: packed, or (displaced) in reverse rank
// order with a one-element gap after each. It returns the displacements
// (nil when packed), each block's offset and the buffer's length, in
// elements.
func vlayout(counts []int, displaced bool) (displs, at []int, total int) {
	at = make([]int, len(counts))
	if !displaced {
		for j, c := range counts {
			at[j] = total
			total += c
		}
		return nil, at, total
	}
	for j := len(counts) - 1; j >= 0; j-- {
		at[j] = total
		total += counts[j] + 1
	}
	return at, at, total
}

func (r *runner) vectorCase(ctx context.Context, cr *caseRun) error {
	s := r.shapes[cr.c.Kind]
	n, me := r.size, r.rank
	cr.root = (cr.idx + cr.sizeIdx) % n
	isRoot := !s.root || me == cr.root
	displaced := cr.inPlace // the second variant of a vector case: displaced blocks
	g := r.gen(cr)
	elem := cr.c.DType.Size()
	req := &core.Request{Kind: cr.c.Kind, DType: cr.c.DType, Op: cr.c.Op, Root: cr.root}

	// row is what rank i sends (alltoallv) or the shared counts.
	row := func(i int) []int {
		v := make([]int, n)
		for j := range v {
			if s.pair() {
				v[j] = r.vcount(cr, i, j)
			} else {
				v[j] = r.vcount(cr, 0, j)
			}
		}
		return v
	}
	prefix := func(v []int, j int) int {
		t := 0
		for _, c := range v[:j] {
			t += c
		}
		return t
	}
	shared := row(0)
	var sendCounts, recvCounts []int
	switch {
	case s.pair():
		sendCounts = row(me)
		recvCounts = make([]int, n)
		for i := range recvCounts {
			recvCounts[i] = r.vcount(cr, i, me)
		}
	case s.sendCounts:
		sendCounts = shared
	default:
		recvCounts = shared
	}
	req.SendCounts, req.RecvCounts = sendCounts, recvCounts

	// This rank's input: its own stream, block j starting at the packed
	// position of block j.
	var in []byte
	var segs []segment // where the output's elements come from
	var inCopy []byte
	sendOn := s.sendExtent != core.None && (!s.sendRootOnly || isRoot)
	recvOn := s.recvExtent != core.None && (!s.recvRootOnly || isRoot)
	if sendOn {
		switch s.sendExtent {
		case core.Mine:
			in = newBuf(shared[me] * elem)
			g.fill(in, r.seed(cr, me), 0)
		case core.Sum:
			in = newBuf(prefix(shared, n) * elem)
			g.fill(in, r.seed(cr, me), 0)
		case core.Blocks:
			displs, at, total := vlayout(sendCounts, displaced)
			req.SendDispls = displs
			in = newBuf(total * elem)
			for i := range in {
				in[i] = poison
			}
			for j, c := range sendCounts {
				g.fill(in[at[j]*elem:(at[j]+c)*elem], r.seed(cr, me), prefix(sendCounts, j))
			}
		}
		inCopy = bytes.Clone(in)
		req.Send = in
	}
	var out []byte
	if recvOn {
		var total int
		switch s.recvExtent {
		case core.Mine:
			mine := shared[me]
			if s.pair() {
				mine = recvCounts[me]
			}
			total = mine
			switch s.result {
			case core.ResultRootBlock: // scatterv
				segs = append(segs, segment{at: 0, n: mine, src: cr.root, from: prefix(shared, me)})
			case core.ResultReduceBlock: // reduce_scatter_v
				segs = append(segs, segment{at: 0, n: mine, src: -1, from: prefix(shared, me)})
			}
		case core.Blocks:
			var displs, at []int
			displs, at, total = vlayout(recvCounts, displaced)
			req.RecvDispls = displs
			for j, c := range recvCounts {
				from := 0 // concat: rank j's whole block
				if s.result == core.ResultTranspose {
					from = prefix(row(j), me)
				}
				segs = append(segs, segment{at: at[j], n: c, src: j, from: from})
			}
		}
		out = newBuf(total * elem)
		for i := range out {
			out[i] = poison
		}
		req.Recv = out
	}
	if err := r.do(ctx, req); err != nil {
		return fmt.Errorf("conform: rank %d: %s (%s): %w", r.rank, cr, r.detail(cr), err)
	}
	if inCopy != nil && !bytes.Equal(inCopy, in) {
		i := firstDiff(inCopy, in) / elem * elem
		r.fail(cr, "the send buffer changed at element %d: %s, was %s", i/elem, format(cr.c.DType, in[i:]), format(cr.c.DType, inCopy[i:]))
	}
	rec := runRecord{desc: fmt.Sprintf("%s (%s)", cr, r.detail(cr)), same: s.sameEverywhere() && out != nil}
	if out != nil {
		r.checkGuard(cr, out)
		r.checkGaps(cr, out, segs, elem)
		if checkable(cr.c.DType, cr.c.Op, cr.pass) {
			r.checkSegs(cr, g, out, segs)
		}
		rec.hash = hash(out)
	}
	r.runs = append(r.runs, rec)
	return nil
}

// checkGaps requires every output element outside the blocks to be
// untouched poison.
func (r *runner) checkGaps(cr *caseRun, out []byte, segs []segment, elem int) {
	used := make([]bool, len(out)/elem)
	for _, s := range segs {
		for k := s.at; k < s.at+s.n; k++ {
			used[k] = true
		}
	}
	for k, u := range used {
		if u {
			continue
		}
		for _, v := range out[k*elem : (k+1)*elem] {
			if v != poison {
				r.fail(cr, "wrote element %d, between the blocks", k)
				return
			}
		}
	}
}
