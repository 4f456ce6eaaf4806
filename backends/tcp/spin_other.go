//go:build !linux

package tcp

import "time"

// spinState is empty where reads cannot spin.
type spinState struct{}

// initSpin leaves spinRead a no-op where a raw non-blocking read is not
// available.
func (p *peer) initSpin(time.Duration) {}

// spinRead reads nothing: the caller's blocking read does the work.
func (b *Backend) spinRead(*peer, []byte) int { return 0 }
