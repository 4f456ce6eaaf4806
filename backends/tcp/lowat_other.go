//go:build !unix

package tcp

// initLowat leaves setLowat a no-op where SO_RCVLOWAT is not available.
func (p *peer) initLowat() {}
