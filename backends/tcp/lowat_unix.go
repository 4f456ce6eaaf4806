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
