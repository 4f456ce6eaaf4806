package core

import "fmt"

// Kind identifies a collective by its wire id. The collectives are the
// runtime's algorithms, not the spec's: a spec picks a subset of them by
// name and id, and the generator refuses a spec whose id or shape for a
// name differs from the one here.
type Kind uint8

// The collectives the runtime runs.
const (
	KindAllreduce     Kind = 1
	KindReduce        Kind = 2
	KindBroadcast     Kind = 3
	KindAllgather     Kind = 4
	KindReduceScatter Kind = 5
	KindGather        Kind = 6
	KindScatter       Kind = 7
	KindAlltoall      Kind = 8
	KindBarrier       Kind = 9
	KindSend          Kind = 10
	KindRecv          Kind = 11
	// The vector collectives: per-rank counts (and displacements) in
	// Request's SendCounts, SendDispls, RecvCounts and RecvDispls.
	KindAllgatherv     Kind = 12
	KindGatherv        Kind = 13
	KindScatterv       Kind = 14
	KindAlltoallv      Kind = 15
	KindReduceScatterV Kind = 16
)

// Extent is how many elements a buffer holds, in terms of a Request's
// Count and the number of ranks.
type Extent uint8

const (
	// None: the collective has no such buffer.
	None Extent = iota
	// PerRank: Count elements.
	PerRank
	// AllRanks: Count elements for every rank, rank order.
	AllRanks
	// Blocks: one block per rank, block j holding Counts[j] elements at
	// element offset Displs[j] of the buffer (packed in rank order when
	// Displs is nil), with the side's counts: SendCounts and SendDispls
	// for Send, RecvCounts and RecvDispls for Recv.
	Blocks
	// Mine: Counts[rank] elements of the request's one counts vector.
	Mine
	// Sum: the sum of the request's one counts vector, packed in rank
	// order.
	Sum
)

// Shape says what a collective does with a Request's fields.
type Shape struct {
	Name string // spec name, e.g. "reduce_scatter"
	Op   bool   // reduces with Op
	Root bool   // has a root rank
	Peer bool   // point to point with rank Peer
	Send Extent // size of Send
	Recv Extent // size of Recv
	// SendRootOnly and RecvRootOnly: only the root passes that buffer;
	// the other ranks pass none.
	SendRootOnly, RecvRootOnly bool
	// InPlace: Send may be exactly Recv (same start, same length).
	InPlace bool
	// SendIsRecv: one buffer, passed as Recv; Send is nil or that same
	// buffer (broadcast).
	SendIsRecv bool
	// Result is what the output holds afterwards, on every rank or, with
	// ResultRootOnly, on the root alone.
	Result         Result
	ResultRootOnly bool
	// SendCounts and RecvCounts: the request carries that side's counts
	// vector, one count per rank (every rank passes it, root-only buffer or
	// not). SendDispls and RecvDispls: it may carry that side's
	// displacements too (nil: blocks packed in rank order); they are read
	// only where this rank passes the side's buffer.
	SendCounts, RecvCounts bool
	SendDispls, RecvDispls bool
}

// Vector reports whether the collective takes per-rank counts.
func (s *Shape) Vector() bool { return s.SendCounts || s.RecvCounts }

// SharedCounts reports whether the collective's one counts vector must be
// the same on every rank (every vector collective but alltoallv, whose
// send counts of one rank must equal the receive counts its peers expect
// from it instead).
func (s *Shape) SharedCounts() bool { return s.SendCounts != s.RecvCounts }

// Result says what a collective leaves in its output buffer.
type Result uint8

const (
	// ResultNone: there is no output (barrier, send).
	ResultNone Result = iota
	// ResultReduce: op over every rank's send, element-wise.
	ResultReduce
	// ResultConcat: every rank's send, concatenated in rank order.
	ResultConcat
	// ResultRoot: the root's buffer.
	ResultRoot
	// ResultReduceBlock: block [rank] of op over every rank's send.
	ResultReduceBlock
	// ResultRootBlock: block [rank] of the root's send.
	ResultRootBlock
	// ResultTranspose: block [j] is block [rank] of rank j's send.
	ResultTranspose
	// ResultPeer: the peer's send buffer.
	ResultPeer
)

var shapes = [...]Shape{
	KindAllreduce: {Name: "allreduce", Op: true, Send: PerRank, Recv: PerRank, InPlace: true,
		Result: ResultReduce},
	KindReduce: {Name: "reduce", Op: true, Root: true, Send: PerRank, Recv: PerRank, RecvRootOnly: true, InPlace: true,
		Result: ResultReduce, ResultRootOnly: true},
	KindBroadcast: {Name: "broadcast", Root: true, Recv: PerRank, SendIsRecv: true,
		Result: ResultRoot},
	KindAllgather: {Name: "allgather", Send: PerRank, Recv: AllRanks,
		Result: ResultConcat},
	KindReduceScatter: {Name: "reduce_scatter", Op: true, Send: AllRanks, Recv: PerRank,
		Result: ResultReduceBlock},
	KindGather: {Name: "gather", Root: true, Send: PerRank, Recv: AllRanks, RecvRootOnly: true,
		Result: ResultConcat, ResultRootOnly: true},
	KindScatter: {Name: "scatter", Root: true, Send: AllRanks, Recv: PerRank, SendRootOnly: true,
		Result: ResultRootBlock},
	KindAlltoall: {Name: "alltoall", Send: AllRanks, Recv: AllRanks, InPlace: true,
		Result: ResultTranspose},
	KindBarrier: {Name: "barrier"},
	KindSend:    {Name: "send", Peer: true, Send: PerRank},
	KindRecv:    {Name: "recv", Peer: true, Recv: PerRank, Result: ResultPeer},
	KindAllgatherv: {Name: "allgatherv", Send: Mine, Recv: Blocks, RecvCounts: true, RecvDispls: true,
		Result: ResultConcat},
	KindGatherv: {Name: "gatherv", Root: true, Send: Mine, Recv: Blocks, RecvRootOnly: true, RecvCounts: true, RecvDispls: true,
		Result: ResultConcat, ResultRootOnly: true},
	KindScatterv: {Name: "scatterv", Root: true, Send: Blocks, Recv: Mine, SendRootOnly: true, SendCounts: true, SendDispls: true,
		Result: ResultRootBlock},
	KindAlltoallv: {Name: "alltoallv", Send: Blocks, Recv: Blocks, SendCounts: true, SendDispls: true, RecvCounts: true, RecvDispls: true,
		Result: ResultTranspose},
	KindReduceScatterV: {Name: "reduce_scatter_v", Op: true, Send: Sum, Recv: Mine, RecvCounts: true,
		Result: ResultReduceBlock},
}

// Shape returns k's shape, or nil for an id the runtime does not run.
func (k Kind) Shape() *Shape {
	if int(k) >= len(shapes) || shapes[k].Name == "" {
		return nil
	}
	return &shapes[k]
}

// Kinds lists every collective the runtime runs, by id.
func Kinds() []Kind {
	var ks []Kind
	for k := range shapes {
		if shapes[k].Name != "" {
			ks = append(ks, Kind(k))
		}
	}
	return ks
}

// KindByName returns the collective the spec calls name.
func KindByName(name string) (Kind, bool) {
	for k := range shapes {
		if shapes[k].Name != "" && shapes[k].Name == name {
			return Kind(k), true
		}
	}
	return 0, false
}

func (k Kind) String() string {
	if s := k.Shape(); s != nil {
		return s.Name
	}
	return fmt.Sprintf("collective(%d)", uint8(k))
}
