package tcp

import (
	"errors"
	"syscall"
	"time"
)

// spinState is a peer's spinning reader: the closure RawConn.Read calls is
// made once, so that a spin does not allocate.
type spinState struct {
	budget time.Duration // how long a read may spin
	fails  int           // spins in a row that timed out
	skip   int           // frames left whose reads park without spinning
	buf    []byte        // where the closure reads to
	n      int           // what it read
	err    error         // and its error
	fn     func(fd uintptr) bool
}

// initSpin prepares spinRead for p; max is the longest spin (0: never).
func (p *peer) initSpin(max time.Duration) {
	if p.raw == nil || max <= 0 {
		return
	}
	s := &p.spin
	s.budget = max
	s.fn = func(fd uintptr) bool {
		// The descriptor is non-blocking (Go made it so): a read of an
		// empty socket fails with EAGAIN at once.
		s.n, s.err = syscall.Read(int(fd), s.buf)
		return true // never wait in the poller: the caller decides
	}
}

// spinRead reads into buf from p's data connection without parking, for up
// to the peer's spin budget, and returns how many bytes it read: all of
// buf, or fewer when the budget ran out or the connection has news (an
// error, the end of the stream, a deadline or an interrupt), which the
// caller's blocking read then reports.
func (b *Backend) spinRead(p *peer, buf []byte) int {
	s := &p.spin
	if s.fn == nil || p.spent || !b.spinCall {
		return 0
	}
	if s.skip > 0 {
		s.skip--
		p.spent = true
		return 0
	}
	got := 0
	var start time.Duration
	timedOut := false
	for {
		s.buf, s.n, s.err = buf[got:], 0, nil
		// RawConn.Read refuses a connection whose deadline passed (an
		// interrupt, a tick, the call's deadline) or that is closed.
		if err := p.raw.Read(s.fn); err != nil {
			break
		}
		if s.n > 0 {
			got += s.n
			if got == len(buf) {
				break
			}
			continue
		}
		if !errors.Is(s.err, syscall.EAGAIN) && !errors.Is(s.err, syscall.EINTR) {
			break // the end of the stream or an error: the blocking read says which
		}
		// The first poll is free of clock reads: most frames of a call
		// whose ranks arrive together are there already or a moment on.
		t := since()
		if start == 0 {
			start = t
		} else if t-start > s.budget {
			timedOut = true
			break
		}
		if b.crowded {
			yield()
		}
	}
	s.buf = nil
	switch {
	case timedOut:
		// Spinning did not pay twice in a row: park for the next frames,
		// twice as many after each further miss, then try again.
		p.spent = true
		s.fails++
		if s.fails >= 2 {
			s.skip = 1 << min(s.fails-1, maxSkipShift)
		}
	case start != 0 && got == len(buf):
		s.fails = 0 // a wait that spinning covered
	}
	return got
}

// yield gives the CPU to another runnable thread. It is a raw system call:
// the Go scheduler is not told, so the goroutine keeps its thread.
func yield() { syscall.RawSyscall(syscall.SYS_SCHED_YIELD, 0, 0, 0) }
