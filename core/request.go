package core

import "context"

// Request is one collective call on byte buffers, as the typed API hands it
// to a communicator and a communicator hands it to a backend.
//
// Count follows NCCL's convention: the element count of the per-rank block.
// The Kind's Shape says which buffers hold Count elements and which hold
// Count for every rank. Buffers a rank does not take part with (recv of
// reduce and gather, send of scatter, on non-root ranks) are empty.
// Broadcast's one buffer is Recv (Send is nil or the same slice). Send may
// equal Recv (in place) where the Shape allows it; no other overlap is
// allowed.
//
// Check fills Type and Kernel: a backend reads the element size and the
// reduction from them and never looks a dtype or an op up by id.
type Request struct {
	Kind  Kind
	DType DType
	Op    Op  // reduce op; 0 for collectives without one
	Count int // elements in the per-rank block
	Root  int // root rank, for rooted collectives
	Peer  int // peer rank, for send and recv
	Send  []byte
	Recv  []byte

	// The vector collectives' per-rank element counts and element
	// displacements, as MPI's: SendCounts[j] elements of block j of Send
	// at SendDispls[j], and RecvCounts[j] of block j of Recv at
	// RecvDispls[j]; nil displacements mean blocks packed in rank order.
	// The Kind's Shape says which a collective takes: allgatherv, gatherv
	// and reduce_scatter_v take RecvCounts, scatterv SendCounts (the same
	// on every rank, unlike MPI, which reads them at the root only), and
	// alltoallv both, SendCounts[j] of rank i being RecvCounts[i] of rank
	// j. Blocks of one buffer must not overlap. Count is unused (zero).
	SendCounts, SendDispls []int
	RecvCounts, RecvDispls []int

	// Digest is a hash of the counts vector every rank must pass alike
	// (Shape.SharedCounts), 0 for other collectives: backends compare it
	// where they compare Count. Set by Check.
	Digest uint64

	// Type is DType's descriptor; nil for a barrier. Set by Check.
	Type *Type
	// Kernel is Type's kernel for Op; nil for collectives that do not
	// reduce. Set by Check.
	Kernel *Kernel
}

// Comm is what the typed API needs of a communicator.
type Comm interface {
	// Rank is this process's rank in [0, Size).
	Rank() int
	// Size is the number of ranks.
	Size() int
	// Do runs one collective. Every rank must call Do with matching Kind,
	// DType, Op, Count and Root (and a vector collective's counts, as
	// Request says), in the same order, one call at a time; a
	// disagreement is a *MismatchError on every rank instead of data.
	// Do must not keep req after it returns: the typed API reuses it.
	Do(ctx context.Context, req *Request) error
}

// Backend is a transport that runs collectives for one group of ranks:
// backends/shm inside a node, backends/tcp between nodes. A Backend is
// driven through a Guard (the communicator boundary), which checks each
// request once, runs one call at a time and keeps the failure state; a
// backend trusts what it is handed.
type Backend interface {
	// Rank is this process's rank in [0, Size).
	Rank() int
	// Size is the number of ranks.
	Size() int
	// Name is a short name for logs and benchmarks ("shm", "tcp").
	Name() string
	// Run runs req, which passed Check with this backend's rank and size.
	// It compares with the peers every field that must agree (kind, dtype,
	// op, count, root, peer, sequence; a vector collective's counts: its
	// Digest, alltoallv's pairwise) before any rank's output changes, and
	// returns a *MismatchError on every rank when they differ (Field
	// "counts" for counts, with their values: SharedCountsMismatch,
	// PairCountsMismatch).
	Run(ctx context.Context, req *Request) error
	// Refuse takes this rank's part in the agreement step of req, which
	// failed Check on this rank, so that its peers return at once with a
	// *MismatchError whose Field is "argument" and which names this rank.
	// It moves no data. req may hold any values.
	Refuse(ctx context.Context, req *Request) error
	// Abort makes the call in flight on this rank, and every later one,
	// fail with an error wrapping cause, and tells the peers where the
	// transport can, so that theirs fail too instead of waiting.
	Abort(cause error)
	// Close releases the backend's resources. It does not wait for peers.
	Close() error
}

// Offsets returns where each of counts' blocks starts, in elements, for a
// vector collective's buffer: displs as the caller passed them or, when
// displs is nil, the offsets of blocks packed in rank order, written into
// scratch (a new slice when scratch is shorter than counts).
func Offsets(counts, displs, scratch []int) []int {
	if displs != nil {
		return displs
	}
	if len(scratch) < len(counts) {
		scratch = make([]int, len(counts))
	}
	off := scratch[:len(counts)]
	at := 0
	for j, c := range counts {
		off[j] = at
		at += c
	}
	return off
}
