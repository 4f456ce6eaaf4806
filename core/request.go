package core

import "context"

// Request is one collective call on byte buffers, as the typed API hands it
// to a communicator and a communicator hands it to a backend.
//
// Count follows NCCL's convention: the element count of the per-rank block.
// Allreduce, reduce, broadcast, gather's and allgather's send, scatter's and
// reduce_scatter's recv hold Count elements; the other side of allgather,
// gather, scatter, reduce_scatter and both sides of alltoall hold Count*size.
// Buffers a rank does not take part with (recv of reduce and gather, send of
// scatter, on non-root ranks) are nil. Broadcast passes the same slice as
// Send and Recv. Send may equal Recv (in place) wherever the sizes match.
type Request struct {
	Kind  Kind
	DType DType
	Op    Op  // reduce op; 0 for collectives without one
	Count int // elements in the per-rank block
	Root  int // root rank, for rooted collectives
	Peer  int // peer rank, for send and recv
	Send  []byte
	Recv  []byte
}

// Comm is what the typed API needs of a communicator.
type Comm interface {
	// Rank is this process's rank in [0, Size).
	Rank() int
	// Size is the number of ranks.
	Size() int
	// Do runs one collective. Every rank must call Do with matching Kind,
	// DType, Op, Count and Root, in the same order; a backend that detects a
	// disagreement returns a *MismatchError on every rank instead of data.
	// Do must not keep req after it returns: the typed API reuses it.
	Do(ctx context.Context, req *Request) error
}

// Backend is a transport that runs collectives for one group of ranks:
// backends/shm inside a node, backends/tcp between nodes.
type Backend interface {
	Comm
	// Name is a short name for logs and benchmarks ("shm", "tcp").
	Name() string
	// Close releases the backend's resources. It does not wait for peers.
	Close() error
}
