package tcp

import (
	"fmt"
	"os"
	"strings"
	"time"
)

// Environment variables New reads. Options override them.
const (
	// EnvSocketIfname names the network interface to listen on (the role
	// of GLOO_SOCKET_IFNAME), e.g. "eth0".
	EnvSocketIfname = "GOCOLL_SOCKET_IFNAME"
	// EnvSocketAddr is the IP address or host name to listen on; it wins
	// over EnvSocketIfname.
	EnvSocketAddr = "GOCOLL_SOCKET_ADDR"
	// EnvAlgorithms overrides algorithm choices, comma-separated
	// "collective=algorithm" pairs, e.g. "allreduce=ring,broadcast=chain"
	// (see the Algorithm constants for the names).
	EnvAlgorithms = "GOCOLL_TCP_ALGORITHMS"
	// EnvRcvLowat set to "0" stops large payloads from being read with
	// SO_RCVLOWAT raised to their size (which saves wake-ups and reads;
	// the setting is there to compare, or for kernels that mishandle it).
	EnvRcvLowat = "GOCOLL_TCP_RCVLOWAT"
)

// Defaults, chosen by measurement on loopback (bench_test.go measures
// them). Every one can be overridden with an Option.
const (
	// DefaultChunkSize is the piece a pipelined algorithm (ring, chain)
	// moves per frame: large enough that per-frame costs (three system
	// calls, a goroutine hand-off) vanish, small enough that receiving,
	// reducing and sending overlap (1 MiB is 8 ms of a 1 Gbit/s link).
	DefaultChunkSize = 1 << 20
	// DefaultSmallSize is the largest allreduce (bytes) run by recursive
	// doubling: one exchange per round, the fewest wake-ups.
	DefaultSmallSize = 16 << 10
	// DefaultMediumSize is the largest allreduce (bytes) run by
	// Rabenseifner's halving-doubling; larger ones take the ring.
	DefaultMediumSize = 256 << 10
	// DefaultTreeSize is the largest broadcast or reduce (bytes) run as a
	// binomial tree; larger ones take the pipelined chain.
	DefaultTreeSize = 64 << 10
	// DefaultSendBuffer and DefaultRecvBuffer are the kernel buffers asked
	// for every data connection (the kernel doubles both), each only where
	// the kernel allows that much (net.core.wmem_max, rmem_max); otherwise
	// its autotuning is left alone. The receive side is large, so that a
	// whole chunk is awaited with one wake-up (SO_RCVLOWAT is capped at
	// half the buffer) and a sender seldom waits for window. The send side
	// is small: a sender that can run far ahead of its receiver in the
	// kernel lets the stages of a ring drift apart, and large ring
	// allreduces on loopback ran fastest at 512 KiB, ahead of both larger
	// and smaller buffers and of the kernel's autotuning. Both are ample
	// for a 1 Gbit/s link; a link whose bandwidth-delay product exceeds
	// ~1 MiB wants a larger send buffer (WithSocketBuffers).
	DefaultSendBuffer = 512 << 10
	DefaultRecvBuffer = 4 << 20
	// DefaultConnectTimeout bounds one connection attempt to a peer; New
	// retries until its own deadline.
	DefaultConnectTimeout = 5 * time.Second
)

// Algorithm names an algorithm a collective can be forced to use.
type Algorithm uint8

// Algorithms. Auto picks by message size and group size.
const (
	Auto              Algorithm = 0
	RecursiveDoubling Algorithm = 1  // allreduce: log2(n) full exchanges
	Rabenseifner      Algorithm = 2  // allreduce: halving reduce-scatter, doubling allgather
	Ring              Algorithm = 3  // allreduce, allgather, reduce_scatter: pipelined ring
	BinomialTree      Algorithm = 4  // broadcast, reduce
	Chain             Algorithm = 5  // broadcast, reduce: pipelined chain
	Direct            Algorithm = 6  // gather, scatter: every rank talks to the root
	Pairwise          Algorithm = 7  // alltoall
	Dissemination     Algorithm = 8  // barrier
	PointToPoint      Algorithm = 9  // send/recv
	algoCopy          Algorithm = 11 // n == 1: a local copy (never on the wire)
)

var algorithmNames = [...]string{
	Auto:              "auto",
	RecursiveDoubling: "recursive_doubling",
	Rabenseifner:      "rabenseifner",
	Ring:              "ring",
	BinomialTree:      "binomial_tree",
	Chain:             "chain",
	Direct:            "direct",
	Pairwise:          "pairwise",
	Dissemination:     "dissemination",
	PointToPoint:      "point_to_point",
}

func (a Algorithm) String() string {
	if int(a) < len(algorithmNames) && algorithmNames[a] != "" {
		return algorithmNames[a]
	}
	return fmt.Sprintf("algorithm(%d)", uint8(a))
}

// ParseAlgorithm returns the Algorithm named s (as String prints it).
func ParseAlgorithm(s string) (Algorithm, error) {
	for i, n := range algorithmNames {
		if n != "" && n == s {
			return Algorithm(i), nil
		}
	}
	return 0, fmt.Errorf("tcp: unknown algorithm %q (want one of %s)", s, strings.Join(algorithmNames[:], ", "))
}

// Option configures New. Ranks must agree on every option that changes an
// algorithm choice (thresholds, chunk size, forced algorithms): frames carry
// the algorithm, and a disagreement fails the collective on every rank with
// a *core.MismatchError.
type Option func(*config) error

type config struct {
	ifname         string
	addr           string
	chunk          int
	smallSize      int
	mediumSize     int
	treeSize       int
	sndBuf, rcvBuf int
	connectTimeout time.Duration
	allreduce      Algorithm
	broadcast      Algorithm
	reduce         Algorithm
	spin           time.Duration // see spin.go
}

func defaultConfig() config {
	return config{
		chunk:          DefaultChunkSize,
		smallSize:      DefaultSmallSize,
		mediumSize:     DefaultMediumSize,
		treeSize:       DefaultTreeSize,
		sndBuf:         DefaultSendBuffer,
		rcvBuf:         DefaultRecvBuffer,
		connectTimeout: DefaultConnectTimeout,
		spin:           DefaultSpin,
	}
}

// fromEnv applies the environment; options applied afterwards override it.
func (c *config) fromEnv() error {
	c.ifname = os.Getenv(EnvSocketIfname)
	c.addr = os.Getenv(EnvSocketAddr)
	if err := c.spinFromEnv(); err != nil {
		return err
	}
	if s := os.Getenv(EnvAlgorithms); s != "" {
		for _, kv := range strings.Split(s, ",") {
			k, v, ok := strings.Cut(strings.TrimSpace(kv), "=")
			if !ok {
				return fmt.Errorf("tcp: %s: %q is not collective=algorithm", EnvAlgorithms, kv)
			}
			a, err := ParseAlgorithm(v)
			if err != nil {
				return fmt.Errorf("%s: %w", EnvAlgorithms, err)
			}
			var o Option
			switch k {
			case "allreduce":
				o = WithAllreduceAlgorithm(a)
			case "broadcast":
				o = WithBroadcastAlgorithm(a)
			case "reduce":
				o = WithReduceAlgorithm(a)
			default:
				return fmt.Errorf("tcp: %s: collective %q has no algorithm choice (allreduce, broadcast, reduce have)", EnvAlgorithms, k)
			}
			if err := o(c); err != nil {
				return fmt.Errorf("%s: %w", EnvAlgorithms, err)
			}
		}
	}
	return nil
}

// WithInterface listens on the first address of the named network interface
// (overrides GOCOLL_SOCKET_IFNAME).
func WithInterface(name string) Option {
	return func(c *config) error { c.ifname = name; return nil }
}

// WithAddress listens on host (an IP address or a name that resolves to one
// of this machine's addresses); it wins over WithInterface and the
// environment. Peers connect to the address published for it.
func WithAddress(host string) Option {
	return func(c *config) error { c.addr = host; return nil }
}

// WithChunkSize sets the bytes a pipelined algorithm moves per frame.
func WithChunkSize(n int) Option {
	return func(c *config) error {
		if n < 64 || n > 1<<30 {
			return fmt.Errorf("tcp: chunk size %d out of range [64, 1 GiB]", n)
		}
		c.chunk = n
		return nil
	}
}

// WithThresholds sets the allreduce sizes (bytes) up to which recursive
// doubling (small) and Rabenseifner (medium) are used, and the broadcast and
// reduce size up to which a binomial tree is used.
func WithThresholds(small, medium, tree int) Option {
	return func(c *config) error {
		if small < 0 || medium < small || tree < 0 {
			return fmt.Errorf("tcp: thresholds small=%d medium=%d tree=%d: want 0 <= small <= medium, tree >= 0", small, medium, tree)
		}
		c.smallSize, c.mediumSize, c.treeSize = small, medium, tree
		return nil
	}
}

// WithSocketBuffers sets the kernel send and receive buffer sizes of each
// data connection; 0 leaves the kernel's autotuning of that side alone.
func WithSocketBuffers(send, recv int) Option {
	return func(c *config) error {
		if send < 0 || recv < 0 {
			return fmt.Errorf("tcp: socket buffers send=%d recv=%d: want >= 0", send, recv)
		}
		c.sndBuf, c.rcvBuf = send, recv
		return nil
	}
}

// WithConnectTimeout bounds each connection attempt during New.
func WithConnectTimeout(d time.Duration) Option {
	return func(c *config) error {
		if d <= 0 {
			return fmt.Errorf("tcp: connect timeout %v must be positive", d)
		}
		c.connectTimeout = d
		return nil
	}
}

// WithAllreduceAlgorithm forces allreduce to RecursiveDoubling,
// Rabenseifner or Ring (Auto: by size).
func WithAllreduceAlgorithm(a Algorithm) Option {
	return func(c *config) error {
		switch a {
		case Auto, RecursiveDoubling, Rabenseifner, Ring:
			c.allreduce = a
			return nil
		}
		return fmt.Errorf("tcp: allreduce cannot use %v (auto, recursive_doubling, rabenseifner, ring)", a)
	}
}

// WithBroadcastAlgorithm forces broadcast to BinomialTree or Chain.
func WithBroadcastAlgorithm(a Algorithm) Option {
	return func(c *config) error {
		switch a {
		case Auto, BinomialTree, Chain:
			c.broadcast = a
			return nil
		}
		return fmt.Errorf("tcp: broadcast cannot use %v (auto, binomial_tree, chain)", a)
	}
}

// WithReduceAlgorithm forces reduce to BinomialTree or Chain.
func WithReduceAlgorithm(a Algorithm) Option {
	return func(c *config) error {
		switch a {
		case Auto, BinomialTree, Chain:
			c.reduce = a
			return nil
		}
		return fmt.Errorf("tcp: reduce cannot use %v (auto, binomial_tree, chain)", a)
	}
}
