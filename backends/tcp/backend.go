package tcp

import (
	"context"
	"errors"
	"fmt"
	"io"
	"log"
	"net"
	"os"
	"sync"
	"sync/atomic"
	"syscall"
	"time"

	"github.com/gocoll/gocoll/core"
	"github.com/gocoll/gocoll/kernel"
)

// Backend runs the runtime's collectives over TCP between the ranks of a
// group. It implements core.Backend and is driven through a core.Guard,
// which checks every request and runs one call at a time: calls to Run and
// Refuse must not overlap. Abort and Close may come from any goroutine.
type Backend struct {
	rank, size int
	cfg        config
	timeout    time.Duration
	peers      []*peer       // by rank; nil at this rank
	rejected   *atomic.Int64 // connections dropped during setup (tests)

	seq     uint64        // collectives started; the next one is seq+1
	dl      time.Time     // the running call's deadline
	budget  time.Duration // and how long it had
	cur     header        // the running call's expected header
	es      int           // the running call's element size (0: barrier)
	kern    *core.Kernel  // the running call's reduction (nil: none)
	red     kernel.Reducer
	scratch []byte
	srcs    [2][]byte // kernel arguments, kept here so that calls do not allocate
	ownJob  []uint64  // ring: per slice (mod n+1), the send of this rank's part; in place, the allgather overwrites it
	slotJob []uint64  // ring: per scratch slot (2n), the send job that last read it
	notes   []endNote // settle: every rank's call, by rank (see agree.go)
	vc      vcall     // the running vector collective's counts (vcoll.go)
	// settling is the collective being settled: the senders skip its data
	// frames still queued (the peers discard them anyway).
	settling atomic.Uint64
	// ticker wakes a call that has waited since the previous tick (see
	// tick); armed while calls run, lastTick is the call it saw last.
	ticker    *time.Timer
	wakeEvery time.Duration
	armed     atomic.Bool
	lastTick  atomic.Uint64
	wakes     atomic.Uint64 // reads a tick interrupted (tests)

	running atomic.Uint64 // seq of the collective running or about to run
	calls   atomic.Uint64 // Run and Refuse calls started
	active  atomic.Uint64 // the running call's number, 0 when idle
	failure atomic.Pointer[failure]

	closed    atomic.Bool
	quit      chan struct{}
	wg        sync.WaitGroup
	closeOnce sync.Once
	logf      func(string, ...any)
	lowat     bool // raise SO_RCVLOWAT for large payloads
	crowded   bool // more ranks on this host than CPUs: spinning reads yield
	spinCall  bool // the call in flight may spin (see Run)
	// queued counts the send jobs the sender goroutines hold: while they
	// have work, reads park instead of spinning on the CPU they need.
	queued atomic.Int64
}

// failure poisons the backend: the collective numbered seq and every later
// call fail with it. The streams between ranks are out of step after a
// failure, so the group must be rebuilt (as after any lost peer).
type failure struct {
	seq    uint64
	local  error      // this rank's error, when it found the failure itself
	remote *abortInfo // else what a peer reported
}

// peer is this rank's end of the connections to one other rank.
type peer struct {
	rank int
	data *net.TCPConn
	ctl  *net.TCPConn

	jobs   chan sendJob  // to the sender goroutine
	notify chan struct{} // the sender finished a job (cap 1)
	posted uint64        // jobs handed to the sender (caller's goroutine only)
	done   atomic.Uint64 // jobs the sender finished
	errMu  sync.Mutex
	sndErr error // the sender's first write error

	rhdr     [hdrSize]byte // receive header buffer (caller's goroutine)
	whdr     [hdrSize]byte // header of an inline write (caller's goroutine)
	iov      [2][]byte     // and its vector
	bufs     net.Buffers
	sendSeq  uint64    // point-to-point messages sent to this peer
	recvSeq  uint64    // and received from it
	deadline time.Time // deadline last set on data
	skip     int       // settle: payload bytes of a rejected frame, unread

	ctlMu   sync.Mutex    // writes on ctl
	bye     atomic.Bool   // the peer closed in good order
	ctlDone chan struct{} // closed when ctlLoop ends
	gone    atomic.Pointer[error]

	raw     syscall.RawConn // data's, for SO_RCVLOWAT
	lowat   int             // the value setLowatFn sets
	lowatFn func(fd uintptr)
	spin    spinState        // small reads spin before they park (spin.go)
	spent   bool             // a read of the frame under way spun in vain: the rest park at once
	stage   []byte           // a small frame read whole, header and payload (stageFrame)
	pend    []byte           // what of stage the frames have not consumed yet; fill takes it first
	peekFn  func(fd uintptr) // peekHeader's, made once like lowatFn
	peekOff int              // where in peekHdr peekFn starts: after the staged bytes
	peekN   int              // bytes peekFn saw
	peekHdr [hdrSize]byte    // the header peekHeader saw (caller's goroutine)

	stallSeq atomic.Uint64 // the collective this peer last reported a timeout in
	stallOn  atomic.Int64  // and the rank it was waiting for

	acked   atomic.Uint64 // the last rendezvous message the peer began receiving (rendezvous.go)
	ackNote chan struct{} // an ack came (cap 1)
}

type sendJob struct {
	h       header
	payload []byte
}

// lowatMin is the smallest payload read with SO_RCVLOWAT raised to its
// size; smaller ones arrive in one or two segments anyway.
const lowatMin = 64 << 10

// setLowat sets the data connection's SO_RCVLOWAT (capped by the kernel at
// half the receive buffer). The closure is made once per peer, so this
// does not allocate.
func (p *peer) setLowat(n int) {
	if p.raw == nil {
		return
	}
	p.lowat = n
	_ = p.raw.Control(p.lowatFn)
}

// inlineMax is the largest frame the calling goroutine writes itself when
// the peer's sender is idle: far below any socket buffer, so the write does
// not wait for the peer to read.
const inlineMax = 32 << 10

// ctlGrace bounds how long a rank whose data connection broke waits for the
// peer's control connection to explain why.
const ctlGrace = 2 * time.Second

// jobQueue bounds the sends one connection holds; pipelined algorithms keep
// their chunks per segment well below it (see algos.go).
const jobQueue = 256

// New connects this rank to the other ranks of g and returns its Backend.
// Every rank of g calls New at about the same time; it returns when this
// rank holds an authenticated connection to every other rank, or fails
// naming the ranks it could not reach when ctx ends or g.Timeout passes.
func New(ctx context.Context, g core.Group, opts ...Option) (*Backend, error) {
	if g.Size < 1 || g.Rank < 0 || g.Rank >= g.Size {
		return nil, fmt.Errorf("tcp: rank %d of %d is not a valid group position", g.Rank, g.Size)
	}
	cfg := defaultConfig()
	if err := cfg.fromEnv(); err != nil {
		return nil, err
	}
	for _, o := range opts {
		if err := o(&cfg); err != nil {
			return nil, err
		}
	}
	timeout := core.Timeout(g.Timeout)
	b := &Backend{
		rank: g.Rank, size: g.Size, cfg: cfg, timeout: timeout,
		peers:   make([]*peer, g.Size),
		ownJob:  make([]uint64, g.Size+1),
		slotJob: make([]uint64, 2*g.Size),
		notes:   make([]endNote, g.Size),
		quit:    make(chan struct{}),
		logf:    log.New(os.Stderr, "gocoll/tcp: ", log.LstdFlags).Printf,
		lowat:   os.Getenv(EnvRcvLowat) != "0",
	}
	b.rejected = new(atomic.Int64)
	b.running.Store(1)
	if g.Size == 1 {
		return b, nil
	}
	if g.Store == nil {
		return nil, errors.New("tcp: the group has no store to exchange addresses through")
	}
	if len(g.Secret) == 0 {
		return nil, errors.New("tcp: the group has no secret; connections between ranks must prove they hold one (set GOCOLL_SECRET or pass a secret to dispatch)")
	}
	deadline := time.Now().Add(timeout)
	if d, ok := ctx.Deadline(); ok && d.Before(deadline) {
		deadline = d
	}
	data, ctl, rejected, err := connect(ctx, g, &cfg, deadline, b.logf)
	if err != nil {
		return nil, err
	}
	b.rejected = rejected
	b.wakeEvery = wakeEvery
	b.ticker = time.AfterFunc(time.Hour, b.tick)
	b.ticker.Stop()
	for j := range g.Size {
		if j == g.Rank {
			continue
		}
		p := &peer{rank: j, data: data[j], ctl: ctl[j], jobs: make(chan sendJob, jobQueue), notify: make(chan struct{}, 1), ctlDone: make(chan struct{}), ackNote: make(chan struct{}, 1)}
		p.initLowat()
		p.initSpin(cfg.spin)
		if cfg.spin > 0 {
			p.stage = make([]byte, hdrSize+stageMax)
		}
		b.peers[j] = p
		b.wg.Add(2)
		go b.sendLoop(p)
		go b.ctlLoop(p)
	}
	b.crowded = crowdedHost(b.peers)
	b.spinCall = true
	return b, nil
}

// Rank implements core.Comm.
func (b *Backend) Rank() int { return b.rank }

// Size implements core.Comm.
func (b *Backend) Size() int { return b.size }

// Name implements core.Backend.
func (b *Backend) Name() string { return "tcp" }

// Close says goodbye to every peer, closes every connection and waits for
// this backend's goroutines to end. It does not wait for peers. A call in
// progress on another goroutine returns core.ErrClosed.
func (b *Backend) Close() error {
	b.closeOnce.Do(func() {
		b.closed.Store(true)
		// A failed backend repeats why it failed before it says goodbye: a
		// peer that reads this rank's end of stream then blames the rank
		// that failed, not this one, even if the failing rank's own word
		// has not reached it yet.
		var buf []byte
		if f := b.failure.Load(); f != nil && f.local != core.ErrClosed {
			a := f.remote
			if a == nil {
				a = b.describe(f)
			}
			payload := a.marshal()
			h := header{typ: frameAbort, seq: f.seq, length: uint32(len(payload))}
			buf = make([]byte, hdrSize, hdrSize+len(payload)+hdrSize)
			h.put(buf)
			buf = append(buf, payload...)
		}
		b.fail(&failure{seq: 0, local: core.ErrClosed}, false)
		if b.ticker != nil {
			b.ticker.Stop()
		}
		bye := header{typ: frameBye}
		buf = append(buf, make([]byte, hdrSize)...)
		bye.put(buf[len(buf)-hdrSize:])
		b.tellPeers(buf)
		close(b.quit)
		for _, p := range b.peers {
			if p != nil {
				p.data.Close()
				p.ctl.Close()
			}
		}
		b.wg.Wait()
	})
	return nil
}

// sendLoop writes the jobs queued for p, header and payload in one vectored
// write, until the backend closes. It allocates nothing per job.
func (b *Backend) sendLoop(p *peer) {
	defer b.wg.Done()
	hbuf := make([]byte, hdrSize)
	iov := make([][]byte, 2)
	var bufs net.Buffers
	for {
		select {
		case j := <-p.jobs:
			if !b.failedNow() && p.err() == nil && !b.skip(&j.h) {
				j.h.put(hbuf)
				iov[0], iov[1] = hbuf, j.payload
				bufs = iov[:2]
				if len(j.payload) == 0 {
					bufs = iov[:1]
				}
				if _, err := bufs.WriteTo(p.data); err != nil {
					p.errMu.Lock()
					if p.sndErr == nil {
						p.sndErr = err
					}
					p.errMu.Unlock()
				}
				iov[1] = nil
			}
			p.done.Add(1)
			b.queued.Add(-1)
			select {
			case p.notify <- struct{}{}:
			default:
			}
		case <-b.quit:
			return
		}
	}
}

func (p *peer) err() error {
	p.errMu.Lock()
	defer p.errMu.Unlock()
	return p.sndErr
}

// ctlLoop reads p's control connection: aborts from p fail this rank's
// collectives, a goodbye marks p as closed in good order.
func (b *Backend) ctlLoop(p *peer) {
	defer b.wg.Done()
	defer close(p.ctlDone)
	var hb [hdrSize]byte
	for {
		if _, err := io.ReadFull(p.ctl, hb[:]); err != nil {
			if !p.bye.Load() && !b.closed.Load() {
				p.gone.Store(&err)
			}
			return
		}
		var h header
		if err := h.get(hb[:]); err != nil || h.length > 1<<20 {
			err = fmt.Errorf("rank %d sent a malformed control frame", p.rank)
			p.gone.Store(&err)
			return
		}
		payload := make([]byte, h.length)
		if _, err := io.ReadFull(p.ctl, payload); err != nil {
			p.gone.Store(&err)
			return
		}
		switch h.typ {
		case frameBye:
			p.bye.Store(true)
		case frameStall:
			p.stallOn.Store(int64(h.root))
			p.stallSeq.Store(h.seq)
		case frameAck:
			p.gotAck(h.seq)
		case frameAbort:
			a := new(abortInfo)
			if err := a.unmarshal(payload); err != nil {
				a = &abortInfo{reason: abortPeer, ranks: []int{p.rank}, msg: "sent a malformed abort"}
			}
			a.seq = h.seq
			b.fail(&failure{seq: h.seq, remote: a}, false)
		}
	}
}

// fail records f unless a failure is already recorded, tells every peer when
// broadcast is set, and interrupts the running collective if f applies to
// it. It returns the failure in force.
func (b *Backend) fail(f *failure, broadcast bool) *failure {
	if !b.failure.CompareAndSwap(nil, f) {
		return b.failure.Load()
	}
	if broadcast {
		a := f.remote
		if a == nil {
			a = b.describe(f)
		}
		payload := a.marshal()
		h := header{typ: frameAbort, seq: f.seq, length: uint32(len(payload))}
		buf := make([]byte, hdrSize+len(payload))
		h.put(buf)
		copy(buf[hdrSize:], payload)
		b.tellPeers(buf)
	}
	if f.seq <= b.running.Load() {
		b.interrupt()
	}
	return f
}

// interrupt makes every blocked read and write on the data connections
// return at once.
func (b *Backend) interrupt() {
	past := time.Unix(1, 0)
	for _, p := range b.peers {
		if p != nil {
			_ = p.data.SetDeadline(past)
		}
	}
}

// describe turns a local failure into what peers are told.
func (b *Backend) describe(f *failure) *abortInfo {
	var pe *core.PeerError
	switch {
	case errors.As(f.local, &pe):
		return &abortInfo{reason: abortPeer, ranks: pe.Ranks, msg: fmt.Sprintf("rank %d: %v", b.rank, pe.Err)}
	default:
		return &abortInfo{reason: abortPeer, ranks: []int{b.rank}, msg: fmt.Sprintf("rank %d abandoned the collective: %v", b.rank, f.local)}
	}
}

// failureError is the error this rank returns for f in the call op.
func (b *Backend) failureError(f *failure, op string) error {
	if f.local != nil {
		return f.local
	}
	return &core.PeerError{Op: op, Ranks: f.remote.ranks, Err: errors.New(f.remote.msg)}
}

// opName names the running collective for errors ("allreduce #12").
func (b *Backend) opName() string {
	if b.cur.kind == 0 {
		return "tcp collective"
	}
	return fmt.Sprintf("%v #%d", b.cur.kind, b.cur.seq)
}

// failedNow reports whether a failure applies to the running collective.
func (b *Backend) failedNow() bool {
	f := b.failure.Load()
	return f != nil && f.seq <= b.running.Load()
}

// check returns the error of a failure in force for the running call.
func (b *Backend) check() error {
	if f := b.failure.Load(); f != nil && f.seq <= b.running.Load() {
		return b.failureError(f, b.opName())
	}
	return nil
}

// use prepares p's data connection for the running call: its deadline.
func (b *Backend) use(p *peer) error {
	if !p.deadline.Equal(b.dl) {
		if err := p.data.SetDeadline(b.dl); err != nil {
			return b.ioError(p, err)
		}
		p.deadline = b.dl
	}
	// After the deadline is set: an interrupt that came before is seen here,
	// one that comes after overrides the deadline.
	return b.check()
}

// ioError turns a read or write error on p's data connection into the
// call's error and fails the backend, telling the other ranks.
func (b *Backend) ioError(p *peer, err error) error {
	if e := b.check(); e != nil {
		return e
	}
	if b.closed.Load() {
		return core.ErrClosed
	}
	if !errors.Is(err, os.ErrDeadlineExceeded) {
		// The connection broke. A peer that fails tells every rank on its
		// control connection before it closes its data connection, but the
		// two race here: give its word a moment to arrive, so that every
		// rank blames the rank that actually failed.
		select {
		case <-p.ctlDone:
		case <-time.After(ctlGrace):
		case <-b.quit:
		}
		if e := b.check(); e != nil {
			return e
		}
	}
	var cause error
	switch {
	case errors.Is(err, os.ErrDeadlineExceeded):
		blame, how := b.blame(p)
		if e := b.check(); e != nil {
			return e // another rank's verdict came first
		}
		e := &core.PeerError{Op: b.opName(), Ranks: blame, Err: fmt.Errorf("%s: %w", how, context.DeadlineExceeded)}
		f := b.fail(&failure{seq: b.running.Load(), local: e}, true)
		return b.failureError(f, b.opName())
	case p.bye.Load():
		cause = fmt.Errorf("rank %d closed its backend: %w", p.rank, err)
	case errors.Is(err, io.EOF), errors.Is(err, io.ErrUnexpectedEOF), errors.Is(err, syscall.ECONNRESET), errors.Is(err, syscall.EPIPE):
		cause = fmt.Errorf("rank %d's connection broke (did it die?): %w", p.rank, err)
	default:
		cause = fmt.Errorf("connection to rank %d: %w", p.rank, err)
	}
	if g := p.gone.Load(); g != nil && !p.bye.Load() {
		cause = fmt.Errorf("%w (its control connection broke too: %v)", cause, *g)
	}
	e := &core.PeerError{Op: b.opName(), Ranks: []int{p.rank}, Err: cause}
	f := b.fail(&failure{seq: b.running.Load(), local: e}, true)
	return b.failureError(f, b.opName())
}

// stallGrace is how long a rank whose wait timed out collects the other
// ranks' timeout reports before it names the ranks that held everyone up:
// a tenth of the call's time limit, within [100 ms, 2 s].
func (b *Backend) stallGrace() time.Duration {
	return min(max(b.budget/10, 100*time.Millisecond), 2*time.Second)
}

// blame finds who held up the running collective after this rank's wait for
// p timed out. Waiting ranks report whom they wait for; following those
// reports from p leads to a rank that reported nothing (it never arrived,
// or hangs): that rank is named, not the innocent ones waiting on it. It
// returns the ranks and an explanation.
func (b *Backend) blame(p *peer) ([]int, string) {
	seq := b.running.Load()
	var h [hdrSize]byte
	(&header{typ: frameStall, seq: seq, root: int32(p.rank)}).put(h[:])
	for _, q := range b.peers {
		if q != nil {
			q.ctlMu.Lock()
			_ = q.ctl.SetWriteDeadline(time.Now().Add(time.Second))
			_, _ = q.ctl.Write(h[:])
			q.ctlMu.Unlock()
		}
	}
	t := time.NewTimer(b.stallGrace())
	select {
	case <-t.C:
	case <-b.quit:
		t.Stop()
	}
	seen := map[int]bool{b.rank: true}
	chain := []int{p.rank}
	for r := p.rank; ; {
		q := b.peers[r]
		if q.stallSeq.Load() != seq {
			if len(chain) == 1 {
				return []int{r}, fmt.Sprintf("waited for rank %d, which neither sent its part nor reported waiting for another rank", r)
			}
			return []int{r}, fmt.Sprintf("the wait led through ranks %v to rank %d, which neither sent its part nor reported waiting for another rank", chain, r)
		}
		next := int(q.stallOn.Load())
		if next < 0 || next >= b.size || seen[next] || next == r {
			// A cycle of ranks all waiting on each other: name them all.
			return chain, fmt.Sprintf("ranks %v all waited on each other", chain)
		}
		seen[r] = true
		chain = append(chain, next)
		r = next
	}
}

// post queues buf for p, cut into frames of at most maxFrame bytes, all with
// header h (whose length is set per frame). It does not wait.
func (b *Backend) post(p *peer, h *header, buf []byte) error {
	if err := b.use(p); err != nil {
		return err
	}
	if len(buf) <= inlineMax && p.done.Load() == p.posted {
		// Small and nothing queued: write it from this goroutine. The
		// kernel's buffers take it at once, and handing it to the sender
		// would cost a goroutine switch on the latency path.
		w := *h
		w.length = uint32(len(buf))
		w.put(p.whdr[:])
		p.iov[0], p.iov[1] = p.whdr[:], buf
		p.bufs = p.iov[:2]
		if len(buf) == 0 {
			p.bufs = p.iov[:1]
		}
		_, err := p.bufs.WriteTo(p.data)
		p.iov[1] = nil
		if err != nil {
			return b.ioError(p, err)
		}
		return nil
	}
	for {
		n := min(len(buf), maxFrame)
		j := sendJob{h: *h, payload: buf[:n]}
		j.h.length = uint32(n)
		if n < len(buf) {
			j.h.flags |= flagMore
		}
		b.queued.Add(1) // before the sender can finish it
		select {
		case p.jobs <- j:
		case <-b.quit:
			b.queued.Add(-1)
			return core.ErrClosed
		}
		p.posted++
		buf = buf[n:]
		if len(buf) == 0 {
			return nil
		}
	}
}

// waitSent waits until p's sender has finished job number upTo.
func (b *Backend) waitSent(p *peer, upTo uint64) error {
	for p.done.Load() < upTo {
		select {
		case <-p.notify:
		case <-b.quit:
			return core.ErrClosed
		}
	}
	if err := p.err(); err != nil {
		return b.ioError(p, err)
	}
	return nil
}

// flush waits for every job posted to p.
func (b *Backend) flush(p *peer) error { return b.waitSent(p, p.posted) }

// send posts buf to p and waits until it is written.
func (b *Backend) send(p *peer, h *header, buf []byte) error {
	if err := b.post(p, h, buf); err != nil {
		return err
	}
	return b.flush(p)
}

// recv reads what p sent with the matching send or post into dst, checking
// every frame's header against h: a frame that does not match ends the call
// in agreement with the peers (see unexpected).
func (b *Backend) recv(p *peer, h *header, dst []byte) error {
	if err := b.use(p); err != nil {
		return err
	}
	scan := b.cur.kind != core.KindSend // a collective looks for disagreement while it waits
	total := len(dst)
	for {
		n := min(len(dst), maxFrame)
		// A new frame: its reads may spin, unless its payload is one
		// that spinning cannot pay for (spinMaxPayload): then not even
		// its header's, which would hold the CPU the sender needs for
		// the payload.
		p.spent = n >= spinMaxPayload
		b.stageFrame(p, n)
		if k, err := b.fill(p, p.rhdr[:], false, scan); err != nil {
			if err == errEvidence {
				return b.settleInHeader(p, k)
			}
			return b.ioError(p, err)
		}
		var got header
		if err := got.get(p.rhdr[:]); err != nil {
			return b.ioError(p, err)
		}
		if !scan && len(dst) == total {
			b.ackIfLarge(p, &got) // a message's first frame, matching or not
		}
		exp := *h
		exp.length = uint32(n)
		if field, _, _ := mismatch(&exp, &got); field != "" {
			return b.unexpected(p, &exp, &got)
		}
		if n > 0 {
			if k, err := b.fill(p, dst[:n], n >= lowatMin && b.lowat, scan); err != nil {
				if err == errEvidence {
					p.skip = n - k
					return b.settle("")
				}
				return b.ioError(p, err)
			}
		}
		dst = dst[n:]
		if len(dst) == 0 {
			return nil
		}
	}
}

// buffer returns scratch space of n bytes, grown only when a call needs more
// than any before.
func (b *Backend) buffer(n int) []byte {
	if cap(b.scratch) < n {
		b.scratch = make([]byte, n)
	}
	return b.scratch[:n]
}

// tellPeers writes buf to every peer's control connection, best effort:
// it runs while failing or closing, when a peer may already be gone, so a
// write gets a second at most and its error is dropped.
func (b *Backend) tellPeers(buf []byte) {
	for _, p := range b.peers {
		if p == nil {
			continue
		}
		p.ctlMu.Lock()
		_ = p.ctl.SetWriteDeadline(time.Now().Add(time.Second))
		_, _ = p.ctl.Write(buf)
		p.ctlMu.Unlock()
	}
}
