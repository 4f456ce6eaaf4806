package core

import (
	"fmt"
	"math"
	"slices"
	"strconv"
	"strings"
)

// checkVector is Check for a vector collective (sh.Vector()), once the
// dtype, op, root and peer passed. It zeroes Count and what the kind or
// this rank does not use (a side's displacements where this rank passes
// no buffer on that side), checks the vectors and the buffers, and sets
// Digest.
func checkVector(req *Request, sh *Shape, t *Type, rank, size int) error {
	req.Count = 0
	isRoot := rank == req.Root
	sendOn := sh.Send != None && !(sh.SendRootOnly && !isRoot)
	recvOn := sh.Recv != None && !(sh.RecvRootOnly && !isRoot)
	if !sh.SendCounts {
		req.SendCounts = nil
	}
	if !sh.RecvCounts {
		req.RecvCounts = nil
	}
	if !sh.SendDispls || !sendOn {
		req.SendDispls = nil
	}
	if !sh.RecvDispls || !recvOn {
		req.RecvDispls = nil
	}
	if !sendOn {
		req.Send = nil
	}
	if !recvOn {
		req.Recv = nil
	}
	// The one vector that Mine and Sum refer to.
	shared := req.RecvCounts
	if sh.SendCounts && !sh.RecvCounts {
		shared = req.SendCounts
	}
	limit := maxElems(t.Size)
	var sendTotal, recvTotal int
	var err error
	if sh.SendCounts {
		if sendTotal, err = checkCounts(req, "send counts", req.SendCounts, size, limit, t); err != nil {
			return err
		}
	}
	if sh.RecvCounts {
		if recvTotal, err = checkCounts(req, "recv counts", req.RecvCounts, size, limit, t); err != nil {
			return err
		}
	}
	sharedTotal := recvTotal
	if sh.SendCounts && !sh.RecvCounts {
		sharedTotal = sendTotal
	}
	if sendOn {
		if err := checkSide(req, "send", sh.Send, req.Send, req.SendCounts, req.SendDispls, shared, sendTotal, sharedTotal, rank, size, limit, t); err != nil {
			return err
		}
	}
	if recvOn {
		if err := checkSide(req, "recv", sh.Recv, req.Recv, req.RecvCounts, req.RecvDispls, shared, recvTotal, sharedTotal, rank, size, limit, t); err != nil {
			return err
		}
	}
	if overlap(req.Send, req.Recv) {
		return fmt.Errorf("gocoll: %v: %w: send and recv overlap; %v does not run in place: pass disjoint buffers", req.Kind, ErrInvalid, req.Kind)
	}
	req.Digest = 0
	if sh.SharedCounts() {
		req.Digest = CountsDigest(shared)
	}
	return nil
}

// checkCounts requires vec to hold one count per rank, none negative, and
// their elements to fit in memory together; it returns their sum.
func checkCounts(req *Request, name string, vec []int, size, limit int, t *Type) (int, error) {
	if len(vec) != size {
		return 0, fmt.Errorf("gocoll: %v: %w: %s holds %d entries; pass one count per rank (%d)", req.Kind, ErrInvalid, name, len(vec), size)
	}
	total := 0
	for j, c := range vec {
		if c < 0 || c > limit-total {
			return 0, fmt.Errorf("gocoll: %v: %w: %s[%d] is %d: counts must be non-negative and their %d-byte elements fit in memory", req.Kind, ErrInvalid, name, j, c, t.Size)
		}
		total += c
	}
	return total, nil
}

// checkSide requires buf, one side's buffer of extent e, to hold what its
// counts (and displacements) say.
func checkSide(req *Request, name string, e Extent, buf []byte, counts, displ, shared []int, total, sharedTotal, rank, size, limit int, t *Type) error {
	var want int
	switch e {
	case Mine:
		want = shared[rank] * t.Size
	case Sum:
		want = sharedTotal * t.Size
	case Blocks:
		if displ == nil {
			want = total * t.Size
			break
		}
		end, err := checkDispls(req, name, counts, displ, size, limit)
		if err != nil {
			return err
		}
		// Displaced blocks need the buffer to reach the last of them; it
		// may be longer, as MPI's may.
		if len(buf) < end*t.Size {
			return fmt.Errorf("gocoll: %v: %w: %s holds %d bytes; its blocks at their displacements reach element %d, %d bytes", req.Kind, ErrBufferLength, name, len(buf), end, end*t.Size)
		}
		return nil
	}
	if len(buf) != want {
		return fmt.Errorf("gocoll: %v: %w: %s holds %d bytes; %s of %v need %d", req.Kind, ErrBufferLength, name, len(buf), extentText(e, name), req.DType, want)
	}
	return nil
}

// maxElems is how many elements of size bytes fit in memory's address
// range, math.MaxInt/size without a division for the usual sizes: a
// vector collective's check runs on every call.
func maxElems(size int) int {
	switch size {
	case 1:
		return math.MaxInt
	case 2:
		return math.MaxInt >> 1
	case 4:
		return math.MaxInt >> 2
	case 8:
		return math.MaxInt >> 3
	case 16:
		return math.MaxInt >> 4
	}
	return math.MaxInt / size
}

func extentText(e Extent, side string) string {
	switch e {
	case Mine:
		return "this rank's count"
	case Sum:
		return "the sum of the counts"
	}
	return "the " + side + " counts"
}

// checkDispls checks one side's displacements against its counts: one per
// rank, none negative, and the blocks apart from each other (empty blocks
// may lie anywhere in range). It returns the element offset the blocks
// reach.
func checkDispls(req *Request, side string, counts, displ []int, size, limit int) (int, error) {
	if len(displ) != size {
		return 0, fmt.Errorf("gocoll: %v: %w: %s displacements hold %d entries; pass one per rank (%d), or nil for packed blocks", req.Kind, ErrInvalid, side, len(displ), size)
	}
	end := 0
	sorted := true
	prevEnd := 0
	for j, d := range displ {
		if d < 0 || d > limit-counts[j] {
			return 0, fmt.Errorf("gocoll: %v: %w: %s displacement %d of rank %d is out of range", req.Kind, ErrInvalid, side, d, j)
		}
		if counts[j] == 0 {
			continue
		}
		if d < prevEnd {
			sorted = false
		}
		prevEnd = d + counts[j]
		end = max(end, d+counts[j])
	}
	if sorted {
		return end, nil
	}
	// Blocks out of rank order: sort them by start to find an overlap.
	idx := make([]int, 0, size)
	for j := range displ {
		if counts[j] > 0 {
			idx = append(idx, j)
		}
	}
	slices.SortFunc(idx, func(a, b int) int { return displ[a] - displ[b] })
	for k := 1; k < len(idx); k++ {
		a, b := idx[k-1], idx[k]
		if displ[a]+counts[a] > displ[b] {
			return 0, fmt.Errorf("gocoll: %v: %w: %s blocks of ranks %d and %d overlap (elements [%d, %d) and [%d, %d))", req.Kind, ErrInvalid, side, a, b, displ[a], displ[a]+counts[a], displ[b], displ[b]+counts[b])
		}
	}
	return end, nil
}

// CountsDigest hashes a counts vector (FNV-1a over the counts as 64-bit
// words, then a final mix), so that ranks compare one word instead of the
// vector. It is never 0, which stands for "no shared counts".
func CountsDigest(counts []int) uint64 {
	h := uint64(14695981039346656037)
	for _, c := range counts {
		v := uint64(c)
		for i := 0; i < 8; i++ {
			h ^= v & 0xff
			h *= 1099511628211
			v >>= 8
		}
	}
	h ^= uint64(len(counts))
	h ^= h >> 33
	h *= 0xff51afd7ed558ccd
	h ^= h >> 33
	if h == 0 {
		h = 1
	}
	return h
}

// CountsText renders a counts vector for an error message: all of it up to
// 16 entries, else the first 16 and how many more.
func CountsText(counts []int) string {
	var b strings.Builder
	b.WriteByte('[')
	for j, c := range counts {
		if j == 16 {
			fmt.Fprintf(&b, " ... (%d more)", len(counts)-16)
			break
		}
		if j > 0 {
			b.WriteByte(' ')
		}
		b.WriteString(strconv.Itoa(c))
	}
	b.WriteByte(']')
	return b.String()
}
