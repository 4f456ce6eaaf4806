package shm

import (
	"context"
	"errors"
	"fmt"
	"strconv"
	"unsafe"

	"github.com/gocoll/gocoll/core"
	"github.com/gocoll/gocoll/generated/coll"
)

// Do implements core.Comm: it runs one collective (or a send/recv).
func (b *Backend) Do(ctx context.Context, req *core.Request) error {
	if req == nil {
		return errors.New("shm: nil request")
	}
	// The lock and its deferred unlock live here, apart from do's many
	// returns, so that the defer stays open-coded (a few ns per call).
	b.mu.Lock()
	defer b.mu.Unlock()
	return b.do(ctx, req)
}

func (b *Backend) do(ctx context.Context, req *core.Request) error {
	if b.closed || b.closing.Load() {
		return core.ErrClosed
	}
	if b.failed != nil {
		return fmt.Errorf("shm: an earlier call failed and left the ranks out of step; build a new communicator: %w", b.failed)
	}
	switch req.Kind {
	case coll.KindSend:
		return b.send(ctx, req)
	case coll.KindRecv:
		return b.recv(ctx, req)
	}
	b.coll++
	o := &op{ctx: ctx, kind: req.Kind, coll: b.coll, p2p: -1}
	es, verr := b.validate(req)
	d := describe(b.coll, req, verr != nil)
	if verr != nil {
		// Take part in the first round anyway, so that peers get a
		// mismatch error at once instead of a timeout.
		if err := b.first(o, d); err != nil {
			var me *core.MismatchError
			if !errors.As(err, &me) {
				return err
			}
		}
		return verr
	}
	n := req.Count
	switch req.Kind {
	case coll.KindAllreduce:
		return b.allreduce(o, d, req, es, true)
	case coll.KindReduce:
		return b.allreduce(o, d, req, es, false)
	case coll.KindBroadcast:
		buf := req.Recv
		if buf == nil {
			buf = req.Send
		}
		return b.broadcast(o, d, buf[:n*es], req.Root, es)
	case coll.KindAllgather:
		return b.allgather(o, d, req, es, true)
	case coll.KindGather:
		return b.allgather(o, d, req, es, false)
	case coll.KindReduceScatter:
		return b.blocks(o, d, req, es)
	case coll.KindScatter:
		return b.blocks(o, d, req, es)
	case coll.KindAlltoall:
		return b.blocks(o, d, req, es)
	case coll.KindBarrier:
		return b.first(o, d)
	}
	panic("unreachable: validate accepted kind " + req.Kind.String())
}

// describe makes this rank's descriptor of req. Fields a kind does not use
// are zeroed so that they cannot cause spurious mismatches.
func describe(seq uint64, req *core.Request, invalid bool) desc {
	var o core.Op
	var root int
	switch req.Kind {
	case coll.KindAllreduce, coll.KindReduceScatter:
		o = req.Op
	case coll.KindReduce:
		o, root = req.Op, req.Root
	case coll.KindBroadcast, coll.KindGather, coll.KindScatter:
		root = req.Root
	}
	var dt core.DType
	count := 0
	if req.Kind != coll.KindBarrier {
		dt, count = req.DType, req.Count
	}
	w := uint64(req.Kind) | uint64(dt)<<8 | uint64(o)<<16
	if invalid {
		w |= 1 << 24
	}
	return desc{coll: seq, what: w, count: uint64(count), root: uint64(root)}
}

// validate checks a request locally and returns the element size.
func (b *Backend) validate(req *core.Request) (int, error) {
	k := req.Kind
	if k < coll.KindAllreduce || k > coll.KindBarrier {
		return 0, fmt.Errorf("shm: collective %v: %w", k, core.ErrUnsupported)
	}
	if k == coll.KindBarrier {
		return 0, nil
	}
	es := b.dtSize(req.DType)
	if es == 0 {
		return 0, fmt.Errorf("shm: %v: dtype %v is not registered (import generated/coll): %w", k, req.DType, core.ErrUnsupported)
	}
	if req.Count < 0 || req.Count > (1<<46)/es/b.size {
		return 0, fmt.Errorf("shm: %v: count %d is out of range", k, req.Count)
	}
	switch k {
	case coll.KindAllreduce, coll.KindReduce, coll.KindReduceScatter:
		if !coll.Supports(req.DType, req.Op) {
			return 0, fmt.Errorf("shm: %v: op %v on %v: %w", k, req.Op, req.DType, core.ErrUnsupported)
		}
	}
	switch k {
	case coll.KindReduce, coll.KindBroadcast, coll.KindGather, coll.KindScatter:
		if req.Root < 0 || req.Root >= b.size {
			return 0, fmt.Errorf("shm: %v: root %d is not a rank of this group of %d", k, req.Root, b.size)
		}
	}
	one, all := req.Count*es, req.Count*es*b.size
	isRoot := b.rank == req.Root
	need := func(name string, buf []byte, n int) error {
		if len(buf) < n {
			return fmt.Errorf("shm: %v: %s buffer holds %d bytes, count %d of %v needs %d", k, name, len(buf), req.Count, req.DType, n)
		}
		return nil
	}
	var err error
	switch k {
	case coll.KindAllreduce:
		err = errors.Join(need("send", req.Send, one), need("recv", req.Recv, one))
	case coll.KindReduce:
		err = need("send", req.Send, one)
		if isRoot {
			err = errors.Join(err, need("recv", req.Recv, one))
		}
	case coll.KindBroadcast:
		buf := req.Recv
		if buf == nil {
			buf = req.Send
		}
		err = need("buf", buf, one)
	case coll.KindAllgather:
		err = errors.Join(need("send", req.Send, one), need("recv", req.Recv, all))
	case coll.KindGather:
		err = need("send", req.Send, one)
		if isRoot {
			err = errors.Join(err, need("recv", req.Recv, all))
		}
	case coll.KindReduceScatter:
		err = errors.Join(need("send", req.Send, all), need("recv", req.Recv, one))
	case coll.KindScatter:
		err = need("recv", req.Recv, one)
		if isRoot {
			err = errors.Join(err, need("send", req.Send, all))
		}
	case coll.KindAlltoall:
		err = errors.Join(need("send", req.Send, all), need("recv", req.Recv, all))
	}
	return es, err
}

// parity is the buffer the next round writes.
func (b *Backend) parity() int { return int((b.round + 1) & 1) }

// step publishes the next round and waits until every peer reached it.
func (b *Backend) step(o *op) error {
	k := b.round + 1
	p := int(k & 1)
	me := b.hot[b.rank][p]
	publish(&me.seq, &me.sleepers, k)
	b.round = k
	for _, j := range b.peers {
		h := b.hot[j][p]
		var touch []byte
		if o.touch > 0 {
			touch = b.slot(j, p)[:o.touch]
		}
		if err := b.waitTouch(o, j, &h.seq, &h.sleepers, k, touch); err != nil {
			return err
		}
	}
	return nil
}

// first runs a collective's first round: it publishes d with it and checks
// every peer's descriptor against d. Every rank compares all peers with
// itself, so if any two ranks disagree every rank sees a difference and
// returns a *core.MismatchError after this same round: they stay in step.
func (b *Backend) first(o *op, d desc) error {
	p := b.parity()
	b.hot[b.rank][p].setDesc(d)
	if err := b.step(o); err != nil {
		return err
	}
	for _, j := range b.peers {
		pd := b.hot[j][p].desc()
		b.zc[j] = pd.zc
		pd.zc = d.zc
		if pd != d {
			return b.mismatch(d, pd, j)
		}
	}
	return nil
}

func (b *Backend) mismatch(mine, theirs desc, peer int) error {
	e := &core.MismatchError{Seq: b.coll, Rank: b.rank, Peer: peer}
	kind := func(w uint64) core.Kind { return core.Kind(w) }
	dt := func(w uint64) core.DType { return core.DType(w >> 8) }
	opOf := func(w uint64) core.Op { return core.Op(w >> 16) }
	inv := func(w uint64) string {
		if w&(1<<24) != 0 {
			return "invalid arguments"
		}
		return "valid arguments"
	}
	switch {
	case mine.coll != theirs.coll:
		e.Field, e.Mine, e.Theirs = "sequence", "collective #"+strconv.FormatUint(mine.coll, 10), "collective #"+strconv.FormatUint(theirs.coll, 10)
	case kind(mine.what) != kind(theirs.what):
		e.Field, e.Mine, e.Theirs = "kind", kind(mine.what).String(), kind(theirs.what).String()
	case (mine.what^theirs.what)&(1<<24) != 0:
		e.Field, e.Mine, e.Theirs = "arguments", inv(mine.what), inv(theirs.what)
	case dt(mine.what) != dt(theirs.what):
		e.Field, e.Mine, e.Theirs = "dtype", dt(mine.what).String(), dt(theirs.what).String()
	case opOf(mine.what) != opOf(theirs.what):
		e.Field, e.Mine, e.Theirs = "op", opOf(mine.what).String(), opOf(theirs.what).String()
	case mine.count != theirs.count:
		e.Field, e.Mine, e.Theirs = "count", strconv.FormatUint(mine.count, 10), strconv.FormatUint(theirs.count, 10)
	default:
		e.Field, e.Mine, e.Theirs = "root", strconv.FormatUint(mine.root, 10), strconv.FormatUint(theirs.root, 10)
	}
	return e
}

// firstOr runs the first round with d, later rounds plainly.
func (b *Backend) firstOr(o *op, d desc, isFirst bool) error {
	if isFirst {
		return b.first(o, d)
	}
	return b.step(o)
}

// chunks is the number of rounds for count elements moved chunk at a time;
// at least one, so that empty collectives still synchronise.
func chunks(count, chunk int) int {
	if count == 0 {
		return 1
	}
	return (count + chunk - 1) / chunk
}

// split is rank j's share [lo, hi) of c elements, cut at 64-byte units so
// that ranks never write the same cache line.
func split(c, es, n, j int) (lo, hi int) {
	unit := max(1, 64/es)
	units := (c + unit - 1) / unit
	per, rem := units/n, units%n
	start := j*per + min(j, rem)
	cnt := per
	if j < rem {
		cnt++
	}
	return min(start*unit, c), min((start+cnt)*unit, c)
}

// reduce reduces srcs into dst with req's kernel (Check's, which a caller
// such as the hierarchical backend may have replaced; by id for a request
// that did not pass Check) and finishes it.
func (b *Backend) reduce(req *core.Request, dst []byte, srcs [][]byte) error {
	k := req.Kernel
	if k == nil {
		if t := core.LookupType(req.DType); t != nil {
			k = t.Kernel(req.Op)
		}
	}
	if k == nil {
		return fmt.Errorf("shm: reduce %v %v: %w", req.DType, req.Op, core.ErrUnsupported)
	}
	k.Reduce(&b.red, dst, srcs)
	k.Finish(dst, b.size)
	return nil
}

// allreduce runs allreduce (toAll) or reduce (the root gets the result).
//
// Two algorithms, both cut into chunks of the data-buffer size:
//   - direct: one round per chunk; every output rank reduces all inputs in
//     rank order. Least synchronisation; each output rank reads n inputs.
//   - split: two rounds per chunk; each rank reduces its 1/n slice of all
//     inputs into its other buffer, then every output rank copies all the
//     slices out. Each rank reads about 2 inputs' worth whatever n is.
//
// Direct is used up to the small threshold (by default: always for two
// ranks, where it moves less data than split).
func (b *Backend) allreduce(o *op, d desc, req *core.Request, es int, toAll bool) error {
	n := b.size
	bytes := req.Count * es
	send := req.Send[:bytes]
	var recv []byte
	if toAll || b.rank == req.Root {
		recv = req.Recv[:bytes]
	}
	if n == 1 {
		if err := b.first(o, d); err != nil {
			return err
		}
		srcs := b.srcs[:1]
		srcs[0] = send
		return b.reduce(req, recv, srcs)
	}
	if bytes >= b.zcMin {
		d.zc = b.heapOffset(send)
	}
	if bytes <= b.lay.smallThreshold {
		if d.zc != 0 && recv != nil && overlaps(send, recv) {
			// Peers read a zero-copy input while this rank writes its
			// result: in place, it must be copied in after all.
			d.zc = 0
		}
		return b.direct(o, d, req, es, send, recv)
	}
	return b.split(o, d, req, es, send, recv)
}

// zeroCopyMin is the smallest input read in place from a heap buffer:
// below it, copying is cheaper than the extra round a direct allreduce
// needs before the owner may reuse its input.
const zeroCopyMin = 64 << 10

func overlaps(a, b []byte) bool {
	if len(a) == 0 || len(b) == 0 {
		return false
	}
	pa, pb := uintptr(unsafe.Pointer(unsafe.SliceData(a))), uintptr(unsafe.Pointer(unsafe.SliceData(b)))
	return pa < pb+uintptr(len(b)) && pb < pa+uintptr(len(a))
}

// input is rank j's elements [lo, hi) of the chunk at element off: in its
// heap if it published a zero-copy input, else in its buffer p.
func (b *Backend) input(j, p, off, lo, hi, es int) []byte {
	if z := b.zc[j]; z != 0 {
		base := int(z-1) + off*es
		return b.heapOf(j)[base+lo*es : base+hi*es]
	}
	return b.slot(j, p)[lo*es : hi*es]
}

// touchMax is the largest payload that waiters fetch while they wait for
// its round's number: a few lines that come over beside the hot line, not
// after it (at 32-128 bytes, that second line transfer made a two-rank
// allreduce ~10% slower than Open MPI's).
const touchMax = 256

func (b *Backend) direct(o *op, d desc, req *core.Request, es int, send, recv []byte) error {
	me := b.rank
	chunk := b.lay.bufferSize / es
	srcs := b.srcs[:b.size]
	anyZC := false
	// A payload of a few bytes travels in the hot line with the round's
	// number: a waiter then needs one line transfer, not two.
	inline := len(send) <= inlineMax
	for i := 0; i < chunks(req.Count, chunk); i++ {
		off := i * chunk
		c := min(chunk, req.Count-off)
		p := b.parity()
		switch {
		case d.zc != 0:
		case inline:
			copy(b.hot[me][p].inline[:], send)
		default:
			copy(b.slot(me, p), send[off*es:(off+c)*es])
		}
		if !inline && d.zc == 0 && len(send) <= touchMax && !raceEnabled {
			o.touch = len(send)
		}
		err := b.firstOr(o, d, i == 0)
		o.touch = 0
		if err != nil {
			return err
		}
		if i == 0 {
			b.zc[me] = d.zc
			if err := b.checkZC(len(send)); err != nil {
				return err
			}
			for _, z := range b.zc {
				anyZC = anyZC || z != 0
			}
		}
		if recv != nil {
			for j := range srcs {
				if inline && b.zc[j] == 0 {
					srcs[j] = b.hot[j][p].inline[:len(send)]
				} else {
					srcs[j] = b.input(j, p, off, 0, c, es)
				}
			}
			srcs[me] = send[off*es : (off+c)*es]
			if err := b.reduce(req, recv[off*es:(off+c)*es], srcs); err != nil {
				return b.fail(err)
			}
		}
	}
	if anyZC {
		// Zero-copy inputs were read in place: their owners may reuse
		// them only once every rank is done reading.
		return b.step(o)
	}
	return nil
}

func (b *Backend) split(o *op, d desc, req *core.Request, es int, send, recv []byte) error {
	n, me := b.size, b.rank
	chunk := b.lay.bufferSize / es
	srcs := b.srcs[:n]
	for i := 0; i < chunks(req.Count, chunk); i++ {
		off := i * chunk
		c := min(chunk, req.Count-off)
		p := b.parity()
		if d.zc == 0 {
			copy(b.slot(me, p), send[off*es:(off+c)*es])
		}
		if err := b.firstOr(o, d, i == 0); err != nil {
			return err
		}
		if i == 0 {
			b.zc[me] = 0 // read from send directly below
			if err := b.checkZC(len(send)); err != nil {
				return err
			}
		}
		lo, hi := split(c, es, n, me)
		for j := range srcs {
			srcs[j] = b.input(j, p, off, lo, hi, es)
		}
		srcs[me] = send[(off+lo)*es : (off+hi)*es]
		// The slice goes to the other buffer, written in the next round:
		// nobody reads that buffer until then.
		q := 1 - p
		if err := b.reduce(req, b.slot(me, q)[lo*es:hi*es], srcs); err != nil {
			return b.fail(err)
		}
		if err := b.step(o); err != nil {
			return err
		}
		// Inputs (zero-copy ones included) are no longer read by anyone.
		if recv != nil {
			dst := recv[off*es : (off+c)*es]
			for j := 0; j < n; j++ {
				l, h := split(c, es, n, j)
				copy(dst[l*es:h*es], b.slot(j, q)[l*es:h*es])
			}
		}
	}
	return nil
}

// checkZC validates the heap offsets peers published for an input of bytes.
func (b *Backend) checkZC(bytes int) error {
	for _, j := range b.peers {
		if z := b.zc[j]; z != 0 && (z-1 > uint64(b.lay.heapSize) || uint64(bytes) > uint64(b.lay.heapSize)-(z-1)) {
			return b.fail(fmt.Errorf("shm: rank %d published a heap buffer at %d of %d bytes outside its %d-byte heap", j, z-1, bytes, b.lay.heapSize))
		}
	}
	return nil
}

// broadcast: the root copies a chunk in, every other rank copies it out.
// A root buffer from Alloc is read in place (with a closing round, after
// which the root may change it again).
func (b *Backend) broadcast(o *op, d desc, buf []byte, root, es int) error {
	chunk := b.lay.bufferSize / es
	count := len(buf) / es
	if b.rank == root && len(buf) >= b.zcMin {
		d.zc = b.heapOffset(buf)
	}
	for i := 0; i < chunks(count, chunk); i++ {
		off := i * chunk
		c := min(chunk, count-off)
		p := b.parity()
		if b.rank == root && d.zc == 0 {
			copy(b.slot(b.rank, p), buf[off*es:(off+c)*es])
		}
		if err := b.firstOr(o, d, i == 0); err != nil {
			return err
		}
		if i == 0 {
			b.zc[b.rank] = d.zc
			if err := b.checkZC(len(buf)); err != nil {
				return err
			}
		}
		if b.rank != root {
			copy(buf[off*es:(off+c)*es], b.input(root, p, off, 0, c, es))
		}
	}
	if b.zc[root] != 0 {
		return b.step(o)
	}
	return nil
}

// allgather: everyone copies a chunk in; everyone (or the root) copies
// every rank's chunk out. Send buffers from Alloc are read in place (with a
// closing round).
func (b *Backend) allgather(o *op, d desc, req *core.Request, es int, toAll bool) error {
	count := req.Count
	chunk := b.lay.bufferSize / es
	out := toAll || b.rank == req.Root
	send := req.Send[:count*es]
	if len(send) >= b.zcMin && !(out && overlaps(send, req.Recv)) {
		d.zc = b.heapOffset(send)
	}
	anyZC := false
	for i := 0; i < chunks(count, chunk); i++ {
		off := i * chunk
		c := min(chunk, count-off)
		p := b.parity()
		if d.zc == 0 {
			copy(b.slot(b.rank, p), send[off*es:(off+c)*es])
		}
		if err := b.firstOr(o, d, i == 0); err != nil {
			return err
		}
		if i == 0 {
			b.zc[b.rank] = d.zc
			if err := b.checkZC(len(send)); err != nil {
				return err
			}
			for _, z := range b.zc {
				anyZC = anyZC || z != 0
			}
		}
		if out {
			for j := 0; j < b.size; j++ {
				at := (j*count + off) * es
				copy(req.Recv[at:at+c*es], b.input(j, p, off, 0, c, es))
			}
		}
	}
	if anyZC {
		return b.step(o)
	}
	return nil
}

// blocks runs the collectives whose send holds one block per rank:
// reduce_scatter, scatter and alltoall. A round carries a chunk of every
// block, laid out block after block in the sender's buffer.
func (b *Backend) blocks(o *op, d desc, req *core.Request, es int) error {
	n, me, count := b.size, b.rank, req.Count
	chunk := b.lay.bufferSize / (n * es)
	srcs := b.srcs[:n]
	for i := 0; i < chunks(count, chunk); i++ {
		off := i * chunk
		c := min(chunk, count-off)
		cb := c * es
		p := b.parity()
		if req.Kind != coll.KindScatter || me == req.Root {
			mine := b.slot(me, p)
			for blk := 0; blk < n; blk++ {
				at := (blk*count + off) * es
				copy(mine[blk*cb:(blk+1)*cb], req.Send[at:at+cb])
			}
		}
		if err := b.firstOr(o, d, i == 0); err != nil {
			return err
		}
		dst := req.Recv[off*es : (off+c)*es]
		switch req.Kind {
		case coll.KindReduceScatter:
			for j := range srcs {
				srcs[j] = b.slot(j, p)[me*cb : (me+1)*cb]
			}
			if err := b.reduce(req, dst, srcs); err != nil {
				return b.fail(err)
			}
		case coll.KindScatter:
			copy(dst, b.slot(req.Root, p)[me*cb:(me+1)*cb])
		case coll.KindAlltoall:
			for j := 0; j < n; j++ {
				at := (j*count + off) * es
				copy(req.Recv[at:at+cb], b.slot(j, p)[me*cb:(me+1)*cb])
			}
		}
	}
	return nil
}

// dtSize is d.Size(), remembered: core's registry takes a lock per lookup,
// which shows at the 8-byte allreduce's few hundred nanoseconds.
func (b *Backend) dtSize(d core.DType) int {
	if s := b.sizes[d]; s != 0 {
		return int(s)
	}
	s := d.Size()
	if s > 0 && s < 256 {
		b.sizes[d] = uint8(s)
	}
	return s
}
