// Package shm is gocoll's intra-node backend: the ranks of one node run
// every collective through a shared-memory workspace, with a per-rank
// sequence-number state machine. It reduces with the kernels a request
// carries (whatever spec registered its dtype with core), and trusts
// core.Check: drive it through a core.Guard.
//
// # Workspace
//
// Rank 0 creates an anonymous memfd, reserves all of it with fallocate (a
// shortage of memory is an error from New that says how much is needed,
// never a SIGBUS), seals its size and passes it to the other local ranks
// over an abstract unix socket (SCM_RIGHTS). Nothing of a job is ever
// visible in /dev/shm, so a kill -9 at any moment leaves no garbage and no
// stale segment can confuse a later job. (A memfd lives on the kernel's
// internal shmem mount: a small /dev/shm, like Docker's 64 MB default, does
// not limit it; the memory cgroup does, and New checks the headroom.) A
// peer that connects must present a token published in the job's store,
// and the kernel vouches for its uid and pid (SO_PEERCRED), from which each
// rank takes a pidfd of every peer for liveness checks.
//
// # Synchronisation
//
// Every collective is a sequence of rounds. In round k a rank writes its
// data into its buffer k%2, publishes k in its control line, and waits until
// every peer has published k; then it reads its peers' buffers k%2. Since a
// rank publishes k+1 only after it finished reading round k's data, and
// writes buffer k%2 again only in round k+2 (after it saw everyone publish
// k+1), two buffers per rank make back-to-back collectives safe without a
// closing barrier. Waiters spin briefly, then sleep on a shared futex,
// checking their context, a deadline and their peers' liveness (pidfds) so
// that a dead rank is named in a *core.PeerError instead of a hang. A rank
// blocked for long uses well under 1% of a core (it wakes every 20 ms to
// check). How a waiter spins depends on where the ranks run (cpu.go): on
// plain loads while each has a CPU of its own, yielding between loads while
// another local rank shares its CPU; with more ranks than CPUs it spins only
// 5 us before it sleeps. Two ranks that share a CPU while the node has one
// for each are separated: the higher one moves its thread.
//
// Every collective's first round carries a descriptor (sequence number,
// kind, dtype, op, count, root) that each rank compares with its peers'
// before any output changes: a disagreement gives every rank a
// *core.MismatchError naming the same field. A rank whose call failed its
// own check (Refuse) takes part in that round with a descriptor marked
// invalid, so that its peers fail at once naming it. Send and recv compare
// message number, dtype and count the same way (p2p.go).
//
// A rank that fails (a dead or silent peer, a cancelled call, Abort) marks
// its control line failed and wakes its waiters; a peer that waits on it
// reads the mark and fails naming it, instead of waiting out the timeout.
//
// # Algorithms
//
// Everything larger than a data buffer is cut into chunks that pipeline
// through the two buffers. Allreduce and reduce up to the small threshold
// (and at any size for two ranks) are direct: one round per chunk, after
// which every rank reduces all inputs in rank order. Larger ones are split:
// each rank reduces its 1/n slice of every input, then all copy the slices
// out (two rounds per chunk). Other collectives take one round per chunk;
// so do the vector collectives (vcoll.go), whose counts are agreed in their
// first round at no extra cost.
// Buffers from Alloc live in the workspace, and an allreduce or reduce of
// 64 KiB or more reads them in place instead of copying them in.
package shm

import (
	"context"
	"errors"
	"fmt"
	"os"
	"runtime"
	"sync"
	"sync/atomic"
	"time"
	"unsafe"

	"golang.org/x/sys/unix"

	"github.com/gocoll/gocoll/core"
	"github.com/gocoll/gocoll/kernel"
)

// Backend runs collectives among the ranks of one node through shared
// memory. It implements core.Backend: Run and Refuse run one call at a
// time (core.Guard sees to that); Abort and Close may be called from any
// goroutine at any time.
type Backend struct {
	rank, size int
	peers      []int // every rank but this one
	lay        layout
	mem        []byte
	hot        [][2]*hotLine
	cold       []*coldLine
	pids       []int
	pidfds     []int // -1 where none; nil if pidfd_open is unavailable
	timeout    time.Duration
	spin       time.Duration
	oversub    bool
	cpus       unix.CPUSet // the CPUs this rank may use, for nudge
	nudges     int
	lastNudge  time.Duration // since() at the last move

	mu      sync.Mutex     // held by Run and Refuse; Close waits for it
	reducer kernel.Reducer // the kernels' scratch, used under mu

	// stop is checked at the start of every call and by every wait that
	// sleeps: Close and Abort set it, so that a call in flight ends
	// within a sleep slice and later ones at once.
	stop       atomic.Uint32
	abortCause atomic.Pointer[error]
	// memMu guards the mapping against Close unmapping it while Abort
	// (from another goroutine) writes this rank's control line.
	memMu sync.Mutex
	// sleepWord is the futex word the call in flight sleeps on, if any,
	// so that Abort and Close can wake it.
	sleepWord atomic.Pointer[uint32]

	round uint64 // last round this rank published
	coll  uint64 // collectives started

	sent    []uint64 // per destination: chunks published
	recvd   []uint64 // per source: chunks consumed
	msgs    []uint64 // per destination: messages sent
	rmsgs   []uint64 // per source: messages received
	brkSeen []uint64 // per destination: the last break its receiver made that this rank took up

	srcs [][]byte // scratch list of reduce inputs
	voff []int    // scratch: a vector collective's packed block offsets
	// vcb is the last vector collective's elements per block per round,
	// for its element size and blocks per buffer.
	vcb     struct{ es, blocks, cb int }
	vstride []int    // per sender: its blocks' stride in its buffer (vcoll.go)
	zc      []uint64 // peers' heap offsets (+1) of the current collective's input

	heap  heapAlloc
	zcMin int // smallest input read in place from the heap (tests lower it)
}

const (
	stopClosing = 1 << iota
	stopAborted
)

var _ core.Backend = (*Backend)(nil)

// New builds the shared-memory backend for the ranks of one node. g.Rank
// and g.Size are node-local; every local rank must call New. g.Store (a
// namespaced store) carries rank 0's socket address, g.JobID names the
// workspace and g.Timeout (core.Timeout: 0 is core.DefaultTimeout) bounds
// every wait whose context has no earlier deadline.
func New(ctx context.Context, g core.Group, opts ...Option) (*Backend, error) {
	if g.Size < 1 || g.Rank < 0 || g.Rank >= g.Size {
		return nil, fmt.Errorf("shm: rank %d of %d is not a valid position in the group", g.Rank, g.Size)
	}
	if g.Size > 1 && g.Store == nil {
		return nil, errors.New("shm: the group has no store to meet through")
	}
	cfg := defaultConfig()
	for _, o := range opts {
		if err := o(&cfg); err != nil {
			return nil, err
		}
	}
	timeout := core.Timeout(g.Timeout)
	sctx := ctx
	if _, ok := ctx.Deadline(); !ok {
		var cancel context.CancelFunc
		sctx, cancel = context.WithTimeout(ctx, timeout)
		defer cancel()
	}
	var seg *segment
	var lay layout
	var err error
	if g.Rank == 0 {
		if lay, err = newLayout(g.Size, cfg); err != nil {
			return nil, err
		}
		seg, err = setupRoot(sctx, g, lay)
	} else {
		seg, err = setupPeer(sctx, g)
		if err == nil {
			h := (*header)(unsafe.Pointer(&seg.mem[0]))
			if lay, err = layoutFromHeader(h, g.Size, len(seg.mem)); err != nil {
				unix.Munmap(seg.mem)
			}
		}
	}
	if err != nil {
		return nil, err
	}
	b := &Backend{
		rank: g.Rank, size: g.Size, lay: lay, mem: seg.mem, pids: seg.pids,
		timeout: timeout,
		sent:    make([]uint64, g.Size), recvd: make([]uint64, g.Size),
		msgs: make([]uint64, g.Size), rmsgs: make([]uint64, g.Size),
		brkSeen: make([]uint64, g.Size),
		srcs:    make([][]byte, g.Size), zc: make([]uint64, g.Size),
	}
	for j := 0; j < g.Size; j++ {
		b.hot = append(b.hot, [2]*hotLine{
			(*hotLine)(unsafe.Pointer(&b.mem[lay.hot(j, 0)])),
			(*hotLine)(unsafe.Pointer(&b.mem[lay.hot(j, 1)])),
		})
		b.cold = append(b.cold, (*coldLine)(unsafe.Pointer(&b.mem[lay.cold(j)])))
		if j != g.Rank {
			b.peers = append(b.peers, j)
		}
	}
	b.oversub = g.Size > runtime.NumCPU()
	if unix.SchedGetaffinity(0, &b.cpus) != nil {
		b.cpus = unix.CPUSet{}
	}
	b.spin = DefaultSpin
	if b.oversub {
		b.spin = DefaultOversubscribedSpin
	}
	if cfg.spinSet {
		b.spin = cfg.spin
	}
	b.openPidfds()
	b.heap.init(lay.heapSize)
	b.zcMin = zeroCopyMin
	return b, nil
}

// openPidfds takes a pidfd for every peer process, so that liveness checks
// cannot be fooled by pid reuse. Peers in this same process (goroutine
// ranks in tests) get none.
func (b *Backend) openPidfds() {
	b.pidfds = make([]int, b.size)
	me := os.Getpid()
	for j := range b.pidfds {
		b.pidfds[j] = -1
		if j == b.rank || b.pids[j] <= 0 || b.pids[j] == me {
			continue
		}
		fd, err := unix.PidfdOpen(b.pids[j], 0)
		if err == unix.ENOSYS || err == unix.EPERM {
			b.closePidfds()
			b.pidfds = nil // fall back to kill(pid, 0)
			return
		}
		if err == nil {
			unix.CloseOnExec(fd)
			b.pidfds[j] = fd
		}
		// ESRCH: it is already gone; the kill check below would say so,
		// and the first wait on it will time out naming it.
	}
}

func (b *Backend) closePidfds() {
	for _, fd := range b.pidfds {
		if fd >= 0 {
			unix.Close(fd)
		}
	}
}

// Rank implements core.Comm.
func (b *Backend) Rank() int { return b.rank }

// Size implements core.Comm.
func (b *Backend) Size() int { return b.size }

// Name implements core.Backend.
func (b *Backend) Name() string { return "shm" }

// WorkspaceBytes reports the size of the shared workspace.
func (b *Backend) WorkspaceBytes() int { return b.lay.total }

// BufferSize reports the size of each of a rank's two data buffers, the
// chunk size of large collectives.
func (b *Backend) BufferSize() int { return b.lay.bufferSize }

// Close releases the workspace. It does not wait for peers: a peer blocked
// on this rank gets a *core.PeerError at once. A call in progress in another
// goroutine returns core.ErrClosed within a few milliseconds.
func (b *Backend) Close() error {
	b.stop.Or(stopClosing)
	b.wakeCall()
	b.mu.Lock()
	defer b.mu.Unlock()
	b.memMu.Lock()
	defer b.memMu.Unlock()
	if b.mem == nil {
		return nil
	}
	me := b.cold[b.rank]
	if atomic.LoadUint32(&me.state) == stateLive {
		atomic.StoreUint32(&me.state, stateClosed)
	}
	b.wakeMine()
	b.closePidfds()
	b.hot, b.cold = nil, nil
	err := unix.Munmap(b.mem)
	b.mem = nil
	if err != nil {
		return fmt.Errorf("shm: unmapping the workspace: %w", err)
	}
	return nil
}

// Abort implements core.Backend: the call in flight on this rank returns
// an error wrapping cause within a sleep slice, every later call at once,
// and the peers' calls that wait on this rank (in flight or later) fail
// naming it: the rank marks its control line failed and wakes its waiters.
// It may be called from any goroutine, concurrently with Run.
func (b *Backend) Abort(cause error) {
	if cause == nil {
		cause = errors.New("shm: aborted")
	}
	b.abortCause.CompareAndSwap(nil, &cause)
	b.stop.Or(stopAborted)
	b.memMu.Lock()
	defer b.memMu.Unlock()
	if b.mem == nil {
		return
	}
	code := uint64(causeAborted)
	if errors.Is(cause, core.ErrConcurrentUse) {
		code = causeConcurrent
	}
	b.markFailed(b.rank, code)
	if w := b.sleepWord.Load(); w != nil {
		futexWakeAll(w)
	}
}

// stopped is the error of a call that starts after Close or Abort.
func (b *Backend) stopped() error {
	if c := b.abortCause.Load(); c != nil {
		return fmt.Errorf("shm: this rank's communicator was aborted; build a new one: %w", *c)
	}
	return core.ErrClosed
}

// wakeCall wakes the call in flight if it sleeps, so that it sees stop.
func (b *Backend) wakeCall() {
	b.memMu.Lock()
	defer b.memMu.Unlock()
	if w := b.sleepWord.Load(); w != nil && b.mem != nil {
		futexWakeAll(w)
	}
}

func (b *Backend) chanS(s, d int) *chanLine {
	return (*chanLine)(unsafe.Pointer(&b.mem[b.lay.chanSend(s, d)]))
}

func (b *Backend) chanR(s, d int) *chanLine {
	return (*chanLine)(unsafe.Pointer(&b.mem[b.lay.chanRecv(s, d)]))
}

// progress is the last round rank j published.
func (b *Backend) progress(j int) uint64 {
	return max(atomic.LoadUint64(&b.hot[j][0].seq), atomic.LoadUint64(&b.hot[j][1].seq))
}

// slot is rank r's data buffer p.
func (b *Backend) slot(r, p int) []byte {
	o := b.lay.slot(r, p)
	return b.mem[o : o+b.lay.bufferSize : o+b.lay.bufferSize]
}

func (b *Backend) p2pBuf(s, d, h int) []byte {
	o := b.lay.p2p(s, d, h)
	return b.mem[o : o+b.lay.p2pSize : o+b.lay.p2pSize]
}
