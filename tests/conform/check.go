package conform

import (
	"context"
	"encoding/binary"
	"fmt"
	"hash/crc32"
	"slices"
	"strings"

	"github.com/gocoll/gocoll/core"
)

// chunkElems bounds the elements the reference computes at once, so that
// checking a large output needs memory for a chunk per rank, not a buffer.
const chunkElems = 1 << 14

// segment is a run of output elements [at, at+n) whose expected value is
// rank src's input elements [from, from+n), or, with src < 0, the reduction
// of every rank's input elements [from, from+n).
type segment struct{ at, n, src, from int }

// segments derives, from the result kind alone, where each block of this
// rank's output comes from.
func (r *runner) segments(s shape, cr *caseRun, outElems int) []segment {
	c, me := cr.count, r.rank
	var segs []segment
	blocks := func(src func(j int) int, from func(j int) int) {
		for j := 0; j*c < outElems; j++ {
			segs = append(segs, segment{at: j * c, n: c, src: src(j), from: from(j)})
		}
	}
	zero := func(int) int { return 0 }
	switch s.result {
	case core.ResultReduce:
		segs = []segment{{0, outElems, -1, 0}}
	case core.ResultReduceBlock:
		segs = []segment{{0, outElems, -1, me * c}}
	case core.ResultRoot:
		segs = []segment{{0, outElems, cr.root, 0}}
	case core.ResultRootBlock:
		segs = []segment{{0, outElems, cr.root, me * c}}
	case core.ResultConcat:
		blocks(func(j int) int { return j }, zero)
	case core.ResultTranspose:
		blocks(func(j int) int { return j }, func(int) int { return me * c })
	case core.ResultPeer:
		segs = []segment{{0, outElems, cr.peer, 0}}
	}
	return segs
}

// check compares this rank's output with the reference.
func (r *runner) check(cr *caseRun, s shape, g *gen, out []byte) {
	r.checkSegs(cr, g, out, r.segments(s, cr, len(out)/g.size))
}

// checkSegs compares the output's segments with the reference.
func (r *runner) checkSegs(cr *caseRun, g *gen, out []byte, segs []segment) {
	elem := g.size
	nOut := len(out) / elem
	want := make([]byte, min(nOut, chunkElems)*elem)
	var srcs [][]byte
	for _, seg := range segs {
		for a := 0; a < seg.n; a += chunkElems {
			n := min(chunkElems, seg.n-a)
			w := want[:n*elem]
			if seg.src >= 0 {
				g.fill(w, r.seed(cr, seg.src), seg.from+a)
			} else {
				if srcs == nil {
					srcs = make([][]byte, r.size)
					for i := range srcs {
						srcs[i] = make([]byte, len(want))
					}
				}
				in := make([][]byte, r.size)
				for i := range r.size {
					in[i] = srcs[i][:n*elem]
					g.fill(in[i], r.seed(cr, i), seg.from+a)
				}
				if err := referenceReduce(cr.c.DType, cr.c.Op, w, in); err != nil {
					r.fail(cr, "reference: %v", err)
					return
				}
			}
			if !r.compare(cr, out[(seg.at+a)*elem:(seg.at+a+n)*elem], w, seg.at+a) {
				return // one report per case is enough
			}
		}
	}
}

// compare reports the first differing elements of got and want, which
// start at element first of the output; it returns whether they are equal.
func (r *runner) compare(cr *caseRun, got, want []byte, first int) bool {
	if string(got) == string(want) {
		return true
	}
	elem := cr.c.DType.Size()
	var bad []string
	nbad := 0
	for i := 0; i < len(got); i += elem {
		if string(got[i:i+elem]) == string(want[i:i+elem]) {
			continue
		}
		nbad++
		if len(bad) < 3 {
			bad = append(bad, fmt.Sprintf("element %d: got %s, want %s", first+i/elem,
				format(cr.c.DType, got[i:]), format(cr.c.DType, want[i:])))
		}
	}
	if nbad == 0 {
		return true
	}
	more := ""
	if nbad > len(bad) {
		more = fmt.Sprintf(" (%d wrong elements in this stretch of %d)", nbad, len(got)/elem)
	}
	r.fail(cr, "%s%s", strings.Join(bad, "; "), more)
	return false
}

var castagnoli = crc32.MakeTable(crc32.Castagnoli)

// hash fingerprints an output for the agreement check: two 32-bit CRCs
// (both hardware-assisted), never 0 for a present buffer.
func hash(b []byte) uint64 {
	return uint64(crc32.Checksum(b, castagnoli))<<32 | uint64(crc32.ChecksumIEEE(b)) | 1<<63
}

// agree exchanges every rank's output hashes and error count through an
// allgather on the communicator under test (checked by then) and records an
// error for each case on which ranks that must agree do not, and for each
// other rank that found mismatches, so that every rank fails together.
func (r *runner) agree(ctx context.Context) error {
	if r.size == 1 {
		return nil
	}
	rec := make([]byte, 8+8*len(r.runs))
	binary.LittleEndian.PutUint32(rec, uint32(len(r.errs)))
	binary.LittleEndian.PutUint32(rec[4:], uint32(len(r.runs)))
	for i, run := range r.runs {
		binary.LittleEndian.PutUint64(rec[8+8*i:], run.hash)
	}
	all := make([]byte, len(rec)*r.size)
	// Any registered dtype moves the bytes: rec is a whole number of
	// 8-byte words, and no registered element is wider than 16 bytes.
	dt, err := wordType(len(rec))
	if err != nil {
		return err
	}
	req := &core.Request{Kind: core.KindAllgather, DType: dt.ID, Count: len(rec) / dt.Size, Send: rec, Recv: all}
	if err := r.do(ctx, req); err != nil {
		return fmt.Errorf("conform: rank %d: exchanging the ranks' output hashes with an allgather: %w", r.rank, err)
	}
	recs := make([][]byte, r.size)
	for j := range recs {
		recs[j] = all[j*len(rec) : (j+1)*len(rec)]
		if binary.LittleEndian.Uint32(recs[j][4:]) != uint32(len(r.runs)) {
			return fmt.Errorf("conform: rank %d ran %d cases, rank %d ran %d: were the Options equal on every rank?",
				r.rank, len(r.runs), j, binary.LittleEndian.Uint32(recs[j][4:]))
		}
	}
	var disagree []string
	for i, run := range r.runs {
		if !run.same {
			continue
		}
		groups := map[uint64][]int{}
		for j := range recs {
			h := binary.LittleEndian.Uint64(recs[j][8+8*i:])
			groups[h] = append(groups[h], j)
		}
		if len(groups) > 1 {
			var parts []string
			for _, ranks := range groups {
				parts = append(parts, fmt.Sprintf("ranks %v", ranks))
			}
			slices.Sort(parts)
			disagree = append(disagree, fmt.Sprintf("%s: ranks hold different outputs: %s", run.desc, strings.Join(parts, " | ")))
		}
	}
	for i, d := range disagree {
		if i == r.opts.MaxErrors {
			r.errs = append(r.errs, fmt.Errorf("(%d more cases where ranks disagree)", len(disagree)-i))
			break
		}
		r.errs = append(r.errs, fmt.Errorf("%s", d))
	}
	for j := range recs {
		if n := binary.LittleEndian.Uint32(recs[j]); n > 0 && j != r.rank {
			r.errs = append(r.errs, fmt.Errorf("rank %d found %d mismatches (its own error lists them)", j, n))
		}
	}
	return nil
}

// wordType picks a registered dtype whose size divides n, the smallest.
func wordType(n int) (*core.Type, error) {
	var best *core.Type
	for _, t := range core.Types() {
		if n%t.Size == 0 && (best == nil || t.Size < best.Size) {
			best = t
		}
	}
	if best == nil {
		return nil, fmt.Errorf("conform: no registered dtype moves %d bytes: import a generated package", n)
	}
	return best, nil
}
