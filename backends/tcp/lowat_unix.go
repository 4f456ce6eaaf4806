//go:build unix

package tcp

import "syscall"

// initLowat prepares setLowat and peekHeader: their closures are made once
// per peer, so that raising SO_RCVLOWAT and peeking do not allocate.
func (p *peer) initLowat() {
	raw, err := p.data.SyscallConn()
	if err != nil {
		return
	}
	p.raw = raw
	p.lowatFn = func(fd uintptr) {
		_ = syscall.SetsockoptInt(int(fd), syscall.SOL_SOCKET, syscall.SO_RCVLOWAT, p.lowat)
	}
	p.peekFn = func(fd uintptr) {
		p.peekN, _, _ = syscall.Recvfrom(int(fd), p.peekHdr[:], syscall.MSG_PEEK|syscall.MSG_DONTWAIT)
	}
}

// peekHeader copies the first hdrSize bytes waiting on the data connection
// into p.peekHdr without taking them, and reports whether that many were
// there. It never waits, and does not allocate.
func (p *peer) peekHeader() bool {
	if p.raw == nil {
		return false
	}
	p.peekN = 0
	err := p.raw.Control(p.peekFn)
	return err == nil && p.peekN == hdrSize
}
