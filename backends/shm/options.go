package shm

import (
	"fmt"
	"time"
)

// Defaults; the benchmarks in bench_test.go compare the alternatives on a
// given machine. Every one can be overridden with an Option.
const (
	// DefaultBufferSize is the size of each of a rank's two data buffers:
	// the chunk a large collective moves per round. Chunks must be large
	// enough that a round's synchronisation is small beside its copy, and
	// small enough that a direct allreduce's working set of two ranks stays
	// in a core's L2 (BenchmarkChunk compares sizes).
	DefaultBufferSize = 512 << 10
	// DefaultSmallThreshold caps the largest allreduce or reduce (in
	// bytes) that uses the direct algorithm, in which every rank reduces
	// every input itself, for groups of more than two ranks; the threshold
	// is min(this, 192 KiB / ranks). Groups of two use direct at any size.
	DefaultSmallThreshold = 64 << 10
	// DefaultP2PBufferSize is the size of each of the two buffers a pair of
	// ranks has for send/recv in each direction (shrunk for large groups,
	// to core.EagerSize/2 at least, so that an eager message fits a
	// channel: from 23 ranks on the channels take n² x 64 KiB, 256 MiB
	// at 64 ranks).
	DefaultP2PBufferSize = 64 << 10
	// DefaultSpin is how long a waiter spins before it sleeps on a futex
	// when the node has at least as many CPUs as ranks.
	DefaultSpin = 100 * time.Microsecond
	// DefaultOversubscribedSpin is the spin time when ranks outnumber CPUs:
	// a spinning rank then steals the CPU the awaited rank needs.
	DefaultOversubscribedSpin = 5 * time.Microsecond
)

// Option configures New. The sizes and thresholds of rank 0 are the ones
// the group uses (they are part of the shared workspace's header), so that
// every rank picks the same algorithm for the same call; the spin settings
// are per rank.
type Option func(*config) error

type config struct {
	bufferSize     int
	smallThreshold int
	smallSet       bool
	p2pSize        int
	heapSize       int
	spin           time.Duration
	spinSet        bool
}

func defaultConfig() config {
	return config{
		bufferSize:     DefaultBufferSize,
		smallThreshold: DefaultSmallThreshold,
		p2pSize:        DefaultP2PBufferSize,
	}
}

// WithBufferSize sets the size in bytes of each of a rank's two data
// buffers (rounded up to a multiple of 4 KiB). Collectives larger than it
// are cut into chunks of this size and pipelined. The workspace holds
// 2 × size × ranks of these plus the send/recv buffers and the zero-copy
// heaps.
func WithBufferSize(n int) Option {
	return func(c *config) error {
		if n < 64 {
			return fmt.Errorf("shm: buffer size %d is too small: use at least 64 bytes", n)
		}
		c.bufferSize = n
		return nil
	}
}

// WithSmallThreshold sets the largest allreduce/reduce, in bytes, that takes
// the direct algorithm (one round per chunk: every rank reduces all
// inputs); larger ones take the split algorithm (two rounds per chunk: each
// rank reduces a 1/n slice, then all copy out). See DefaultSmallThreshold
// for the default.
func WithSmallThreshold(n int) Option {
	return func(c *config) error {
		if n < 0 {
			return fmt.Errorf("shm: small threshold %d is negative", n)
		}
		c.smallThreshold, c.smallSet = n, true
		return nil
	}
}

// WithP2PBufferSize sets the size of each of the two buffers a pair of ranks
// uses for send/recv in each direction (rounded up to 4 KiB). Below
// core.EagerSize/2 it lowers the eager size to twice n.
func WithP2PBufferSize(n int) Option {
	return func(c *config) error {
		if n < 64 {
			return fmt.Errorf("shm: p2p buffer size %d is too small: use at least 64 bytes", n)
		}
		c.p2pSize = n
		return nil
	}
}

// WithHeapSize reserves n bytes per rank in the shared workspace for Alloc:
// buffers that live in shared memory, so that a collective on them skips
// the copy into the workspace (like MPI_Win_allocate_shared). Default 0.
func WithHeapSize(n int) Option {
	return func(c *config) error {
		if n < 0 {
			return fmt.Errorf("shm: heap size %d is negative", n)
		}
		c.heapSize = n
		return nil
	}
}

// WithSpin sets how long a waiting rank spins before it sleeps on a futex.
// The default depends on whether ranks outnumber the CPUs.
func WithSpin(d time.Duration) Option {
	return func(c *config) error {
		if d < 0 {
			return fmt.Errorf("shm: spin duration %v is negative", d)
		}
		c.spin, c.spinSet = d, true
		return nil
	}
}
