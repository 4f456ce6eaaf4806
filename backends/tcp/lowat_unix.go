//go:build unix

package tcp

import "syscall"

// initLowat prepares setLowat: the closure is made once per peer, so that
// raising SO_RCVLOWAT does not allocate.
func (p *peer) initLowat() {
	raw, err := p.data.SyscallConn()
	if err != nil {
		return
	}
	p.raw = raw
	p.lowatFn = func(fd uintptr) {
		_ = syscall.SetsockoptInt(int(fd), syscall.SOL_SOCKET, syscall.SO_RCVLOWAT, p.lowat)
	}
}

// peek copies the first len(buf) bytes waiting on the data connection into
// buf without taking them, and reports whether that many were there. It
// never waits.
//
// Bytes a staged read took from the socket ahead (p.pend) come first.
func (p *peer) peek(buf []byte) bool {
	k := copy(buf, p.pend)
	if k == len(buf) {
		return true
	}
	if p.raw == nil {
		return false
	}
	rest := buf[k:]
	n := 0
	err := p.raw.Control(func(fd uintptr) {
		n, _, _ = syscall.Recvfrom(int(fd), rest, syscall.MSG_PEEK|syscall.MSG_DONTWAIT)
	})
	return err == nil && n == len(rest)
}
