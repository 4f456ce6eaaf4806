//go:build !unix

package tcp

// initLowat leaves setLowat a no-op where SO_RCVLOWAT is not available.
func (p *peer) initLowat() {}

// peekHeader reports that it cannot look ahead where MSG_PEEK is not
// available: a disagreement that only a look ahead would find is reported
// at the call's deadline instead.
func (p *peer) peekHeader() bool { return false }
