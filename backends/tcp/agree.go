package tcp

import (
	"encoding/binary"
	"errors"
	"fmt"
	"io"
	"os"
	"strconv"
	"sync"
	"time"

	"github.com/gocoll/gocoll/core"
)

// Agreement: how the ranks find out that their calls differ, and how they
// end such a call in step. The package documentation describes the design.

// endNote is one rank's call as its end frame states it.
type endNote struct {
	h      header
	chunk  int
	detail string // what the rank saw that it did not expect, if anything
	have   bool
	// vectors are a vector collective's counts vectors (vcoll.go).
	vectors [][]int
}

// maxEndPayload bounds an end frame's payload: the chunk size and a line.
const maxEndPayload = 4 << 10

// skip reports whether the sender should drop queued frame h: a data frame
// of the collective being settled, which its receiver would only discard.
func (b *Backend) skip(h *header) bool {
	s := b.settling.Load()
	return s != 0 && h.seq == s && h.typ != frameEnd && h.kind != core.KindSend
}

// agree is the agreement round of a rooted collective: a dissemination
// barrier whose header-only frames carry the call.
func (b *Backend) agree() error {
	h := b.cur
	h.typ = frameAgree
	n, r := b.size, b.rank
	for k := 1; k < n; k <<= 1 {
		if err := b.post(b.peers[mod(r+k, n)], &h, nil); err != nil {
			return err
		}
		if err := b.recv(b.peers[mod(r-k, n)], &h, nil); err != nil {
			return err
		}
	}
	return b.flushAll()
}

// unexpected handles a frame got from p that does not match exp, the frame
// the running call expects; its header has been read, its payload not.
func (b *Backend) unexpected(p *peer, exp, got *header) error {
	if b.cur.kind == core.KindSend {
		return b.unexpectedMessage(p, exp, got)
	}
	switch {
	case got.typ == frameEnd && got.kind != core.KindSend:
		if err := b.readEnd(p, got); err != nil {
			return b.ioError(p, err)
		}
		return b.settle("")
	case got.typ != frameData && got.typ != frameAgree:
		return b.ioError(p, fmt.Errorf("rank %d sent a frame of type %d on its data connection", p.rank, got.typ))
	}
	p.skip = int(got.length)
	field, mine, theirs := mismatch(exp, got)
	return b.settle(fmt.Sprintf("rank %d expected %s %s and got %s from rank %d", b.rank, field, mine, theirs, p.rank))
}

// unexpectedMessage handles a send's frame that does not match what this
// rank's recv expects: the message is discarded, so that the next one
// lines up, and the disagreement is this rank's error. A frame of a
// collective on the connection means the ranks interleave collectives and
// point-to-point calls differently: the streams cannot be put back in step.
func (b *Backend) unexpectedMessage(p *peer, exp, got *header) error {
	if got.kind != core.KindSend || (got.typ != frameData && got.typ != frameEnd) {
		return b.ioError(p, fmt.Errorf("rank %d sent a %v frame where this rank's recv expects a message from it; ranks must order their collectives and point-to-point calls alike", p.rank, got.kind))
	}
	if err := b.discardMessage(p, got); err != nil {
		return b.ioError(p, err)
	}
	if got.typ == frameEnd && got.flags&flagRefused != 0 {
		return &core.MismatchError{Seq: b.cur.seq, Field: "argument", Rank: b.rank, Mine: "valid", Peer: p.rank, Theirs: got.describe()}
	}
	field, mine, theirs := mismatch(exp, got)
	if field == "frame length" {
		// The lengths follow from count and dtype, which agree here: the
		// sender's message was cut into frames differently.
		field = "count"
	}
	return &core.MismatchError{Seq: b.cur.seq, Field: field, Rank: b.rank, Mine: mine, Peer: p.rank, Theirs: theirs}
}

// discardMessage reads and drops the rest of the message whose first
// header got has been read: its payload and any frames that continue it.
func (b *Backend) discardMessage(p *peer, got *header) error {
	buf := make([]byte, 64<<10)
	for {
		if err := b.discard(p, int(got.length), buf); err != nil {
			return err
		}
		if got.flags&flagMore == 0 {
			return nil
		}
		if _, err := b.fill(p, p.rhdr[:], false, false); err != nil {
			return err
		}
		if err := got.get(p.rhdr[:]); err != nil {
			return err
		}
	}
}

// skipMessage takes part in a recv this rank refused: it discards the
// message p sends for it, so that the next one lines up.
func (b *Backend) skipMessage(p *peer) error {
	if err := b.use(p); err != nil {
		return err
	}
	if _, err := b.fill(p, p.rhdr[:], false, false); err != nil {
		return b.ioError(p, err)
	}
	var got header
	if err := got.get(p.rhdr[:]); err != nil {
		return b.ioError(p, err)
	}
	if got.kind != core.KindSend || (got.typ != frameData && got.typ != frameEnd) {
		return b.ioError(p, fmt.Errorf("rank %d sent a %v frame where this rank's refused recv expects a message from it", p.rank, got.kind))
	}
	b.ackIfLarge(p, &got)
	if err := b.discardMessage(p, &got); err != nil {
		return b.ioError(p, err)
	}
	return nil
}

// discard reads and drops n bytes of p's data connection through buf.
func (b *Backend) discard(p *peer, n int, buf []byte) error {
	for n > 0 {
		k := min(n, len(buf))
		if _, err := b.fill(p, buf[:k], false, false); err != nil {
			return err
		}
		n -= k
	}
	return nil
}

// errEvidence is fill's report that a wait was woken and found frames
// showing that the ranks' calls differ: the call must settle.
var errEvidence = errors.New("tcp: a peer's frame shows that the ranks' calls differ")

// fill reads len(buf) bytes of p's data connection into buf and returns
// how many it read. With lowat it asks the kernel (SO_RCVLOWAT) to wake it
// only once all of it is there, rather than for every segment: fewer
// wake-ups and reads. A read that tick wakes before the call's deadline is
// resumed; with scan, the wake first looks for frames that show the ranks
// disagree (probe), and returns errEvidence if it finds one.
func (b *Backend) fill(p *peer, buf []byte, lowat, scan bool) (int, error) {
	got := 0
	if len(p.pend) > 0 {
		got = copy(buf, p.pend)
		p.pend = p.pend[got:]
	}
	if got < len(buf) && len(buf)-got < spinMaxPayload && b.queued.Load() == 0 {
		got += b.spinRead(p, buf[got:])
	}
	for got < len(buf) {
		if lowat {
			p.setLowat(len(buf) - got) // bytes beyond this payload may never come
		}
		k, err := p.data.Read(buf[got:])
		got += k
		if err == nil || got == len(buf) {
			continue
		}
		if errors.Is(err, os.ErrDeadlineExceeded) && !b.failedNow() && time.Now().Before(b.dl) {
			b.wakes.Add(1)
			b.unwake()
			// After the deadlines are restored: a failure recorded before is
			// seen here, and the interrupt of one recorded after overrides
			// them.
			if !b.failedNow() {
				if scan && b.probe(p) {
					err = errEvidence
				} else {
					continue
				}
			}
		}
		if lowat {
			p.setLowat(1)
		}
		if err == io.EOF && got > 0 {
			err = io.ErrUnexpectedEOF
		}
		return got, err
	}
	if lowat {
		p.setLowat(1)
	}
	return got, nil
}

// wakeEvery is how often tick wakes a call that waits, so that it looks
// for frames showing that the ranks disagree. Ranks whose calls differ may
// run different algorithms, each rank waiting for a frame that its peer,
// following another pattern, never sends, while the frames that would show
// the difference lie unread on other connections; a wake finds them.
var wakeEvery = 20 * time.Millisecond // a variable for tests; New copies it

// arm starts the ticker for the call that starts (b.active is set).
func (b *Backend) arm() {
	if b.ticker != nil && !b.armed.Load() && b.armed.CompareAndSwap(false, true) {
		b.ticker.Reset(b.wakeEvery)
	}
}

// tick wakes the call that was running at the previous tick as well (one
// that has waited at least b.wakeEvery), and ticks on while calls run.
func (b *Backend) tick() {
	if b.closed.Load() {
		return
	}
	c := b.active.Load()
	if c == 0 {
		b.armed.Store(false)
		// A call that started since the load above found armed set and
		// left the ticker alone: tick on for it.
		if b.active.Load() == 0 || !b.armed.CompareAndSwap(false, true) {
			return
		}
	} else if b.lastTick.Swap(c) == c {
		past := time.Unix(1, 0)
		for _, p := range b.peers {
			if p != nil {
				_ = p.data.SetReadDeadline(past)
			}
		}
	}
	b.ticker.Reset(b.wakeEvery)
}

// unwake restores the read deadlines a tick moved.
func (b *Backend) unwake() {
	for _, p := range b.peers {
		if p != nil {
			_ = p.data.SetReadDeadline(b.dl)
		}
	}
}

// probe looks, without taking anything from the streams, at the next frame
// each peer but p (whose frame the caller is inside) has sent this rank. It
// reports whether one of them belongs to the running collective and
// differs from this rank's call, or ends it: the ranks disagree. (A frame
// of a later collective is no evidence: its sender may just be ahead.)
func (b *Backend) probe(p *peer) bool {
	c := &b.cur
	for _, q := range b.peers {
		if q == nil || q == p || !q.peekHeader() {
			continue
		}
		var h header
		if h.get(q.peekHdr[:]) != nil || h.kind == core.KindSend || h.seq != c.seq {
			continue
		}
		if h.typ == frameEnd || h.kind != c.kind || h.dtype != c.dtype || h.op != c.op ||
			h.count != c.count || h.root != c.root || h.algo != c.algo {
			return true
		}
	}
	return false
}

// settleInHeader settles the call after fill found evidence while this
// rank read the header of p's next frame, k bytes of it: the rest of the
// frame is read or left for the drain.
func (b *Backend) settleInHeader(p *peer, k int) error {
	if k > 0 {
		if _, err := b.fill(p, p.rhdr[k:], false, false); err != nil {
			return b.ioError(p, err)
		}
		var got header
		if err := got.get(p.rhdr[:]); err != nil {
			return b.ioError(p, err)
		}
		if got.typ == frameEnd && got.kind != core.KindSend {
			if err := b.readEnd(p, &got); err != nil {
				return b.ioError(p, err)
			}
		} else {
			p.skip = int(got.length)
		}
	}
	return b.settle("")
}

// readEnd reads the payload of p's end frame h into p's note.
func (b *Backend) readEnd(p *peer, h *header) error {
	if h.length < 6 || h.length > uint32(maxEndPayload+16*b.size+16) {
		return fmt.Errorf("rank %d sent a malformed end frame (%d bytes)", p.rank, h.length)
	}
	buf := make([]byte, h.length)
	if _, err := b.fill(p, buf, false, false); err != nil {
		return err
	}
	dl := int(binary.LittleEndian.Uint16(buf[4:]))
	if 6+dl > len(buf) {
		return fmt.Errorf("rank %d sent a malformed end frame (%d bytes, detail of %d)", p.rank, h.length, dl)
	}
	b.notes[p.rank] = endNote{h: *h, chunk: int(binary.LittleEndian.Uint32(buf)), detail: string(buf[6 : 6+dl]), have: true,
		vectors: parseVectors(buf[6+dl:])}
	return nil
}

// settle ends the running collective on this rank after a disagreement
// (detail says what this rank saw) or a refusal (b.cur is marked refused),
// as the package documentation describes. It returns the verdict, a *core.MismatchError,
// or the error of a failure (a peer that died or never came) that fails
// the backend.
func (b *Backend) settle(detail string) error {
	b.settling.Store(b.cur.seq)
	defer b.settling.Store(0)
	defer clear(b.notes)
	b.notes[b.rank] = endNote{h: b.cur, chunk: b.cfg.chunk, detail: detail, have: true}
	if b.vc.shared != nil {
		b.notes[b.rank].vectors = [][]int{b.vc.shared}
	} else if b.vc.send != nil {
		b.notes[b.rank].vectors = [][]int{b.vc.send, b.vc.recv}
	}
	for _, p := range b.peers {
		if p != nil {
			if err := b.use(p); err != nil {
				return err
			}
		}
	}
	// Read every peer at once, so that no peer's write to this rank waits
	// while this rank waits for another peer.
	errs := make([]error, b.size)
	var wg sync.WaitGroup
	for _, p := range b.peers {
		if p != nil && !b.notes[p.rank].have {
			wg.Go(func() { errs[p.rank] = b.drainToEnd(p) })
		}
	}
	if len(detail) > 1024 {
		detail = detail[:1024]
	}
	payload := binary.LittleEndian.AppendUint32(make([]byte, 0, 6+len(detail)), uint32(b.cfg.chunk))
	payload = binary.LittleEndian.AppendUint16(payload, uint16(len(detail)))
	payload = append(payload, detail...)
	payload = b.appendVectors(payload)
	h := b.cur
	h.typ = frameEnd
	var werr error
	for _, p := range b.peers {
		if p != nil {
			if werr = b.post(p, &h, payload); werr != nil {
				break // a failure: the interrupt ends the reads
			}
		}
	}
	wg.Wait()
	if werr == nil {
		werr = b.flushAll()
	}
	if werr != nil {
		return werr
	}
	if err := b.check(); err != nil {
		return err
	}
	var missing []int
	var cause error
	for r, err := range errs {
		if err != nil {
			missing = append(missing, r)
			if cause == nil || errors.Is(cause, os.ErrDeadlineExceeded) {
				cause = err
			}
		}
	}
	if missing != nil {
		if b.closed.Load() {
			return core.ErrClosed
		}
		return &core.PeerError{Op: b.opName() + " (settling a disagreement)", Ranks: missing, Err: cause}
	}
	return b.verdict()
}

// drainToEnd reads p's data connection up to p's end frame for the
// running collective, dropping everything before it.
func (b *Backend) drainToEnd(p *peer) error {
	var hb [hdrSize]byte
	buf := make([]byte, 64<<10)
	n := p.skip
	p.skip = 0
	for {
		if err := b.discard(p, n, buf); err != nil {
			return err
		}
		if _, err := b.fill(p, hb[:], false, false); err != nil {
			return err
		}
		var h header
		if err := h.get(hb[:]); err != nil {
			return err
		}
		if h.typ == frameEnd && h.kind != core.KindSend {
			return b.readEnd(p, &h)
		}
		n = int(h.length)
	}
}

// verdict derives, from every rank's call in b.notes, the error this rank
// returns. Every rank derives it from the same table, so all name the
// same field and culprit:
//   - a rank that refused its request: the lowest such rank;
//   - else the first field, in the order kind, dtype, op, count, root, seq,
//     algorithm, chunk size, on which the ranks differ. The value most
//     ranks passed (on a tie, the lowest rank's) is the reference, and the
//     lowest rank that passed another is the culprit: it names the
//     culprit, and the culprits name the lowest rank with the reference.
func (b *Backend) verdict() error {
	notes := b.notes
	me := &notes[b.rank]
	for r := range notes {
		if notes[r].h.flags&flagRefused != 0 {
			mine := "valid"
			if me.h.flags&flagRefused != 0 {
				mine = "invalid"
			}
			return &core.MismatchError{Seq: b.cur.seq, Field: "argument", Rank: b.rank, Mine: mine, Peer: r, Theirs: notes[r].h.describe()}
		}
	}
	type field struct {
		name string
		key  func(*endNote) uint64
		text func(*endNote) string
	}
	fields := []field{
		{"kind", func(e *endNote) uint64 { return uint64(e.h.kind) }, func(e *endNote) string { return e.h.kind.String() }},
		{"dtype", func(e *endNote) uint64 { return uint64(e.h.dtype) }, func(e *endNote) string { return e.h.dtype.String() }},
		{"op", func(e *endNote) uint64 { return uint64(e.h.op) }, func(e *endNote) string { return opString(e.h.op) }},
		{"count", func(e *endNote) uint64 { return e.h.count }, func(e *endNote) string { return strconv.FormatUint(e.h.count, 10) }},
		{"root", func(e *endNote) uint64 { return uint64(uint32(e.h.root)) }, func(e *endNote) string { return strconv.Itoa(int(e.h.root)) }},
		{"seq", func(e *endNote) uint64 { return e.h.seq }, func(e *endNote) string { return strconv.FormatUint(e.h.seq, 10) }},
		{"algorithm", func(e *endNote) uint64 { return uint64(e.h.algo) }, func(e *endNote) string { return e.h.algo.String() }},
		{"chunk size", func(e *endNote) uint64 { return uint64(e.chunk) }, func(e *endNote) string { return strconv.Itoa(e.chunk) }},
	}
	for _, f := range fields {
		ref, best := 0, 0
		for i := range notes {
			c := 0
			for j := range notes {
				if f.key(&notes[j]) == f.key(&notes[i]) {
					c++
				}
			}
			if c > best {
				ref, best = i, c
			}
		}
		if best == len(notes) {
			continue
		}
		if f.name == "count" {
			// A vector collective's count is its counts' digest.
			if e := b.vverdict(); e != nil {
				return e
			}
		}
		refKey := f.key(&notes[ref])
		peer := ref
		if f.key(me) == refKey {
			for i := range notes {
				if f.key(&notes[i]) != refKey {
					peer = i
					break
				}
			}
		}
		return &core.MismatchError{Seq: b.cur.seq, Field: f.name, Rank: b.rank, Mine: f.text(me), Peer: peer, Theirs: f.text(&notes[peer])}
	}
	// Alltoallv's counts differ by rank: equal calls, unequal counts.
	if e := b.vverdict(); e != nil {
		return e
	}
	// Equal calls that exchanged frames they did not expect: nothing any
	// rank passed explains it, so the backend cannot vouch for the
	// streams.
	what := ""
	for r := range notes {
		if notes[r].detail != "" {
			what = notes[r].detail
			break
		}
	}
	return fmt.Errorf("tcp: %s: the ranks' calls agree but their frames did not (%s)", b.opName(), what)
}
