package tcp

import (
	"fmt"
	"net"
	"os"
	"runtime"
	"time"
)

// Waiting for a small frame: a read that finds nothing on the socket would
// park the goroutine in Go's network poller, and the wake-up when the frame
// lands (the poller's thread, then the scheduler) costs more than the
// frame's whole trip over loopback. So a read of a small payload first
// spins on the non-blocking socket, one read system call after another,
// for a bounded time, and only then parks. A frame's reads spin once: after
// a spin that timed out, they park at once. Spinning adapts per peer: after
// two spins in a row that timed out, the reads of the next frames park
// without spinning, twice as many frames after each further miss (up to
// 1<<maxSkipShift), and then spin again to see whether it pays now; a spin
// that met its frame resets the count. A peer that is late by habit (one
// that computes longer between calls) so costs a spin every hundred frames
// or so, and where spinning keeps the peer off the CPU (a machine loaded
// by other work) the reads fall back to parking. (Halving the budget on
// every spin that timed out and doubling it on every one that paid, as
// adaptive mutexes do, drifted into parking under load even where
// spinning paid.)
// When this host runs more ranks than it has CPUs, a spinning rank may
// hold the CPU its peer needs, so it yields between polls, and only calls
// of up to spinMaxPayload bytes spin at all: in a larger one the peers'
// senders and reducers need every CPU, and a yielding spinner still takes
// its share. (Yielding on
// an uncrowded host too, after a short spin, in case the kernel put the
// peer on this CPU, cost more than it saved on a loaded machine.) A read
// does not spin at all while this rank's sender goroutines hold queued
// frames (the large, pipelined algorithms): they need the CPU more.

// EnvSpin sets the longest a read spins on the socket before it parks, as
// a Go duration ("50us"); "0" never spins. WithSpin overrides it.
const EnvSpin = "GOCOLL_TCP_SPIN"

// DefaultSpin is the longest a read spins before it parks. A message
// between two ranks that call together takes a few tens of microseconds
// over loopback under load; waits longer than this mean a late peer, for
// whom parking is the better deal.
const DefaultSpin = 100 * time.Microsecond

// maxSkipShift bounds the frames a peer's reads park without spinning
// before they try again: 1<<maxSkipShift.
const maxSkipShift = 7

// spinMaxPayload is the largest payload a read spins for; larger ones are
// bandwidth-bound, and parking with SO_RCVLOWAT raised costs fewer wake-ups.
const spinMaxPayload = lowatMin

// WithSpin sets the longest a read of a small frame spins on its socket
// before it parks in the network poller (0: never). See EnvSpin.
func WithSpin(d time.Duration) Option {
	return func(c *config) error {
		if d < 0 {
			return fmt.Errorf("tcp: spin %v is negative: pass 0 to never spin", d)
		}
		c.spin = d
		return nil
	}
}

// spinFromEnv reads EnvSpin into c.
func (c *config) spinFromEnv() error {
	s := os.Getenv(EnvSpin)
	if s == "" {
		return nil
	}
	if s == "0" {
		c.spin = 0
		return nil
	}
	d, err := time.ParseDuration(s)
	if err != nil || d < 0 {
		return fmt.Errorf("tcp: %s=%q: want a duration such as 50us, or 0 to never spin", EnvSpin, s)
	}
	c.spin = d
	return nil
}

// crowdedHost reports whether more ranks run on this host than it has
// CPUs: a peer counts as local when its data connection's two ends have
// the same address (loopback, or the host's own address).
func crowdedHost(peers []*peer) bool {
	local := 1
	for _, p := range peers {
		if p == nil {
			continue
		}
		la, lok := p.data.LocalAddr().(*net.TCPAddr)
		ra, rok := p.data.RemoteAddr().(*net.TCPAddr)
		if lok && rok && la.IP.Equal(ra.IP) {
			local++
		}
	}
	return local > runtime.NumCPU()
}

// epoch is the base of since.
var epoch = time.Now()

// since reads the monotonic clock alone (time.Now reads the wall clock too).
func since() time.Duration { return time.Since(epoch) }

// stageMax is the largest payload whose frame a read takes whole, header
// and payload in one system call, copying the payload out after the
// header is checked: below it the copy costs less than the second read.
const stageMax = 8 << 10

// stageFrame reads the next frame from p into p.stage, up to its header
// and the n payload bytes the caller expects, spinning as spinRead does,
// when n is small and nothing read ahead is pending. It reads no further
// than that: a frame that turns out shorter leaves the bytes after it in
// p.pend, where fill takes them first, so the stream stays in order.
func (b *Backend) stageFrame(p *peer, n int) {
	if len(p.pend) > 0 || n > stageMax || p.stage == nil || b.queued.Load() != 0 {
		return
	}
	k := b.spinRead(p, p.stage[:hdrSize+n])
	p.pend = p.stage[:k]
}
