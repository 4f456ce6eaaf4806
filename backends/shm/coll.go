package shm

import (
	"context"
	"errors"
	"fmt"
	"strconv"
	"unsafe"

	"github.com/gocoll/gocoll/core"
)

// Run implements core.Backend: it runs req, which passed core.Check with
// this backend's rank and size. Its first round compares req with every
// peer's call before any output changes (see first).
func (b *Backend) Run(ctx context.Context, req *core.Request) error {
	// The lock and its deferred unlock live here, apart from run's many
	// returns, so that the defer stays open-coded (a few ns per call).
	b.mu.Lock()
	defer b.mu.Unlock()
	return b.run(ctx, req)
}

func (b *Backend) run(ctx context.Context, req *core.Request) error {
	if b.stop.Load() != 0 {
		return b.stopped()
	}
	switch req.Kind {
	case core.KindSend:
		return b.send(ctx, req, false)
	case core.KindRecv:
		return b.recv(ctx, req, false)
	}
	b.coll++
	o := op{ctx: ctx, kind: req.Kind, coll: b.coll, p2p: -1}
	d := describe(b.coll, req, false)
	es := 0
	if req.Type != nil {
		es = req.Type.Size
	}
	switch req.Kind {
	case core.KindAllreduce:
		return b.allreduce(&o, d, req, es)
	case core.KindReduce:
		return b.allreduce(&o, d, req, es)
	case core.KindBroadcast:
		return b.broadcast(&o, d, req.Recv, req.Root, es)
	case core.KindAllgather:
		return b.allgather(&o, d, req, es, true)
	case core.KindGather:
		return b.allgather(&o, d, req, es, false)
	case core.KindReduceScatter, core.KindScatter, core.KindAlltoall:
		return b.blocks(&o, d, req, es)
	case core.KindBarrier:
		return b.first(&o, d)
	case core.KindAllgatherv, core.KindGatherv, core.KindScatterv, core.KindAlltoallv, core.KindReduceScatterV:
		return b.vector(&o, d, req, es)
	}
	// core.Check lets no other kind through; a caller that skipped it
	// still takes part in the first round, so that its peers learn.
	if err := b.first(&o, describe(b.coll, req, true)); !isMismatch(err) {
		return err
	}
	return fmt.Errorf("shm: %v: %w: run requests through core.Check (core.Guard does)", req.Kind, core.ErrUnsupported)
}

// Refuse implements core.Backend: req failed core.Check on this rank.
// The rank takes its part in the agreement step with a descriptor marked
// invalid, so that every peer returns a *core.MismatchError with Field
// "argument" naming it at once, and moves no data. req may hold anything:
// the descriptor carries its raw fields.
func (b *Backend) Refuse(ctx context.Context, req *core.Request) error {
	if req == nil {
		req = &core.Request{} // an unknown collective: its peers still learn
	}
	b.mu.Lock()
	defer b.mu.Unlock()
	if b.stop.Load() != 0 {
		return b.stopped()
	}
	var err error
	switch req.Kind {
	case core.KindSend, core.KindRecv:
		if req.Peer < 0 || req.Peer >= b.size || req.Peer == b.rank {
			// No channel to tell: the peer the call meant is unknown.
			return nil
		}
		if req.Kind == core.KindSend {
			err = b.send(ctx, req, true)
		} else {
			err = b.recv(ctx, req, true)
		}
	default:
		b.coll++
		o := op{ctx: ctx, kind: req.Kind, coll: b.coll, p2p: -1}
		err = b.first(&o, describe(b.coll, req, true))
	}
	// The mismatch is what the peers report; this rank reports its own
	// argument error (the Guard returns it).
	if isMismatch(err) {
		return nil
	}
	return err
}

func isMismatch(err error) bool {
	var me *core.MismatchError
	return errors.As(err, &me)
}

// descInvalid marks the descriptor of a refused call.
const descInvalid = 1 << 24

// describe makes this rank's descriptor of req. core.Check has zeroed the
// fields req's kind does not use, so that they cannot differ.
func describe(seq uint64, req *core.Request, invalid bool) desc {
	w := uint64(req.Kind) | uint64(req.DType)<<8 | uint64(req.Op)<<16
	if invalid {
		w |= descInvalid
	}
	return desc{coll: seq, what: w, count: uint64(req.Count), root: uint64(req.Root)}
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
// every peer's descriptor against d before the caller touches any output.
// Every rank sees every descriptor, so if any two ranks disagree every rank
// returns a *core.MismatchError after this same round (they stay in step),
// and all of them name the same field (see disagreement).
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
			if err := b.disagreement(p, d); err != nil {
				return err
			}
		}
	}
	return nil
}

// descField is a part of the descriptor that ranks must agree on.
type descField struct {
	name string
	get  func(desc) uint64
	str  func(uint64) string
}

// descFields in the order a disagreement is reported: the sequence first
// (ranks out of step differ in everything else too), then what the caller
// chose.
var descFields = [...]descField{
	{"seq", func(d desc) uint64 { return d.coll }, func(v uint64) string { return "collective #" + strconv.FormatUint(v, 10) }},
	{"kind", func(d desc) uint64 { return d.what & 0xff }, func(v uint64) string { return core.Kind(v).String() }},
	{"dtype", func(d desc) uint64 { return d.what >> 8 & 0xff }, func(v uint64) string { return core.DType(v).String() }},
	{"op", func(d desc) uint64 { return d.what >> 16 & 0xff }, func(v uint64) string { return core.Op(v).String() }},
	{"count", func(d desc) uint64 { return d.count }, func(v uint64) string { return strconv.FormatInt(int64(v), 10) }},
	{"root", func(d desc) uint64 { return d.root }, func(v uint64) string { return strconv.FormatInt(int64(v), 10) }},
}

// disagreement builds the error of a first round in which descriptors
// differ. Every rank reads all of them, so every rank picks the same
// field: "argument" if a rank refused its call (naming the lowest such
// rank), else the first of descFields in which any two ranks differ. Each
// rank then names the lowest rank whose value differs from its own.
func (b *Backend) disagreement(p int, mine desc) error {
	all := make([]desc, b.size)
	for j := range all {
		if j == b.rank {
			all[j] = mine
		} else {
			all[j] = b.hot[j][p].desc()
		}
	}
	e := &core.MismatchError{Seq: mine.coll, Rank: b.rank}
	if mine.what&descInvalid != 0 {
		e.Field, e.Mine, e.Peer, e.Theirs = "argument", "invalid", b.rank, describeDesc(mine)
		return e
	}
	for j, d := range all {
		if d.what&descInvalid != 0 {
			e.Field, e.Mine, e.Peer, e.Theirs = "argument", "valid", j, describeDesc(d)
			return e
		}
	}
	for _, f := range descFields {
		m := f.get(mine)
		for j, d := range all {
			if v := f.get(d); v != m {
				e.Field, e.Mine, e.Peer, e.Theirs = f.name, f.str(m), j, f.str(v)
				return e
			}
		}
	}
	// Only the zero-copy offsets differ, which need not agree.
	return nil
}

// describeDesc says what a refused call asked for, from its raw fields:
// they may be anything, an unknown kind or dtype included.
func describeDesc(d desc) string {
	return core.Describe(core.Kind(d.what&0xff), core.DType(d.what>>8&0xff), core.Op(d.what>>16&0xff), int64(d.count), int64(d.root))
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

// reduce sets dst to the reduction of srcs, finished: dst is a final
// result (for avg, divided by the ranks once).
func (b *Backend) reduce(k *core.Kernel, dst []byte, srcs [][]byte) {
	k.Reduce(&b.reducer, dst, srcs)
	k.Finish(dst, b.size)
}

// allreduce runs allreduce or reduce (only the root has a recv buffer).
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
func (b *Backend) allreduce(o *op, d desc, req *core.Request, es int) error {
	n := b.size
	bytes := req.Count * es
	send, recv := req.Send, req.Recv // recv: nil on a reduce's other ranks
	if n == 1 {
		if err := b.first(o, d); err != nil {
			return err
		}
		srcs := b.srcs[:1]
		srcs[0] = send
		b.reduce(req.Kernel, recv, srcs)
		return nil
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
// after it, so that a small payload costs no second line transfer after
// the round's number arrives.
const touchMax = 256

func (b *Backend) direct(o *op, d desc, req *core.Request, es int, send, recv []byte) error {
	me := b.rank
	srcs := b.srcs[:b.size]
	anyZC := false
	// One chunk unless the payload outgrows a buffer: a small call pays
	// for no division.
	chunk, nchunks := req.Count, 1
	if len(send) > b.lay.bufferSize {
		chunk = b.lay.bufferSize / es
		nchunks = chunks(req.Count, chunk)
	}
	// A small payload is fetched by the waiters while they spin on the
	// round's number (touch), rather than carried in the hot line itself:
	// a waiter that spins on the very line its peer is writing takes it
	// away between the peer's stores.
	if d.zc == 0 && len(send) <= touchMax && !raceEnabled {
		o.touch = len(send)
	}
	for i := 0; i < nchunks; i++ {
		off := i * chunk
		c := min(chunk, req.Count-off)
		p := b.parity()
		if d.zc == 0 {
			copy(b.slot(me, p), send[off*es:(off+c)*es])
		}
		err := b.firstOr(o, d, i == 0)
		if err != nil {
			o.touch = 0
			return err
		}
		if i == 0 {
			o.touch = 0
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
				srcs[j] = b.input(j, p, off, 0, c, es)
			}
			srcs[me] = send[off*es : (off+c)*es]
			b.reduce(req.Kernel, recv[off*es:(off+c)*es], srcs)
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
		b.reduce(req.Kernel, b.slot(me, q)[lo*es:hi*es], srcs)
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
	send := req.Send
	if len(send) >= b.zcMin {
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
		if req.Send != nil { // scatter: the root alone
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
		case core.KindReduceScatter:
			for j := range srcs {
				srcs[j] = b.slot(j, p)[me*cb : (me+1)*cb]
			}
			b.reduce(req.Kernel, dst, srcs)
		case core.KindScatter:
			copy(dst, b.slot(req.Root, p)[me*cb:(me+1)*cb])
		case core.KindAlltoall:
			for j := 0; j < n; j++ {
				at := (j*count + off) * es
				copy(req.Recv[at:at+cb], b.slot(j, p)[me*cb:(me+1)*cb])
			}
		}
	}
	return nil
}
