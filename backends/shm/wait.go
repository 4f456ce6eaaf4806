package shm

import (
	"context"
	"errors"
	"fmt"
	"runtime"
	"sync/atomic"
	"time"
	"unsafe"

	"golang.org/x/sys/unix"

	"github.com/gocoll/gocoll/core"
)

// Waiting: a waiter first spins on the peer's word (a cross-core round trip
// costs a tiny fraction of a futex wake), then registers as a sleeper on the
// peer's line and sleeps in FUTEX_WAIT on the word's low 32 bits. The
// futex is the shared (not private) kind: the word lives in memory mapped by
// several processes. A publisher stores its new value, then wakes only if a
// sleeper is registered; both sides use sequentially consistent atomics, so
// either the publisher sees the sleeper or the sleeper sees the value (and
// FUTEX_WAIT rechecks the value in the kernel). Sleeps are bounded so that
// the sleeper rechecks its context, the deadline and its peers' liveness.

const (
	futexWait = 0 // FUTEX_WAIT, deliberately without FUTEX_PRIVATE_FLAG
	futexWake = 1
	// sleepSlice bounds one futex sleep: how often a blocked rank checks
	// for a dead peer, a cancelled context or a passed deadline.
	sleepSlice = 20 * time.Millisecond
)

var (
	errPeerDied       = errors.New("the process exited")
	errPeerClosed     = errors.New("the rank closed its shm backend")
	errPeerAborted    = errors.New("the rank aborted its communicator")
	errPeerConcurrent = errors.New("the rank aborted its communicator: two goroutines called it at once")
)

func futexSleep(addr *uint32, val uint32, d time.Duration) {
	ts := unix.NsecToTimespec(int64(d))
	unix.Syscall6(unix.SYS_FUTEX, uintptr(unsafe.Pointer(addr)), futexWait, uintptr(val), uintptr(unsafe.Pointer(&ts)), 0, 0)
}

func futexWakeAll(addr *uint32) {
	unix.Syscall6(unix.SYS_FUTEX, uintptr(unsafe.Pointer(addr)), futexWake, uintptr(1<<31-1), 0, 0, 0)
}

// low32 is the futex word of a 64-bit sequence (little-endian: its low half).
func low32(p *uint64) *uint32 { return (*uint32)(unsafe.Pointer(p)) }

// publish stores v in *word and wakes whoever sleeps on it.
func publish(word *uint64, sleepers *uint32, v uint64) {
	atomic.StoreUint64(word, v)
	if atomic.LoadUint32(sleepers) != 0 {
		futexWakeAll(low32(word))
	}
}

// spinOn waits for *word >= target for up to b.spin and reports whether it
// got there: on plain loads while the ranks are on CPUs of their own,
// yielding between loads while a local rank shares this CPU (see cpu.go).
// The clock and the CPUs are read only every 256 loads, every 32 while
// yielding or when ranks outnumber CPUs and sharing is the rule: a peer
// that is a line transfer away is caught without paying for either, and a
// check is rarely under way when its line arrives; read more often, they
// are a large part of a small collective's cost.
//
// The goroutine keeps its thread while it spins. Preempted after 10 ms of
// spinning, an unlocked goroutine is often picked up by another thread,
// and that one may run on the CPU of the peer it waits for: two ranks of
// an np=2 job then share a CPU again and again (see nudge).
func (b *Backend) spinOn(word *uint64, target uint64, touch []byte) bool {
	runtime.LockOSThread()
	defer runtime.UnlockOSThread()
	var start time.Duration
	// When ranks outnumber CPUs sharing is the rule: find out before the
	// first load, not 31 loads on, so that a peer on this CPU gets it at
	// once.
	crowded := b.oversub && b.crowded()
	for i := 1; ; i++ {
		if atomic.LoadUint64(word) >= target {
			return true
		}
		for off := 0; off < len(touch); off += 64 {
			atomic.LoadUint32((*uint32)(unsafe.Pointer(&touch[off])))
		}
		if crowded {
			yield()
		}
		if i&255 == 0 || i&31 == 0 && (crowded || b.oversub) {
			if t := since(); start == 0 {
				start = t
			} else if t-start > b.spin {
				return false
			}
			crowded = b.crowded()
		}
	}
}

// epoch is the base of since.
var epoch = time.Now()

// since reads the monotonic clock alone (one vDSO call; time.Now also reads
// the wall clock).
func since() time.Duration { return time.Since(epoch) }

// yield gives the CPU to another runnable thread. It is a raw system call:
// the Go scheduler is not told, so the goroutine keeps its thread and P
// instead of being handed to another thread (and woken there) when the
// call takes long because another process ran meanwhile.
func yield() { unix.RawSyscall(unix.SYS_SCHED_YIELD, 0, 0, 0) }

// op is the collective a wait belongs to, for errors and deadlines.
type op struct {
	ctx      context.Context
	kind     core.Kind
	coll     uint64
	deadline time.Time // set on first sleep
	p2p      int       // the peer of a send/recv, -1 for collectives
	// touch is how many bytes of their peers' buffers the waiters of the
	// next round load while they spin, so that a small payload arrives
	// with the round (see touchMax).
	touch int
}

func (o *op) name() string {
	if o.p2p >= 0 {
		return fmt.Sprintf("%v with rank %d", o.kind, o.p2p)
	}
	return fmt.Sprintf("%v #%d", o.kind, o.coll)
}

// waitFor returns once *word >= target; peer owns word and the sleepers
// counter beside it.
func (b *Backend) waitFor(o *op, peer int, word *uint64, sleepers *uint32, target uint64) error {
	return b.waitTouch(o, peer, word, sleepers, target, nil)
}

// waitTouch is waitFor that also loads the first word of each cache line of
// touch while it spins (see op.touch).
func (b *Backend) waitTouch(o *op, peer int, word *uint64, sleepers *uint32, target uint64, touch []byte) error {
	if atomic.LoadUint64(word) >= target {
		return nil
	}
	if b.spinOn(word, target, touch) {
		return nil
	}
	atomic.AddUint32(sleepers, 1)
	defer atomic.AddUint32(sleepers, ^uint32(0))
	b.sleepWord.Store(low32(word))
	defer b.sleepWord.Store(nil)
	for {
		// A wait that slept may have been woken by Close or Abort, which
		// end the call even if the peer published meanwhile.
		v := atomic.LoadUint64(word)
		if v >= target && b.stop.Load() == 0 {
			return nil
		}
		if err := b.health(o, peer, word, target); err != nil {
			if b.stop.Load() != 0 {
				// Closed or aborted: Close and Abort mark this
				// rank's control line themselves.
				return err
			}
			// The peer may have published just before it closed or
			// failed: only a wait that cannot complete is an error.
			if atomic.LoadUint64(word) >= target {
				return nil
			}
			return b.fail(err)
		}
		d := sleepSlice
		if rem := time.Until(o.deadline); rem < d {
			d = max(rem, time.Millisecond)
		}
		futexSleep(low32(word), uint32(v), d)
	}
}

// health checks everything that can end a wait early: this backend closing,
// the context, a peer that closed, failed or died, the deadline.
func (b *Backend) health(o *op, peer int, word *uint64, target uint64) error {
	if b.stop.Load() != 0 {
		if c := b.abortCause.Load(); c != nil {
			return fmt.Errorf("shm: %s: aborted on this rank: %w", o.name(), *c)
		}
		return core.ErrClosed
	}
	scope := b.peers
	if o.p2p >= 0 {
		scope = []int{o.p2p}
	}
	// A rank that died while live is the news; one that had failed or
	// closed before it exited has left a better account in its line.
	if dead := b.dead(scope); len(dead) > 0 {
		var live []int
		for _, j := range dead {
			if atomic.LoadUint32(&b.cold[j].state) == stateLive {
				live = append(live, j)
			}
		}
		if len(live) > 0 {
			return &core.PeerError{Op: o.name(), Ranks: live, Err: errPeerDied}
		}
	}
	for _, j := range scope {
		c := b.cold[j]
		// A peer that closed or failed after it completed what this
		// wait needs is no reason to fail yet.
		done := b.progress(j)
		if o.p2p >= 0 {
			done = atomic.LoadUint64(word)
		}
		if done >= target {
			continue
		}
		switch atomic.LoadUint32(&c.state) {
		case stateClosed:
			return &core.PeerError{Op: o.name(), Ranks: []int{j}, Err: errPeerClosed}
		case stateFailed:
			f := int(atomic.LoadUint64(&c.failed)) - 1
			if f < 0 || f >= b.size || f == b.rank {
				f = j
			}
			err := causeErr(atomic.LoadUint64(&c.cause))
			if f != j {
				err = fmt.Errorf("%w (reported by rank %d)", err, j)
			}
			return &core.PeerError{Op: o.name(), Ranks: []int{f}, Err: err}
		}
	}
	if err := o.ctx.Err(); err != nil {
		return &core.PeerError{Op: o.name(), Ranks: b.missing(o, peer, target), Err: err}
	}
	if o.deadline.IsZero() {
		o.deadline = core.Deadline(o.ctx, b.timeout)
	}
	now := time.Now()
	if !now.Before(o.deadline) {
		return &core.PeerError{Op: o.name(), Ranks: b.missing(o, peer, target), Err: context.DeadlineExceeded}
	}
	return nil
}

// Causes a rank records beside its failed state, so that peers that learn
// of the failure from it report the same cause.
const (
	causeOther = iota
	causeDeadline
	causeCanceled
	causeDied
	causeClosed
	causeAborted
	causeConcurrent
)

func causeOf(err error) uint64 {
	switch {
	case errors.Is(err, context.DeadlineExceeded):
		return causeDeadline
	case errors.Is(err, context.Canceled):
		return causeCanceled
	case errors.Is(err, errPeerDied):
		return causeDied
	case errors.Is(err, errPeerClosed):
		return causeClosed
	case errors.Is(err, errPeerAborted):
		return causeAborted
	case errors.Is(err, errPeerConcurrent):
		return causeConcurrent
	}
	return causeOther
}

func causeErr(c uint64) error {
	switch c {
	case causeDeadline:
		return context.DeadlineExceeded
	case causeCanceled:
		return context.Canceled
	case causeDied:
		return errPeerDied
	case causeClosed:
		return errPeerClosed
	case causeAborted:
		return errPeerAborted
	case causeConcurrent:
		return errPeerConcurrent
	}
	return errors.New("it failed")
}

// missing lists the ranks that have not reached target (a collective's
// round) or just peer (send/recv).
func (b *Backend) missing(o *op, peer int, target uint64) []int {
	if o.p2p >= 0 {
		return []int{peer}
	}
	var m []int
	for _, j := range b.peers {
		if b.progress(j) < target {
			m = append(m, j)
		}
	}
	if len(m) == 0 {
		m = []int{peer}
	}
	return m
}

// dead lists the ranks in scope whose process has exited.
func (b *Backend) dead(scope []int) []int {
	var out []int
	if b.pidfds != nil {
		fds := make([]unix.PollFd, 0, len(scope))
		ranks := make([]int, 0, len(scope))
		for _, j := range scope {
			if fd := b.pidfds[j]; fd >= 0 {
				fds = append(fds, unix.PollFd{Fd: int32(fd), Events: unix.POLLIN})
				ranks = append(ranks, j)
			}
		}
		if len(fds) > 0 {
			if n, err := unix.Poll(fds, 0); err == nil && n > 0 {
				for i, f := range fds {
					if f.Revents != 0 {
						out = append(out, ranks[i])
					}
				}
			}
		}
		return out
	}
	for _, j := range scope {
		if p := b.pids[j]; p > 0 && p != b.pids[b.rank] {
			if err := unix.Kill(p, 0); err == unix.ESRCH {
				out = append(out, j)
			}
		}
	}
	return out
}

// fail records a fatal error (the ranks are out of step) in this rank's
// control line, so that peers waiting on this rank learn of it at once and
// name the rank it blames. It returns err.
func (b *Backend) fail(err error) error {
	f := b.rank
	var pe *core.PeerError
	// A cancelled call is this rank leaving, whoever it was waiting for:
	// its peers name it, as tcp's do.
	if errors.As(err, &pe) && len(pe.Ranks) > 0 && !errors.Is(err, context.Canceled) {
		f = pe.Ranks[0]
	}
	b.memMu.Lock()
	defer b.memMu.Unlock()
	b.markFailed(f, causeOf(err))
	return err
}

// markFailed marks this rank's control line failed, blaming rank f, unless
// it is marked already, and wakes its waiters. The caller holds memMu and
// the workspace is mapped.
func (b *Backend) markFailed(f int, cause uint64) {
	me := b.cold[b.rank]
	if atomic.LoadUint32(&me.state) != stateLive {
		return
	}
	atomic.StoreUint64(&me.failed, uint64(f)+1)
	atomic.StoreUint64(&me.cause, cause)
	atomic.StoreUint32(&me.state, stateFailed)
	b.wakeMine()
}

// wakeMine wakes every waiter on any of this rank's words, so that they
// notice a state change.
func (b *Backend) wakeMine() {
	futexWakeAll(low32(&b.hot[b.rank][0].seq))
	futexWakeAll(low32(&b.hot[b.rank][1].seq))
	for _, j := range b.peers {
		futexWakeAll(low32(&b.chanS(b.rank, j).seq))
		futexWakeAll(low32(&b.chanR(j, b.rank).seq))
	}
}
