package tcp

// The algorithms. Each runs on every rank of the group with the running
// call's expected header in b.cur; frames go through post (queued for the
// peer's sender goroutine, so sending overlaps receiving and reducing) and
// recv (read by the calling goroutine straight into their destination).
//
// Bitwise agreement: wherever two ranks compute the same element (recursive
// doubling), they combine the same two operands in the same order (the
// lower ranks' partial result first); wherever one rank computes an element
// (ring, halving, trees), the others receive its bytes. So every rank ends
// with identical bits, NaN payloads included.

import "github.com/gocoll/gocoll/core"

// maxChunksPerSegment keeps the jobs a pipelined algorithm posts ahead of
// its receives well below jobQueue: the ring cannot deadlock on full queues.
const maxChunksPerSegment = jobQueue / 4

// chunkElems is the chunk size in elements for segments of segElems.
func (b *Backend) chunkElems(segElems int) int {
	es := b.es
	ce := max(1, b.cfg.chunk/es)
	if need := (segElems + maxChunksPerSegment - 1) / maxChunksPerSegment; need > ce {
		ce = need
	}
	return ce
}

// chunks calls f for each chunk [c, e) of [lo, hi), at least once (an empty
// range is one empty chunk, so that headers are still exchanged).
func chunks(lo, hi, ce int, f func(c, e int) error) error {
	for c := lo; ; {
		e := min(c+ce, hi)
		if err := f(c, e); err != nil {
			return err
		}
		c = e
		if c >= hi {
			return nil
		}
	}
}

// allreduceRing: reduce-scatter then allgather around the ring.
//
// The buffer is cut into slices of n chunks, and each slice runs its own
// ring: at step j of a slice, a rank receives from its left what the left
// sent at step j-1 and sends step j's result to its right. Rank r finishes
// part r+1 of every slice and every other rank copies it. The slices run as
// a wavefront: at time t a rank does step t-i of every slice i still under
// way, in order of i, so 2(n-1) chunks are in flight on each connection
// while the partial sums live in a few chunk-sized scratch buffers that
// stay in cache. (One ring over the whole buffer needs a whole segment of
// partial sums in flight; kept in recv, they would go through memory twice
// more.)
func (b *Backend) allreduceRing(send, recv []byte, count int) error {
	n, r := b.size, b.rank
	es := b.es
	right, left := b.peers[mod(r+1, n)], b.peers[mod(r-1, n)]
	ce := max(1, b.cfg.chunk/es)
	slices := max(1, (count+n*ce-1)/(n*ce))
	steps := 2*n - 1 // step 0 sends this rank's part; 1..2n-2 receive
	// A step's partial sum is read by the right neighbour one time unit
	// later; with at most n-1 per time unit, 2n slots leave it two.
	// (Job numbers left from earlier calls are already sent: waiting on
	// them returns at once, so the slices need no reset.)
	nslot := len(b.slotJob)
	slots := b.buffer(nslot * ce * es)
	slotJob, ownJob := b.slotJob, b.ownJob
	slot := 0
	part := func(i, p int) (lo, hi int) {
		base := i * n * ce
		lo, hi = blockRange(min(n*ce, count-base), n, p)
		return base + lo, base + hi
	}
	for t := 0; t < slices+steps-1; t++ {
		for i := max(0, t-steps+1); i <= min(t, slices-1); i++ {
			j := t - i
			switch {
			case j == 0:
				lo, hi := part(i, r)
				if err := b.post(right, &b.cur, send[lo*es:hi*es]); err != nil {
					return err
				}
				ownJob[i%(n+1)] = right.posted
			case j < n: // reduce-scatter: add this rank's share of part r-j
				lo, hi := part(i, mod(r-j, n))
				mine := send[lo*es : hi*es]
				if err := b.waitSent(right, slotJob[slot]); err != nil {
					return err
				}
				tmp := slots[slot*ce*es : slot*ce*es+len(mine)]
				if err := b.recv(left, &b.cur, tmp); err != nil {
					return err
				}
				out := tmp
				if j == n-1 { // the part's last operand: final, into recv
					out = recv[lo*es : hi*es]
				}
				b.reduce(out, tmp, mine)
				if j == n-1 {
					b.finish(out)
				}
				if err := b.post(right, &b.cur, out); err != nil {
					return err
				}
				if j < n-1 {
					slotJob[slot] = right.posted
					slot = (slot + 1) % nslot
				}
			default: // allgather: part r-(j-n) arrives final
				k := j - n
				lo, hi := part(i, mod(r-k, n))
				if k == 0 {
					if err := b.waitSent(right, ownJob[i%(n+1)]); err != nil {
						return err
					}
				}
				dst := recv[lo*es : hi*es]
				if err := b.recv(left, &b.cur, dst); err != nil {
					return err
				}
				if k < n-2 {
					if err := b.post(right, &b.cur, dst); err != nil {
						return err
					}
				}
			}
		}
	}
	return b.flush(right)
}

// fold parameters for a group that is not a power of two: the first 2*rem
// ranks pair up, the even one of each pair handing its data to the odd one
// and sitting out, so that p = n - rem ranks (a power of two) remain.
func (b *Backend) foldParams() (p, rem int) {
	p = 1
	for p*2 <= b.size {
		p *= 2
	}
	return p, b.size - p
}

// realRank maps a rank among the p remaining ones back to the group.
func realRank(nr, rem int) int {
	if nr < rem {
		return 2*nr + 1
	}
	return nr + rem
}

// foldIn hands data to the pair's odd rank. It returns this rank's number
// among the remaining p ranks, or -1 if it sits out.
func (b *Backend) foldIn(data []byte, rem int) (int, error) {
	r := b.rank
	if r >= 2*rem {
		return r - rem, nil
	}
	if r%2 == 0 {
		return -1, b.send(b.peers[r+1], &b.cur, data)
	}
	t := b.buffer(len(data))
	if err := b.recv(b.peers[r-1], &b.cur, t); err != nil {
		return 0, err
	}
	b.reduce(data, t, data) // the lower rank's data first
	return r / 2, nil
}

// foldOut returns the result to the ranks that sat out.
func (b *Backend) foldOut(data []byte, rem int) error {
	r := b.rank
	if r >= 2*rem {
		return nil
	}
	if r%2 == 1 {
		return b.send(b.peers[r-1], &b.cur, data)
	}
	return b.recv(b.peers[r+1], &b.cur, data)
}

// allreduceRD: recursive doubling, log2(p) exchanges of the whole vector.
// Both partners compute lower op higher, so they agree bit for bit.
func (b *Backend) allreduceRD(send, recv []byte) error {
	copyIfDistinct(recv, send)
	p, rem := b.foldParams()
	nr, err := b.foldIn(recv, rem)
	if err != nil {
		return err
	}
	if nr >= 0 {
		t := b.buffer(len(recv))
		for mask := 1; mask < p; mask <<= 1 {
			pn := nr ^ mask
			q := b.peers[realRank(pn, rem)]
			if err := b.post(q, &b.cur, recv); err != nil {
				return err
			}
			if err := b.recv(q, &b.cur, t); err != nil {
				return err
			}
			if err := b.flush(q); err != nil {
				return err
			}
			if pn < nr {
				b.reduce(recv, t, recv)
			} else {
				b.reduce(recv, recv, t)
			}
		}
		b.finish(recv)
	}
	return b.foldOut(recv, rem)
}

// allreduceRabenseifner: reduce-scatter by recursive halving, then allgather
// by recursive doubling, on the p remaining ranks; each block of the result
// is computed by one rank.
func (b *Backend) allreduceRabenseifner(send, recv []byte, count int) error {
	copyIfDistinct(recv, send)
	es := b.es
	p, rem := b.foldParams()
	nr, err := b.foldIn(recv, rem)
	if err != nil {
		return err
	}
	if nr >= 0 {
		at := func(blk int) int { lo, _ := blockRange(count, p, blk); return lo * es }
		t := b.buffer(len(recv))
		lo, hi := 0, p
		for mask := p / 2; mask >= 1; mask /= 2 {
			pn := nr ^ mask
			q := b.peers[realRank(pn, rem)]
			mid := lo + (hi-lo)/2
			keepLo, keepHi, sendLo, sendHi := lo, mid, mid, hi
			if nr&mask != 0 {
				keepLo, keepHi, sendLo, sendHi = mid, hi, lo, mid
			}
			if err := b.post(q, &b.cur, recv[at(sendLo):at(sendHi)]); err != nil {
				return err
			}
			keep := recv[at(keepLo):at(keepHi)]
			in := t[:len(keep)]
			if err := b.recv(q, &b.cur, in); err != nil {
				return err
			}
			if pn < nr {
				b.reduce(keep, in, keep)
			} else {
				b.reduce(keep, keep, in)
			}
			// The sent half is overwritten in the allgather: it must be out.
			if err := b.flush(q); err != nil {
				return err
			}
			lo, hi = keepLo, keepHi
		}
		b.finish(recv[at(nr):at(nr+1)])
		for mask := 1; mask < p; mask <<= 1 {
			pn := nr ^ mask
			q := b.peers[realRank(pn, rem)]
			plo := lo ^ mask
			if err := b.post(q, &b.cur, recv[at(lo):at(hi)]); err != nil {
				return err
			}
			if err := b.recv(q, &b.cur, recv[at(plo):at(plo+mask)]); err != nil {
				return err
			}
			if err := b.flush(q); err != nil {
				return err
			}
			lo = min(lo, plo)
			hi = lo + 2*mask
		}
	}
	return b.foldOut(recv, rem)
}

// broadcastTree: a binomial tree from the root, run on the rounds of a
// dissemination barrier so that it also is the call's agreement round (see
// the package documentation): in round k every rank sends a frame to the
// rank k further on and receives one from the rank k back, and a frame
// carries the data when its sender has it and its receiver has not. The
// ranks at distance [k, 2k) from the root get the data in round k, so
// every rank gets it once, after log2(n) rounds as in a plain tree.
func (b *Backend) broadcastTree(buf []byte, root int) error {
	n, r := b.size, b.rank
	d := mod(r-root, n)
	for k := 1; k < n; k <<= 1 {
		var out, in []byte
		if d < k && d+k < n {
			out = buf
		}
		if d >= k && d < 2*k {
			in = buf
		}
		if err := b.post(b.peers[mod(r+k, n)], &b.cur, out); err != nil {
			return err
		}
		if err := b.recv(b.peers[mod(r-k, n)], &b.cur, in); err != nil {
			return err
		}
	}
	return b.flushAll()
}

// broadcastChain: a pipelined chain root -> root+1 -> ...; each chunk is
// forwarded as soon as it arrives.
func (b *Backend) broadcastChain(buf []byte, root int) error {
	n := b.size
	vr := mod(b.rank-root, n)
	es := b.es
	count := len(buf) / es
	ce := b.chunkElems(count)
	var prev, next *peer
	if vr > 0 {
		prev = b.peers[mod(b.rank-1, n)]
	}
	if vr < n-1 {
		next = b.peers[mod(b.rank+1, n)]
	}
	if err := chunks(0, count, ce, func(c, e int) error {
		part := buf[c*es : e*es]
		if prev != nil {
			if err := b.recv(prev, &b.cur, part); err != nil {
				return err
			}
		}
		if next != nil {
			return b.post(next, &b.cur, part)
		}
		return nil
	}); err != nil {
		return err
	}
	if next != nil {
		return b.flush(next)
	}
	return nil
}

// reduceTree: a binomial tree towards the root, run on the rounds of a
// dissemination barrier (towards lower ranks) so that it also is the
// call's agreement round: in round k every rank sends a frame to the rank
// k back and receives one from the rank k further on. A rank whose
// distance from the root has k as its lowest bit sends its partial result
// in round k; one whose distance is a multiple of 2k combines its partial
// result (lower distances) with the one that arrives (higher) in that
// order.
func (b *Backend) reduceTree(send, recv []byte, root int) error {
	n, r := b.size, b.rank
	d := mod(r-root, n)
	acc := send // read-only until the first combination
	var work, in []byte
	if d == 0 {
		work = recv
	}
	for k := 1; k < n; k <<= 1 {
		var out []byte
		if d&(2*k-1) == k {
			out = acc // final: this rank receives no more data
		}
		if err := b.post(b.peers[mod(r-k, n)], &b.cur, out); err != nil {
			return err
		}
		if d&(2*k-1) != 0 || d+k >= n {
			if err := b.recv(b.peers[mod(r+k, n)], &b.cur, nil); err != nil {
				return err
			}
			continue
		}
		if in == nil {
			// Scratch: the child's data, then (off the root) this rank's
			// sums.
			t := b.buffer(2 * len(send))
			in = t[:len(send)]
			if work == nil {
				work = t[len(send):]
			}
		}
		if err := b.recv(b.peers[mod(r+k, n)], &b.cur, in); err != nil {
			return err
		}
		b.reduce(work, acc, in)
		acc = work
	}
	if err := b.flushAll(); err != nil {
		return err
	}
	if d == 0 {
		copyIfDistinct(recv, acc)
		b.finish(recv)
	}
	return nil
}

// slotCount is the number of chunk buffers a pipelined reduction cycles
// through: a buffer is reused only once the send reading it is out.
const slotCount = 4

// reduceChain: a pipelined chain towards the root, root+n-1 -> ... ->
// root+1 -> root; each rank adds its chunk to the partial sum passing by.
func (b *Backend) reduceChain(send, recv []byte, count, root int) error {
	n := b.size
	vr := mod(b.rank-root, n)
	es := b.es
	ce := b.chunkElems(count)
	var prev, next *peer // prev sends to this rank, next receives from it
	if vr < n-1 {
		prev = b.peers[mod(b.rank+1, n)]
	}
	if vr > 0 {
		next = b.peers[mod(b.rank-1, n)]
	}
	var slots []byte
	var slotJob [slotCount]uint64
	slot := 0
	if prev != nil {
		slots = b.buffer(slotCount * ce * es)
	}
	if err := chunks(0, count, ce, func(c, e int) error {
		mine := send[c*es : e*es]
		if prev == nil { // the chain's far end: its own data starts the sum
			return b.post(next, &b.cur, mine)
		}
		if next != nil {
			if err := b.waitSent(next, slotJob[slot]); err != nil {
				return err
			}
		}
		t := slots[slot*ce*es : slot*ce*es+len(mine)]
		if err := b.recv(prev, &b.cur, t); err != nil {
			return err
		}
		if next == nil { // the root
			dst := recv[c*es : e*es]
			b.reduce(dst, t, mine)
			b.finish(dst)
			return nil
		}
		b.reduce(t, t, mine)
		if err := b.post(next, &b.cur, t); err != nil {
			return err
		}
		slotJob[slot] = next.posted
		slot = (slot + 1) % slotCount
		return nil
	}); err != nil {
		return err
	}
	if next != nil {
		return b.flush(next)
	}
	return nil
}

// allgatherRing: n-1 steps; each block travels the ring, chunk by chunk.
func (b *Backend) allgatherRing(send, recv []byte, count int) error {
	n, r := b.size, b.rank
	es := b.es
	bs := count * es
	right, left := b.peers[mod(r+1, n)], b.peers[mod(r-1, n)]
	ce := b.chunkElems(count)
	copyIfDistinct(recv[r*bs:(r+1)*bs], send)
	if err := chunks(0, count, ce, func(c, e int) error {
		return b.post(right, &b.cur, recv[r*bs+c*es:r*bs+e*es])
	}); err != nil {
		return err
	}
	for k := 0; k < n-1; k++ {
		s := mod(r-k-1, n)
		forward := k < n-2
		if err := chunks(0, count, ce, func(c, e int) error {
			dst := recv[s*bs+c*es : s*bs+e*es]
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

// reduceScatterRing: the ring's reduce-scatter, shifted so that rank r ends
// with block r; partial sums travel in scratch.
//
// The right neighbour reads a step's partial sums only in its next step,
// after all of this step's: a whole block of them is in flight at once.
// Steps therefore alternate between two block-sized scratch regions, and a
// step reuses its region once the sends of two steps back are out. (A few
// chunk-sized slots would be reused before the neighbour reads them, and
// every rank would stall on full socket buffers.)
//
// counts nil: every block has count elements. Otherwise (reduce_scatter_v)
// block j has counts[j] elements, packed in send, and the scratch regions
// are as large as the largest block; count is ignored.
func (b *Backend) reduceScatterRing(send, recv []byte, count int, counts []int) error {
	n, r, es := b.size, b.rank, b.es
	var off []int
	if counts != nil {
		off = core.Offsets(counts, nil, nil)
		count = vmax(counts)
	}
	blockCount := func(j int) int {
		if counts == nil {
			return count
		}
		return counts[j]
	}
	block := func(j int) []byte {
		if counts == nil {
			return send[j*count*es : (j+1)*count*es]
		}
		return send[off[j]*es : (off[j]+counts[j])*es]
	}
	bs := count * es
	right, left := b.peers[mod(r+1, n)], b.peers[mod(r-1, n)]
	ce := b.chunkElems(count)
	scratch := b.buffer(2 * bs)
	var regionSent [2]uint64
	first := block(mod(r-1, n))
	if err := chunks(0, blockCount(mod(r-1, n)), ce, func(c, e int) error {
		return b.post(right, &b.cur, first[c*es:e*es])
	}); err != nil {
		return err
	}
	for k := 0; k < n-1; k++ {
		s := mod(r-k-2, n)
		last := k == n-2
		region := scratch[(k%2)*bs : (k%2+1)*bs]
		if err := b.waitSent(right, regionSent[k%2]); err != nil {
			return err
		}
		mineBlk := block(s)
		if err := chunks(0, blockCount(s), ce, func(c, e int) error {
			mine := mineBlk[c*es : e*es]
			t := region[c*es : e*es]
			if err := b.recv(left, &b.cur, t); err != nil {
				return err
			}
			if last {
				dst := recv[c*es : e*es]
				b.reduce(dst, t, mine)
				b.finish(dst)
				return nil
			}
			b.reduce(t, t, mine)
			return b.post(right, &b.cur, t)
		}); err != nil {
			return err
		}
		regionSent[k%2] = right.posted
	}
	return b.flush(right)
}

// gather: every rank sends its block straight to the root.
func (b *Backend) gather(send, recv []byte, root int) error {
	if b.rank != root {
		return b.send(b.peers[root], &b.cur, send)
	}
	bs := len(send)
	copyIfDistinct(recv[root*bs:(root+1)*bs], send)
	for i, p := range b.peers {
		if p != nil {
			if err := b.recv(p, &b.cur, recv[i*bs:(i+1)*bs]); err != nil {
				return err
			}
		}
	}
	return nil
}

// scatter: the root sends every rank its block, all at once.
func (b *Backend) scatter(send, recv []byte, root int) error {
	if b.rank != root {
		return b.recv(b.peers[root], &b.cur, recv)
	}
	bs := len(recv)
	for i, p := range b.peers {
		if p != nil {
			if err := b.post(p, &b.cur, send[i*bs:(i+1)*bs]); err != nil {
				return err
			}
		}
	}
	copyIfDistinct(recv, send[root*bs:(root+1)*bs])
	return b.flushAll()
}

// alltoall: pairwise exchange; every send is queued at once (each peer has
// its own sender), and blocks are received from r-1, r-2, ... in turn.
func (b *Backend) alltoall(send, recv []byte) error {
	n, r := b.size, b.rank
	bs := len(send) / n
	if sameStart(send, recv) {
		t := b.buffer(len(send))
		copy(t, send)
		send = t
	}
	copy(recv[r*bs:(r+1)*bs], send[r*bs:(r+1)*bs])
	for k := 1; k < n; k++ {
		j := mod(r+k, n)
		if err := b.post(b.peers[j], &b.cur, send[j*bs:(j+1)*bs]); err != nil {
			return err
		}
	}
	for k := 1; k < n; k++ {
		j := mod(r-k, n)
		if err := b.recv(b.peers[j], &b.cur, recv[j*bs:(j+1)*bs]); err != nil {
			return err
		}
	}
	return b.flushAll()
}

// barrier: dissemination, ceil(log2 n) rounds of empty frames.
func (b *Backend) barrier() error {
	n, r := b.size, b.rank
	for k := 1; k < n; k <<= 1 {
		if err := b.post(b.peers[mod(r+k, n)], &b.cur, nil); err != nil {
			return err
		}
		if err := b.recv(b.peers[mod(r-k, n)], &b.cur, nil); err != nil {
			return err
		}
	}
	return b.flushAll()
}

// flushAll waits for every posted send.
func (b *Backend) flushAll() error {
	for _, p := range b.peers {
		if p != nil {
			if err := b.flush(p); err != nil {
				return err
			}
		}
	}
	return nil
}
