// Package conform checks a communicator against the specs it was built
// with: it runs every case the core registry holds (each collective x
// registered dtype x op, see Cases) at several sizes, compares each rank's
// output bit for bit with a reference computed from the collective's
// shape, and checks that all ranks agree. It is the one conformance
// reference of gocoll: every backend's suite and the cross-backend tests
// run it, and a downstream module runs it on its own dtypes.
//
// Every rank of a job calls Run with the same Options and its own
// communicator (any backend, or a dispatch communicator):
//
//	if err := conform.Run(ctx, comm, conform.Options{Bytes: []int{ws, ws * 7 / 2}}); err != nil {
//		return err // names the case, rank, element, got and want
//	}
//
// Inputs are a pure function of (pass, case, size, rank, element), so each
// rank recomputes any other rank's input instead of exchanging it, and
// the reference needs no communication. The first pass draws values for
// which every op is exact in any order (small integers; products of mostly
// 1s), so each output has one right answer whatever order a backend
// reduces in; a second pass draws random bits (see passRandom). Reductions
// in the reference go through the registered pure-Go kernels; the runner
// never switches on a collective's name or a dtype's id, only on shapes,
// classes and float layouts.
package conform

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"time"

	"github.com/gocoll/gocoll/core"
)

// Case is one combination Run checks: a collective, an element type and,
// for collectives that reduce, an op (0 otherwise). Collectives that move
// no data have one case with DType 0.
type Case struct {
	Kind  core.Kind
	DType core.DType
	Op    core.Op
}

// Cases lists every combination the registry allows: each runtime
// collective with each registered dtype and, where it reduces, each op
// that dtype has. Import the generated packages whose dtypes to check
// before calling it.
func Cases() []Case {
	var cs []Case
	for _, k := range core.Kinds() {
		sh := k.Shape()
		if sh.Send == core.None && sh.Recv == core.None {
			cs = append(cs, Case{Kind: k})
			continue
		}
		for _, t := range core.Types() {
			if !sh.Op {
				cs = append(cs, Case{Kind: k, DType: t.ID})
				continue
			}
			for _, o := range t.Ops() {
				cs = append(cs, Case{Kind: k, DType: t.ID, Op: o.ID})
			}
		}
	}
	return cs
}

// DefaultSizes are the per-rank block sizes, in elements, Run uses when
// Options.Sizes and Options.Bytes are both empty: empty, one element, odd,
// and larger than a page for every dtype.
var DefaultSizes = []int{0, 1, 7, 1001, 4099}

// Options selects what Run checks. The zero value runs every case at
// DefaultSizes, in and out of place, in both passes.
type Options struct {
	// Sizes are per-rank block sizes in elements (the Request's Count).
	Sizes []int
	// Bytes are per-rank block sizes in bytes, turned into a count per
	// dtype (rounded down): e.g. a backend's workspace size and 3.5x it.
	Bytes []int
	// Cases replaces Cases() (e.g. a subset for a quick test).
	Cases []Case
	// Filter, when set, skips the cases for which it returns false.
	Filter func(Case) bool
	// NoInPlace skips the in-place variant (the same slice as send and
	// recv, where the spec's sizes allow it).
	NoInPlace bool
	// NoRandom skips the random-bits pass.
	NoRandom bool
	// RandomSizes, when set, are the sizes (elements) of the random-bits
	// pass instead of Sizes and Bytes: large sizes add little there (the
	// exact pass checks the large paths) and cost a lot.
	RandomSizes []int
	// CaseTimeout bounds each collective when ctx has no earlier deadline.
	// Zero: no bound beyond ctx.
	CaseTimeout time.Duration
	// Logf, when set, receives one line per size and pass (progress).
	Logf func(format string, args ...any)
	// MaxErrors caps the mismatches reported (default 10).
	MaxErrors int
}

// Run checks comm against every selected case and returns nil or an error
// that lists the first mismatches (case, rank, element, got, want). Every
// rank must call Run with equal Options. A collective that returns an error
// stops the run at once (the communicator may be unusable); wrong data does
// not: the ranks finish all cases, so that they stay in step, and then
// exchange their verdicts, so that every rank fails when any rank saw a
// mismatch or ranks disagree bit for bit.
func Run(ctx context.Context, comm core.Comm, opts Options) error {
	sh := shapes()
	cases := opts.Cases
	if cases == nil {
		cases = Cases()
	}
	if opts.Filter != nil {
		var kept []Case
		for _, c := range cases {
			if opts.Filter(c) {
				kept = append(kept, c)
			}
		}
		cases = kept
	}
	for _, c := range cases {
		if _, ok := sh[c.Kind]; !ok {
			return fmt.Errorf("conform: case %v: the runtime has no such collective", c.Kind)
		}
		if len(sh[c.Kind].bufs) == 0 {
			continue // moves no data: DType is 0
		}
		if _, err := layoutOf(c.DType); err != nil {
			return err
		}
	}
	if opts.MaxErrors <= 0 {
		opts.MaxErrors = 10
	}
	r := &runner{comm: comm, rank: comm.Rank(), size: comm.Size(), shapes: sh, opts: &opts}
	r.sendKind, r.recvKind = peerKinds(sh)

	passes := []pass{passExact}
	if !opts.NoRandom {
		passes = append(passes, passRandom)
	}
	for _, p := range passes {
		sizes := sizeList(opts)
		if p == passRandom && opts.RandomSizes != nil {
			sizes = sizeList(Options{Sizes: opts.RandomSizes})
		}
		for si, sz := range sizes {
			start := time.Now()
			for ci, c := range cases {
				count := sz.count(c.DType)
				variants := 1
				if !opts.NoInPlace && sh[c.Kind].inPlaceable() || sh[c.Kind].vector {
					variants = 2 // a vector collective's: packed and displaced blocks
				}
				for v := range variants {
					cr := caseRun{c: c, idx: ci, sizeIdx: si, count: count, inPlace: v == 1, pass: p}
					if err := r.one(ctx, &cr); err != nil {
						return err
					}
				}
			}
			if opts.Logf != nil {
				opts.Logf("conform: rank %d: pass %v, size %v: %d cases in %v", r.rank, p, sz, len(cases), time.Since(start).Round(time.Millisecond))
			}
		}
	}
	if err := r.agree(ctx); err != nil {
		return err
	}
	if len(r.errs) > 0 {
		return fmt.Errorf("conform: rank %d of %d: %w", r.rank, r.size, errors.Join(r.errs...))
	}
	return nil
}

// size is one entry of Sizes or Bytes.
type size struct {
	n     int
	bytes bool
}

func (s size) count(dt core.DType) int {
	if dt.Size() == 0 {
		return 0 // a collective that moves no data
	}
	if s.bytes {
		return s.n / dt.Size()
	}
	return s.n
}

func (s size) String() string {
	if s.bytes {
		return fmt.Sprintf("%d bytes", s.n)
	}
	return fmt.Sprintf("%d elements", s.n)
}

func sizeList(o Options) []size {
	var l []size
	for _, n := range o.Sizes {
		l = append(l, size{n, false})
	}
	for _, n := range o.Bytes {
		l = append(l, size{n, true})
	}
	if l == nil {
		for _, n := range DefaultSizes {
			l = append(l, size{n, false})
		}
	}
	return l
}

// peerKinds finds the point-to-point pair by shape: the peer collective
// whose buffer is sent and the one whose buffer receives.
func peerKinds(sh map[core.Kind]shape) (send, recv core.Kind) {
	for k, s := range sh {
		if !s.peer || len(s.bufs) != 1 {
			continue
		}
		switch s.bufs[0].role {
		case "send":
			send = k
		case "recv":
			recv = k
		}
	}
	return send, recv
}

type runner struct {
	comm               core.Comm
	rank, size         int
	shapes             map[core.Kind]shape
	opts               *Options
	sendKind, recvKind core.Kind
	runs               []runRecord // every case run's output, for the agreement check
	errs               []error
}

// runRecord is what the ranks compare after a pass.
type runRecord struct {
	desc string
	same bool   // every rank's output must be identical
	hash uint64 // of this rank's output; 0 without one
}

// caseRun is one case at one size, in or out of place.
type caseRun struct {
	c       Case
	idx     int
	sizeIdx int
	count   int
	inPlace bool
	pass    pass
	root    int
	peer    int
}

func (cr *caseRun) String() string {
	s := cr.c.Kind.String()
	if cr.c.DType != 0 {
		s += " " + cr.c.DType.String()
	}
	if cr.c.Op != 0 {
		s += " " + cr.c.Op.String()
	}
	s += fmt.Sprintf(" count=%d", cr.count)
	return s
}

func (r *runner) fail(cr *caseRun, format string, args ...any) {
	if len(r.errs) == r.opts.MaxErrors {
		r.errs = append(r.errs, errors.New("(further mismatches not shown)"))
	}
	if len(r.errs) > r.opts.MaxErrors {
		return
	}
	r.errs = append(r.errs, fmt.Errorf("%s (%s): %s", cr, r.detail(cr), fmt.Sprintf(format, args...)))
}

func (r *runner) detail(cr *caseRun) string {
	s := r.shapes[cr.c.Kind]
	d := fmt.Sprintf("%v pass, ", cr.pass)
	if s.root {
		d += fmt.Sprintf("root %d, ", cr.root)
	}
	if s.peer {
		d += fmt.Sprintf("peer %d, ", cr.peer)
	}
	if s.vector {
		d += vpatterns[cr.vpattern()] + ", "
		if cr.inPlace {
			return d + "displaced blocks"
		}
		return d + "packed blocks"
	}
	if cr.inPlace {
		return d + "in place"
	}
	return d + "out of place"
}

// guard is the number of bytes past each output buffer that must stay
// untouched, and poison the byte every output starts as: an element a
// backend forgets to write is caught unless its right value is all 0xA5.
const (
	guard  = 64
	poison = 0xA5
)

func (r *runner) one(ctx context.Context, cr *caseRun) error {
	s := r.shapes[cr.c.Kind]
	if s.peer {
		return r.peerCase(ctx, cr)
	}
	if s.vector {
		return r.vectorCase(ctx, cr)
	}
	// Vary the root over cases and sizes so that every rank gets to be it.
	cr.root = (cr.idx + cr.sizeIdx) % r.size
	g := r.gen(cr)
	elem := cr.c.DType.Size()
	req := &core.Request{Kind: cr.c.Kind, DType: cr.c.DType, Op: cr.c.Op, Count: cr.count, Root: cr.root}

	var in, out []byte // this rank's input and output buffers, when it has them
	var inCopy []byte  // the input as filled, to check that send is left alone
	present := func(b bufShape) bool { return !b.onRoot || r.rank == cr.root }
	n := func(b bufShape) int {
		if b.perRank {
			return cr.count * r.size * elem
		}
		return cr.count * elem
	}
	if i := s.input(); i >= 0 && present(s.bufs[i]) {
		in = newBuf(n(s.bufs[i]))
		g.fill(in, r.seed(cr, r.rank), 0)
	}
	if o := s.output(); o >= 0 && present(s.bufs[o]) {
		switch {
		case s.bufs[o].role == "inout":
			out = in
		case cr.inPlace && in != nil:
			out = in
		default:
			out = newBuf(n(s.bufs[o]))
			for i := range out {
				out[i] = poison
			}
		}
	}
	if in != nil && (out == nil || !aliases(in, out)) {
		inCopy = bytes.Clone(in)
	}
	for _, b := range s.bufs {
		if !present(b) {
			continue
		}
		switch b.role {
		case "send":
			req.Send = in
		case "recv":
			req.Recv = out
		case "inout":
			req.Send, req.Recv = in, in
		}
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
		// Without a reference (rounded, order-dependent sums), the
		// agreement check after the pass is what remains.
		if checkable(cr.c.DType, cr.c.Op, cr.pass) {
			r.check(cr, s, g, out)
		}
		rec.hash = hash(out)
	}
	r.runs = append(r.runs, rec)
	return nil
}

// peerCase runs a point-to-point case as a ring: each rank sends to rank+1
// and receives from rank-1; even ranks send first and odd ranks receive
// first, so that blocking sends cannot deadlock.
func (r *runner) peerCase(ctx context.Context, cr *caseRun) error {
	if r.size < 2 {
		return nil
	}
	g := r.gen(cr)
	elem := cr.c.DType.Size()
	next, prev := (r.rank+1)%r.size, (r.rank+r.size-1)%r.size
	send := newBuf(cr.count * elem)
	g.fill(send, r.seed(cr, r.rank), 0)
	sendCopy := bytes.Clone(send)
	recv := newBuf(cr.count * elem)
	for i := range recv {
		recv[i] = poison
	}
	steps := []*core.Request{
		{Kind: r.sendKind, DType: cr.c.DType, Count: cr.count, Peer: next, Send: send},
		{Kind: r.recvKind, DType: cr.c.DType, Count: cr.count, Peer: prev, Recv: recv},
	}
	if r.rank%2 == 1 {
		steps[0], steps[1] = steps[1], steps[0]
	}
	for _, req := range steps {
		cr.peer = req.Peer
		if err := r.do(ctx, req); err != nil {
			return fmt.Errorf("conform: rank %d: %s (%s, %v to/from rank %d): %w", r.rank, cr, r.detail(cr), req.Kind, req.Peer, err)
		}
	}
	cr.peer = prev
	if !bytes.Equal(send, sendCopy) {
		r.fail(cr, "the send buffer changed")
	}
	r.checkGuard(cr, recv)
	want := newBuf(len(recv))
	g.fill(want, r.seed(cr, prev), 0)
	r.compare(cr, recv, want, 0)
	r.runs = append(r.runs, runRecord{desc: cr.String(), hash: hash(recv)})
	return nil
}

func (r *runner) do(ctx context.Context, req *core.Request) error {
	if r.opts.CaseTimeout > 0 {
		var cancel context.CancelFunc
		ctx, cancel = context.WithTimeout(ctx, r.opts.CaseTimeout)
		defer cancel()
	}
	return r.comm.Do(ctx, req)
}

func (r *runner) gen(cr *caseRun) *gen { return newGen(cr.c.DType, cr.c.Op, cr.pass, r.size) }

func (r *runner) seed(cr *caseRun, rank int) uint64 {
	v := 0
	if cr.inPlace {
		v = 1
	}
	return seedFor(cr.pass, cr.idx, cr.sizeIdx, v, rank)
}

// newBuf returns a slice of n bytes whose capacity runs guard bytes of
// poison further, so that checkGuard can see a write past the end.
func newBuf(n int) []byte {
	b := make([]byte, n+guard)
	for i := n; i < len(b); i++ {
		b[i] = poison
	}
	return b[:n]
}

// aliases reports whether a and b start at the same byte (in place).
func aliases(a, b []byte) bool { return &a[:1][0] == &b[:1][0] }

func (r *runner) checkGuard(cr *caseRun, b []byte) {
	g := b[len(b):cap(b)]
	for i, v := range g {
		if v != poison {
			r.fail(cr, "wrote %#02x %d bytes past the end of the %d-byte output", v, i, len(b))
			return
		}
	}
}

func firstDiff(a, b []byte) int {
	for i := range a {
		if a[i] != b[i] {
			return i
		}
	}
	return -1
}
