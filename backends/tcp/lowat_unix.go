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
		p.peekN, _, _ = syscall.Recvfrom(int(fd), p.peekHdr[p.peekOff:], syscall.MSG_PEEK|syscall.MSG_DONTWAIT)
	}
}

// peekHeader copies the first hdrSize bytes waiting on the data connection
// into p.peekHdr without taking them, and reports whether that many were
// there. It never waits, and does not allocate.
//
// Bytes a staged read took from the socket ahead (p.pend) come first.
func (p *peer) peekHeader() bool {
	k := copy(p.peekHdr[:], p.pend)
	if k == hdrSize {
		return true
	}
	if p.raw == nil {
		return false
	}
	p.peekOff, p.peekN = k, 0
	err := p.raw.Control(p.peekFn)
	return err == nil && p.peekN == hdrSize-k
}
