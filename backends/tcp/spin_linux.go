package tcp

import (
	"errors"
	"syscall"
	"time"
)

// spinState is a peer's spinning reader: the closure RawConn.Read calls is
// made once, so that a spin does not allocate.
type spinState struct {
	budget time.Duration // how long the next read may spin (adapts)
	since  time.Duration // when the last spin that timed out began
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
	if s.fn == nil || p.spent {
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
		if b.crowded {
			yield()
		}
		// The first poll is free of clock reads: most frames of a call
		// whose ranks arrive together are there already or a moment on.
		if t := since(); start == 0 {
			start = t
		} else if t-start > s.budget {
			timedOut = true
			break
		}
	}
	s.buf = nil
	switch {
	case timedOut:
		p.spent, s.since = true, start // parked reads end the wait (waited)
	case start != 0 && got == len(buf):
		s.budget = b.cfg.spin // a wait that spinning covered
	}
	return got
}

// waited tells p's spin budget how long the wait of a read that spun in
// vain and then parked took in all: a peer that kept this rank waiting
// past longWait is late by habit, for now, and the next reads spin only
// a poll or two; a shorter wait restores the full spin.
func (b *Backend) waited(p *peer) {
	s := &p.spin
	if s.fn == nil {
		return
	}
	if since()-s.since > longWait {
		s.budget = spinFloor
	} else {
		s.budget = b.cfg.spin
	}
}

// yield gives the CPU to another runnable thread. It is a raw system call:
// the Go scheduler is not told, so the goroutine keeps its thread.
func yield() { syscall.RawSyscall(syscall.SYS_SCHED_YIELD, 0, 0, 0) }
